"""Can a new model's probes be compared with templates an old model made? Backward compatibility, measured.

Shen et al., "Towards Backward-Compatible Representation Learning" (CVPR 2020): a new model is compatible with
an old one when new probes against the old gallery do at least as well as the old model with itself,
M(new, old) >= M(old, old) (their "empirical compatibility criterion"). Measured here on IJB-format template
pairs: the first template of every pair is embedded by the new model, the second by the old one, and TAR at
each FAR is computed as for the ordinary protocol (components/evaluation/roc.py). Embeddings of different
sizes cannot be compared at all.
"""

from __future__ import annotations

import numpy as np

from components.evaluation.ijbc import Features, IjbcOptions, template_features
from components.evaluation.ijbc_meta import IjbcMeta
from components.evaluation.roc import rate_key, roc_summary, split_scores

BCT_FAR = 1e-3  # where the criterion is checked: the gate's operating point on the demo sets


def cross_version(meta: IjbcMeta, new: Features, old: Features, options: IjbcOptions) -> dict[str, object]:
    """TAR@FAR of old-old, new-old (new probe, old template) and new-new, and BCT's criterion at ``BCT_FAR``."""
    if new.shape[1] != old.shape[1]:
        return {"comparable": False, "bct": False,
                "reason": f"embedding sizes differ ({new.shape[1]} new, {old.shape[1]} old)"}
    _, new_templates = template_features(meta, new, options, "new model")
    _, old_templates = template_features(meta, old, options, "old model")
    first, second = meta.pair_index

    def tar(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
        scores = np.einsum("ij,ij->i", a[first], b[second]).astype(np.float32)
        genuine, impostor = split_scores(scores, meta.pair_label)
        summary = roc_summary(genuine, impostor, options.fars).as_metrics()
        return {k: v for k, v in summary.items() if k.startswith("tar_at_far")}

    figures = {"old_old": tar(old_templates, old_templates), "new_old": tar(new_templates, old_templates),
               "new_new": tar(new_templates, new_templates)}
    # at BCT_FAR, or where the set is too small to resolve it, at the smallest FAR above it that it resolves
    far = next((f for f in sorted(options.fars) if f >= BCT_FAR
                and figures["old_old"].get(rate_key("tar_at_far", f)) is not None), None)
    if far is None:
        return {"comparable": True, "bct": False, "bct_far": None, **figures,
                "reason": f"the set resolves no FAR from {BCT_FAR:g} up: too few impostor pairs"}
    key = rate_key("tar_at_far", far)
    new_old, old_old = figures["new_old"][key], figures["old_old"][key]
    return {"comparable": True, "bct": new_old is not None and new_old >= old_old, "bct_far": far, **figures}
