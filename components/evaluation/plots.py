"""ROC curves and the TAR@FAR table people read: a PNG, a CSV per curve for ``dvc plots``, a markdown table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # without pyplot: no GUI backend, a lighter import

from components.evaluation.roc import rate_key
from components.io.atomic import atomic_path


def write_roc_csv(path: Path, far: np.ndarray, tar: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.c_[far, tar], fmt="%.8g", delimiter=",", header="far,tar", comments="")


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], fars: tuple[float, ...], out: Path,
             title: str = "ROC (log FAR)") -> None:
    """One curve per set on a log-FAR axis, with the reported FAR targets marked."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    low = min([min(fars)] + [float(far[far > 0].min()) for far, _ in curves.values() if (far > 0).any()])
    for name, (far, tar) in curves.items():
        ax.step(np.clip(far, low, 1), tar, where="post", lw=1.4, label=name)
    for f in fars:
        ax.axvline(f, color="0.85", lw=0.8, zorder=0)
    ax.set(xscale="log", xlim=(low, 1.0), ylim=(0.0, 1.01), xlabel="false accept rate (FAR)",
           ylabel="true accept rate (TAR)", title=title)
    ax.grid(True, which="major", ls="--", lw=0.5)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def tar_far_markdown(rows: dict[str, dict[str, float | None]], fars: tuple[float, ...],
                     extra: dict[str, str] | None = None) -> str:
    """Rows = set name -> metrics (as in reports/eval.json); TAR in percent, n/a where FAR is below resolution."""
    keys = [rate_key("tar_at_far", f) for f in fars]
    extra = extra or {}
    header = "| set | " + " | ".join(f"TAR@FAR={f:g}" for f in fars) + "".join(f" | {v}" for v in extra.values()) + " |"
    lines = [header, "|" + "---|" * (1 + len(fars) + len(extra))]
    for name, metrics in rows.items():
        cells = [_cell(metrics.get(k)) for k in keys] + [_cell(metrics.get(k)) for k in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("TAR in %; n/a = the FAR target is below 1 / (impostor pairs) for that set.")
    return "\n".join(lines) + "\n"
