"""Open-set 1:N identification (IJB-B/C "mixed" protocol) against one gallery at a time.

Per gallery (G1 or G2), a probe whose subject is enrolled is *mated*; the others are *non-mated* (IJB-C's
two galleries hold disjoint halves of the subjects, so every probe is mated in exactly one of them).
- rank-k (CMC): fraction of mated probes whose mate is among the k highest-scoring gallery templates.
- TPIR at FPIR f: threshold t set on the non-mated probes' top-1 scores with the same rule as roc.py
  (lowest t that lets at most floor(f x N_nonmated) of them through); TPIR = fraction of mated probes whose
  mate is ranked first *and* scores above t. A target below 1 / N_nonmated is None (unmeasurable).
Results are reported per gallery and as the mean of G1 and G2, as papers report IJB-C 1:N.
"""

from __future__ import annotations

import numpy as np

from components.evaluation.roc import accept_cut, rate_key


def identify(probe_feats: np.ndarray, probe_subjects: np.ndarray, gallery_feats: np.ndarray,
             gallery_subjects: np.ndarray, ranks: tuple[int, ...] = (1, 5),
             fpirs: tuple[float, ...] = (1e-2, 1e-1), chunk: int = 8192) -> dict[str, float | None]:
    """Metrics for L2-normalised probe and gallery template features (one gallery template per subject)."""
    subjects, counts = np.unique(gallery_subjects, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"gallery subject {subjects[counts > 1][0]} has {counts.max()} templates; expected one")
    order = np.argsort(gallery_subjects)
    sorted_subjects = gallery_subjects[order]
    pos = np.clip(np.searchsorted(sorted_subjects, probe_subjects), 0, len(order) - 1)
    mated = sorted_subjects[pos] == probe_subjects
    mate_col = order[pos]

    mate_rank = np.empty(len(probe_feats), np.int64)
    mate_score = np.empty(len(probe_feats), np.float32)
    top_score = np.empty(len(probe_feats), np.float32)
    for start in range(0, len(probe_feats), chunk):  # chunked: [probes x gallery] scores never held whole
        sims = probe_feats[start:start + chunk] @ gallery_feats.T
        rows = np.arange(sims.shape[0])
        mate = sims[rows, mate_col[start:start + chunk]]
        mate_score[start:start + chunk] = mate
        mate_rank[start:start + chunk] = 1 + np.count_nonzero(sims > mate[:, None], axis=1)
        top_score[start:start + chunk] = sims.max(axis=1)

    n_mated = int(mated.sum())
    out: dict[str, float | None] = {"n_mated": n_mated, "n_nonmated": int((~mated).sum()),
                                    "gallery": len(gallery_feats)}
    if n_mated == 0:
        raise ValueError("no probe has a mate in the gallery")
    for k in ranks:
        out[f"rank{k}"] = round(float(np.count_nonzero(mate_rank[mated] <= k)) / n_mated, 6)
    nonmated_top = np.sort(top_score[~mated])
    for fpir in fpirs:
        key = rate_key("tpir_at_fpir", fpir)
        t = accept_cut(nonmated_top, fpir)
        hit = (mate_rank[mated] == 1) & (mate_score[mated] > t) if t is not None else None
        out[key] = None if hit is None else round(float(np.count_nonzero(hit)) / n_mated, 6)
    return out
