"""FP32 vs INT8 (QDQ, per-channel, percentile calibration) in ONNX Runtime on CPU: throughput, latency, cosine.

Models: the demo's trained mbf (``data/train``, after ``make demo``), r50 and r100. No pretrained iResNet can
be downloaded here, so r50 and r100 are seeded random weights with BatchNorm statistics re-estimated on the
sample faces (realistic activation ranges; their cosine is indicative only). Calibration: 256 packed training faces;
cosine: 256 held-out faces from ``data/eval_sets/orl_holdout.bin``. Then a table of what ONNX Runtime offers,
tried on r50 at batch 32 (``TRIES``). Writes ``reports/bench/quantize.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from components.evaluation.embedders import OnnxEmbedder
from components.evaluation.verification import load_bin
from components.export import agreement, export_onnx, quantize_int8
from components.export.faces import sample_faces
from components.models import get_model
from components.models.loading import load_backbone
from components.recordio.dataset import FaceRecordDataset
from components.training.batchnorm import recalibrate_batchnorm

OUT = Path("reports/bench/quantize.json")
PACKED, HELD_OUT = Path("data/packed"), Path("data/eval_sets/orl_holdout.bin")


def _timing(embedder: OnnxEmbedder, faces: np.ndarray, batch: int, seconds: float = 4.0) -> dict[str, float]:
    x = faces[:batch]
    embedder(x)  # warm-up: first call allocates
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 5:
        t = time.perf_counter()
        embedder(x)
        latencies.append(time.perf_counter() - t)
    ms = np.asarray(latencies) * 1000
    return {"images_per_s": round(batch * len(ms) / (ms.sum() / 1000), 1),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}}


def _model(name: str) -> torch.nn.Module:
    if name == "mbf" and (Path("data/train") / "backbone.pth").is_file():
        return load_backbone("data/train")[0]
    torch.manual_seed(0)
    model = get_model(name)
    recalibrate_batchnorm(model, FaceRecordDataset(PACKED, random_flip=False), samples=256)
    return model


def bench_model(name: str, calibration: np.ndarray, held_out: np.ndarray, tmp: Path) -> dict[str, object]:
    fp32, int8 = tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx"
    export_onnx(_model(name), fp32)
    start = time.perf_counter()
    quantize_int8(fp32, int8, calibration)
    quantize_s = time.perf_counter() - start
    runtimes = {"fp32": OnnxEmbedder(fp32), "int8": OnnxEmbedder(int8)}
    result: dict[str, object] = {"weights": "demo-trained" if name == "mbf" and Path("data/train").is_dir()
                                 else "random + BN re-estimated on sample faces",
                                 "quantize_s": round(quantize_s, 1),
                                 "agreement": agreement(runtimes["fp32"](held_out), runtimes["int8"](held_out))}
    for batch in (1, 8, 32):
        row = {kind: _timing(rt, held_out, batch) for kind, rt in runtimes.items()}
        row["int8_speedup"] = round(row["int8"]["images_per_s"] / row["fp32"]["images_per_s"], 2)
        result[f"batch_{batch}"] = row
    return result


# What ONNX Runtime offers, tried on r50 at batch 32 (quant_pre_process runs in every try: shape inference and
# the BatchNorm-into-Conv fusion). Each try changes one thing from the stage's default (the first row).
TRIES: list[dict[str, object]] = [
    {},
    {"decompose_prelu": False},
    {"quant_format": "qoperator"},
    {"reduce_range": True},
    {"per_channel": False},
    {"keep_edges_float": False},
    {"method": "minmax"},
    {"method": "entropy"},
    {"calibration": 64},
    {"quant_format": "qoperator", "keep_edges_float": False},
]
DEFAULTS = {"method": "percentile", "per_channel": True, "keep_edges_float": True, "quant_format": "qdq",
            "reduce_range": False, "decompose_prelu": True, "calibration": 256}


def tries(name: str, calibration: np.ndarray, held_out: np.ndarray, tmp: Path) -> list[dict[str, object]]:
    """One row per try: its settings, INT8 vs FP32 images/s at batch 32 (alternating calls), cosine to FP32."""
    from components.export.speed import compare_throughput

    fp32 = tmp / f"{name}.onnx"
    export_onnx(_model(name), fp32)
    reference = OnnxEmbedder(fp32)(held_out)
    rows = []
    for i, change in enumerate(TRIES):
        settings = DEFAULTS | change
        int8 = tmp / f"{name}.try{i}.onnx"
        start = time.perf_counter()
        quantize_int8(fp32, int8, calibration[:settings["calibration"]], settings["method"],
                      settings["per_channel"], settings["keep_edges_float"], settings["quant_format"],
                      settings["reduce_range"], settings["decompose_prelu"])
        quantize_s = time.perf_counter() - start
        speed = compare_throughput({"fp32": fp32, "int8": int8}, held_out, (32,), threads=0, min_seconds=3.0)["32"]
        row = {"change": change or "stage default", "quantize_s": round(quantize_s, 1), **speed,
               "int8_speedup": round(speed["int8"] / speed["fp32"], 2),
               **agreement(reference, OnnxEmbedder(int8)(held_out))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    calibration = sample_faces(PACKED, 256)
    held_out = load_bin(HELD_OUT).images[:256]
    results: dict[str, object] = {"threads": torch.get_num_threads(),
                                  "goal": "r50 and r100: INT8 >= 2.5x FP32 images/s at batch 32, mean cosine >= "
                                          "0.99 on a converged model"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mbf", "r50", "r100"):
            results[name] = bench_model(name, calibration, held_out, Path(tmp))
            print(name, json.dumps(results[name], indent=2), flush=True)
        results["r50_tries_batch32"] = tries("r50", calibration, held_out, Path(tmp))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
