"""Models worth serving: from scratch vs. a pretrained start, on the held-out people (clean and hard sets).

Each variant is what a user runs, whole commands timed (process start, imports, Ray, writing): ``faceforge train``
with the variant's ``--set`` overrides, then ``faceforge export`` and ``faceforge eval`` of the exported file;
the imported SFace is evaluated as imported. Variants:
- ``scratch_mbf``: today's demo before [L] (mbf, 512-d, random weights, 2 epochs);
- ``sface_imported``: OpenCV Zoo's SFace through the import_model stage, no training;
- ``sface_finetuned``: params.yaml as shipped, what ``make demo`` trains (SFace fine-tuned on the 32 training
  people for 2 epochs, every face degraded like the hard set, backbone at 0.1x the head's learning rate,
  BatchNorm statistics kept from the start, and the imported SFace's embedding of each clean crop as the
  distillation target of its degraded copy);
- ``sface_finetuned_batchnorm_trained``: the same with BatchNorm statistics updated by the training batches;
- ``sface_finetuned_margin_only``: the margin loss alone, half the faces degraded (no teacher), BatchNorm kept;
- ``mbf_distilled``: an mbf (128-d) from random weights with SFace as teacher, served as the quantize verdict says.
Served throughput is ONNX Runtime's images/s at batch 32 on this machine (``quantize.speed_threads`` default).
Writes ``reports/bench/pretrained.json``. Run after ``make demo`` (it reuses data/packed, data/import, the sets).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.stage_command import run_stage

OUT = Path("reports/bench/pretrained.json")
WORK = Path("reports/bench/pretrained")
SCRATCH = ["train.backbone=mbf", "train.init_from=null", "train.degrade_fraction=0", "train.backbone_lr_scale=1",
           "train.teacher=null", "train.embedding_size=512"]
VARIANTS: dict[str, list[str] | None] = {
    "scratch_mbf": SCRATCH,
    "sface_imported": None,
    "sface_finetuned": [],
    "sface_finetuned_batchnorm_trained": ["train.freeze_batchnorm=false", "train.bn_recalibration_samples=0"],
    "sface_finetuned_margin_only": ["train.teacher=null", "train.degrade_fraction=0.5"],
    "mbf_distilled": [*SCRATCH, "train.teacher=data/import/model.onnx", "train.embedding_size=128",
                      "train.epochs=6"],  # a later --set wins
}


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    def tars(section: dict[str, Any]) -> dict[str, Any]:
        return {"tar_at_far_1e-3": section["tar_at_far_1e-3"], "tar_at_far_1e-4": section["tar_at_far_1e-4"],
                "rank1": section["identification"]["mean"]["rank1"]}

    return {"clean": tars(report["ijbc"]), "hard": tars(report["ijbc_hard"]),
            "orl_holdout_accuracy": report["verification"]["orl_holdout"]["accuracy"]}


def _variant(name: str, sets: list[str] | None) -> dict[str, Any]:
    root = WORK / name
    row: dict[str, Any] = {"sets": sets}
    if sets is None:
        model = Path("data/import/model.onnx")
    else:
        train, row["train_s"] = run_stage("train", [*sets, f"train.out_dir={root / 'train'}"])
        row["train_steps"], row["train_samples_per_s"] = train["steps"], train["samples_per_s"]
        _, row["export_s"] = run_stage("export", [f"export.model={root / 'train'}",
                                                  f"export.out_dir={root / 'export'}"])
        model = root / "export" / "model.onnx"
    evaluated, row["eval_s"] = run_stage("eval", [f"eval.model={model}", f"eval.out_dir={root / 'eval'}"])
    row |= _headline(evaluated)
    quantized, row["quantize_s"] = run_stage("quantize", [f"quantize.model={model}", f"quantize.out_dir={root / 'q'}",
                                                     f"eval.out_dir={root / 'eval'}"])  # FP32: the eval just run
    row["served_variant"] = quantized["serve"]
    row["served_variant_reasons"] = quantized["serve_reasons"]
    row["int8_mean_cosine"] = quantized["embedding_agreement"]["mean_cosine"]
    speed = quantized["speed"]["images_per_s"]["32"]
    row["served_images_per_s_batch32"] = speed[quantized["serve"]]
    row["int8_clean_tar_at_far_1e-3"] = quantized["int8"]["ijbc"]["tar_at_far_1e-3"]
    return row


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    results = {}
    for name, sets in VARIANTS.items():
        print(f"{name} ...", flush=True)
        results[name] = _variant(name, sets)
        print(json.dumps(results[name], indent=1), flush=True)
    start = results["sface_imported"]["hard"]
    summary = {f"{name}_minus_imported_hard_{key}": round(results[name]["hard"][key] - start[key], 4)
               for name in VARIANTS if name.startswith("sface_finetuned")
               for key in ("tar_at_far_1e-3", "tar_at_far_1e-4")} | {"goal_tar_at_far_1e-3": 0.05}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": "2 CPU cores", "variants": results, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
