"""DVC stage ``pack``: kept faces -> InsightFace RecordIO (``train.rec``, ``train.idx``, ``property``)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from tqdm import tqdm

from components.io.atomic import atomic_dir
from components.recordio.insightface import write_face_dataset
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "pack"


def run(params: Params) -> dict[str, Any]:
    p = params.pack
    manifest = pd.read_parquet(params.quality_filter.out_dir / "manifest.parquet")
    kept = manifest[manifest.status == "ok"]
    identities = sorted(kept.identity.unique())
    label_of = {name: i for i, name in enumerate(identities)}
    kept = kept.assign(label=kept.identity.map(label_of)).sort_values(["label", "path"]).reset_index(drop=True)
    report: dict[str, Any] = {}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        # The aligned JPEGs are stored as they are: re-encoding would add a second round of JPEG loss.
        samples = ((int(r.label), (params.align.out_dir / r.aligned_path).read_bytes())
                   for r in tqdm(kept.itertuples(), total=len(kept), desc=STAGE, unit="img", disable=None))
        count = write_face_dataset(tmp, samples, len(identities), params.align.image_size)
        pd.DataFrame({"label": range(len(identities)), "identity": identities,
                      "images": kept.groupby("label").size().to_numpy()}).to_csv(tmp / "identities.csv", index=False)
        kept.assign(key=range(1, count + 1))[["key", "label", "identity", "path", "sha256"]].to_parquet(
            tmp / "manifest.parquet", index=False)
        rec_bytes = (tmp / "train.rec").stat().st_size
    report.update(images=count, identities=len(identities), rec_bytes=rec_bytes,
                  images_per_second=round(count / report["seconds"], 1) if report["seconds"] else 0.0)
    write_report(STAGE, report)
    return report
