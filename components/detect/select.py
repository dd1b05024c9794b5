"""Which face in a photo is "the" face of its identity folder."""

from __future__ import annotations

import numpy as np

from components.detect.base import Face


def pick_main_face(faces: list[Face], width: int, height: int, centre_weight: float) -> Face | None:
    """The largest face near the centre: maximise relative size minus ``centre_weight`` x distance.

    Photos in an identity folder centre the subject; bystanders are smaller or off-centre. Both terms
    are normalised (size by the image diagonal-equivalent, distance by the half-diagonal) so the
    weight means the same for every image size.
    """
    if not faces:
        return None
    centre = np.array([width / 2, height / 2])
    half_diag = 0.5 * float(np.hypot(width, height))
    def merit(face: Face) -> float:
        size = np.sqrt(face.area / (width * height))
        box_centre = np.array([(face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2])
        return float(size - centre_weight * np.linalg.norm(box_centre - centre) / half_diag)
    return max(faces, key=merit)
