"""InsightFace's own IJB-C evaluation (``$ARCFACE_TORCH/eval_ijbc.py``) on precomputed per-image features.

Usage: ``python -m bench.insightface_ijbc ROOT FEATURES.npy RESULT_DIR`` (``bench/eval_ijbc.py`` times it as a
whole process next to ``faceforge eval ijbc --features``). The script is executed as it is in the checkout
(faceforge ships none of it), with three adjustments that leave its computation alone:
- its ``get_image_feature`` (which runs a model over the loose crops) is replaced by one returning the given
  features in its own layout: ``[images, 2 x dim]``, the mirrored half zero, so its flip sum gives them back,
  and the detector scores read from the landmark file's last column, as its reader does;
- ``np.int``, removed from NumPy in 1.24, is ``int`` again;
- ``menpo`` (only used for the plot's colours) is stubbed when not installed.
"""

from __future__ import annotations

import ast
import os
import sys
import types
from pathlib import Path

import numpy as np


def _features_reader(features_path: str):  # noqa: ANN202
    def get_image_feature(img_path, files_list, model_path, epoch, gpu_id):  # noqa: ANN001, ANN202, ARG001
        features = np.load(features_path)
        img_feats = np.zeros((len(features), 2 * features.shape[1]), np.float32)
        img_feats[:, :features.shape[1]] = features
        faceness_scores = np.array([float(line.strip().split(" ")[-1]) for line in files_list], np.float32)
        return img_feats, faceness_scores

    return get_image_feature


def main(root: str, features: str, result_dir: str) -> None:
    checkout = Path(os.environ["ARCFACE_TORCH"])
    sys.path.insert(0, str(checkout))
    np.int = int  # type: ignore[attr-defined]
    try:
        import menpo.visualize.viewmatplotlib  # noqa: F401
    except ImportError:
        import matplotlib

        stub = types.ModuleType("menpo.visualize.viewmatplotlib")
        stub.sample_colours_from_colourmap = lambda n, name: [matplotlib.colormaps[name](i) for i in range(n)]
        for name in ("menpo", "menpo.visualize"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["menpo.visualize.viewmatplotlib"] = stub
    tree = ast.parse((checkout / "eval_ijbc.py").read_text())
    body = []
    for node in tree.body:  # right after its own definition, get_image_feature is rebound to the file reader
        body.append(node)
        if isinstance(node, ast.FunctionDef) and node.name == "get_image_feature":
            body.extend(ast.parse(f"get_image_feature = _features_reader({features!r})").body)
    tree.body = body
    sys.argv = ["eval_ijbc.py", "--image-path", root, "--result-dir", result_dir, "--target", "IJBC",
                "--job", "features"]
    code = compile(tree, str(checkout / "eval_ijbc.py"), "exec")
    exec(code, {"__name__": "__main__", "_features_reader": _features_reader})  # noqa: S102


if __name__ == "__main__":
    main(*sys.argv[1:4])
