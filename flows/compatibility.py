"""Is the candidate compatible with the champion's templates? Measured for every candidate before approval.

The retrain flow's record step calls :func:`measure` with the registry's champion: the candidate's served file
(``publish.model``) and the champion's (downloaded from the registry, its SHA-256 checked) embed the held-out
sets the eval stage uses (``eval.ijbc_root`` and ``eval.ijbc_hard_root``), and
components/evaluation/compatibility.py compares new probes with old templates. The verdict is a fact the
gallery's migration acts on, never a refusal: "compatible with vN" (BCT's criterion holds on every set) or
"re-embedding required". It lives here, next to the gate, because "the champion" is a registry concept the
DVC stages do not know. Written to ``reports/compatibility.json``; the record step puts it into the version's
tags (``compatibility.*``), its model card and ``faceforge lineage``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pipelines.common import write_report
from pipelines.params import Params

STAGE = "compatibility"


def measure(params: Params, client: Any, champion_version: str | None) -> dict[str, Any]:
    """The candidate against ``champion_version`` on each held-out set; the verdict and its figures."""
    if champion_version is None:
        report: dict[str, Any] = {"with": None, "compatible": None,
                                  "verdict": "no champion yet: nothing to be compatible with"}
        write_report(STAGE, report)
        return report
    from components.evaluation.compatibility import cross_version
    from components.evaluation.embedders import load_embedder
    from components.evaluation.ijbc_images import embed_ijbc_images
    from components.evaluation.ijbc_meta import read_ijbc_meta
    from flows.serving import download_model
    from pipelines.eval import ijbc_options

    p = params.eval
    options = ijbc_options(p)
    version = client.get_model_version(params.mlflow.registered_model, champion_version)
    sets = {name: root for name, root in ((p.ijbc_target, p.ijbc_root), (f"{p.ijbc_target}_hard", p.ijbc_hard_root))
            if root is not None}
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_model = download_model(version, params, Path(tmp))
        new, old = load_embedder(params.publish.model), load_embedder(old_model)
        for name, root in sets.items():
            meta = read_ijbc_meta(root, p.ijbc_target)
            figures[name] = cross_version(meta, embed_ijbc_images(meta, new, options),
                                          embed_ijbc_images(meta, old, options), options)
    compatible = bool(figures) and all(f["bct"] for f in figures.values())
    reasons = [f"{name}: {f['reason']}" for name, f in figures.items() if "reason" in f]
    reasons += [f"{name}: new probes against v{champion_version}'s templates reach TAR "
                f"{f['new_old'][_key(f['bct_far'])]} < its own {f['old_old'][_key(f['bct_far'])]} at FAR "
                f"{f['bct_far']:g}" for name, f in figures.items() if f.get("bct_far") and not f["bct"]]
    report = {"with": champion_version, "with_sha256": version.tags.get("model_sha256"), "compatible": compatible,
              "verdict": f"compatible with v{champion_version}" if compatible else "re-embedding required",
              "reasons": reasons, "sets": figures}
    write_report(STAGE, report)
    return report


def _key(far: float) -> str:
    from components.evaluation.roc import rate_key

    return rate_key("tar_at_far", far)


def compatibility_tags(report: dict[str, Any] | None, limit: int) -> dict[str, str]:
    """What the version carries: with whom, the verdict, and every figure as ``compatibility.<set>.<pair>.<far>``."""
    if not report or report.get("with") is None:
        return {}
    tags = {"compatibility.with": str(report["with"]), "compatibility.verdict": report["verdict"]}
    for name, figures in report["sets"].items():
        for pair in ("old_old", "new_old", "new_new"):
            for key, value in (figures.get(pair) or {}).items():
                tags[f"compatibility.{name}.{pair}.{key}"] = "null" if value is None else f"{value:.6g}"
    return {k: v[:limit] for k, v in tags.items()}


def compatibility_markdown(report: dict[str, Any] | None) -> list[str]:
    """The model card's section: the verdict and the table a reviewer compares."""
    if not report or report.get("with") is None:
        return ["## Compatibility", "", (report or {}).get("verdict", "not measured")]
    lines = ["## Compatibility", "", f"**{report['verdict']}** (BCT's criterion: new probes against "
             f"v{report['with']}'s templates do at least as well as v{report['with']} itself)", ""]
    lines += [f"- {r}" for r in report.get("reasons", [])]
    lines += ["", "| set | pair | " + " | ".join(_fars(report)) + " |", "|---|---|" + "---|" * len(_fars(report))]
    for name, figures in report["sets"].items():
        if not figures["comparable"]:
            lines.append(f"| {name} | - | {figures['reason']} |")
            continue
        for pair, label in (("old_old", "old-old"), ("new_old", "new probe, old template"), ("new_new", "new-new")):
            values = [figures[pair].get(k) for k in _fars(report)]
            lines.append(f"| {name} | {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values)
                         + " |")
    return lines


def _fars(report: dict[str, Any]) -> list[str]:
    comparable = [f for f in report["sets"].values() if f["comparable"]]
    return sorted(comparable[0]["old_old"], key=lambda k: float(k.rsplit("_", 1)[1]), reverse=True) \
        if comparable else []
