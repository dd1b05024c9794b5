"""Warm retraining after new identities arrive vs. training from scratch: steps and wall time to the same result.

The story a team lives: version 1 was trained on the people known then (the sample's first 28 identities); four
new people arrive (all 32). A full retrain trains on the 32 from random weights; a warm retrain continues from
version 1's train output (backbone, and the 28 known centres carried over by name; the 4 new ones start at their
class mean) for ``warm_start.epochs`` epochs. Each is what a user runs, whole commands timed: ``faceforge train``
(process start, Ray, precise BN after a run from scratch, writing), then ``faceforge export`` and
``faceforge eval`` of the exported file on the held-out people. Model: mbf 512-d (the from-scratch recipe of
``bench.pretrained``), so "from scratch" means what it says. The warm start folder is written as the warm_start
stage writes it (the registry and DVC copy are tested in tests/test_warm_start.py and take seconds).

Result: the fewest warm steps whose clean TAR@FAR=1e-3 (and ORL hold-out accuracy, reported) reaches the
from-scratch run's, as a fraction of the from-scratch steps and train wall time (goal <= 30%).
Writes ``reports/bench/warm_retrain.json``. Run after ``make demo`` (it reuses data/packed and the eval sets).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from bench.pretrained import SCRATCH
from bench.stage_command import run_stage
from components.recordio.dataset import FaceRecordDataset
from components.recordio.format import unpack_header
from components.recordio.insightface import write_face_dataset

OUT = Path("reports/bench/warm_retrain.json")
WORK = Path("reports/bench/warm_retrain")
FULL_EPOCHS = 10
KNOWN = 28  # identities version 1 was trained on
WARM_EPOCHS = (1, 2, 3)


def subset(packed: Path, classes: int, out: Path) -> Path:
    """The packed set's first ``classes`` identities, records as they are (no re-encoding)."""
    faces = FaceRecordDataset(packed, random_flip=False)
    samples = []
    for i in range(len(faces)):
        header, payload = unpack_header(faces.reader.read(int(faces.keys[i])))
        if faces.label(i) < classes:
            samples.append((faces.label(i), bytes(payload)))
    out.mkdir(parents=True)
    write_face_dataset(out, samples, classes)
    identities = pd.read_csv(packed / "identities.csv")
    identities[identities.label < classes].to_csv(out / "identities.csv", index=False)
    return out


def _trained(name: str, sets: list[str], packed: Path) -> dict[str, Any]:
    root = WORK / name
    train, seconds = run_stage("train", [*SCRATCH, *sets, f"pack.out_dir={packed}", f"train.out_dir={root / 'train'}"])
    _, export_s = run_stage("export", [f"export.model={root / 'train'}", f"export.out_dir={root / 'export'}"])
    evaluated, eval_s = run_stage("eval", [f"eval.model={root / 'export' / 'model.onnx'}",
                                      f"eval.out_dir={root / 'eval'}"])
    return {"sets": sets, "train_s": round(seconds, 1), "steps": train["steps"], "export_s": round(export_s, 1),
            "eval_s": round(eval_s, 1), "start": train["start"],
            "clean_tar_at_far_1e-3": evaluated["ijbc"]["tar_at_far_1e-3"],
            "clean_tar_at_far_1e-4": evaluated["ijbc"]["tar_at_far_1e-4"],
            "rank1": evaluated["ijbc"]["identification"]["mean"]["rank1"],
            "orl_holdout_accuracy": evaluated["verification"]["orl_holdout"]["accuracy"]}


def warm_start_folder(champion: Path, out: Path) -> Path:
    """What the warm_start stage writes for version 1: its train output plus the record naming it."""
    shutil.copytree(champion, out)
    (out / "warm_start.json").write_text(json.dumps({"version": 1, "registered_model": "faceforge-embedder",
                                                     "train_md5": "bench-version-1"}) + "\n")
    return out


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    packed = Path("data/packed")
    before = subset(packed, KNOWN, WORK / "packed_28")
    rows: dict[str, Any] = {}
    for name, sets, data in [
        ("version1_scratch_28_identities", [f"train.epochs={FULL_EPOCHS}"], before),
        ("full_retrain_scratch_32_identities", [f"train.epochs={FULL_EPOCHS}"], packed),
    ]:
        print(f"{name} ...", flush=True)
        rows[name] = _trained(name, sets, data)
        print(json.dumps(rows[name]), flush=True)
    warm = warm_start_folder(WORK / "version1_scratch_28_identities" / "train", WORK / "warm_start")
    for epochs in WARM_EPOCHS:
        name = f"warm_{epochs}_epochs"
        print(f"{name} ...", flush=True)
        rows[name] = _trained(name, [f"warm_start.out_dir={warm}", f"warm_start.epochs={epochs}"], packed)
        print(json.dumps(rows[name]), flush=True)
    full = rows["full_retrain_scratch_32_identities"]
    reached = [rows[f"warm_{e}_epochs"] for e in WARM_EPOCHS
               if rows[f"warm_{e}_epochs"]["clean_tar_at_far_1e-3"] >= full["clean_tar_at_far_1e-3"]]
    first = reached[0] if reached else None
    summary = {
        "target_clean_tar_at_far_1e-3": full["clean_tar_at_far_1e-3"],
        "full_steps": full["steps"], "full_train_s": full["train_s"],
        "warm_steps_to_reach": first["steps"] if first else None,
        "warm_train_s_to_reach": first["train_s"] if first else None,
        "steps_fraction": round(first["steps"] / full["steps"], 3) if first else None,
        "train_time_fraction": round(first["train_s"] / full["train_s"], 3) if first else None,
        "goal_fraction": 0.30,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": "2 CPU cores", "runs": rows, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
