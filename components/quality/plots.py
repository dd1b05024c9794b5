"""Histograms of the quality measurements with the thresholds drawn in: what a person checks first."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from components.io.atomic import atomic_path  # noqa: E402


def plot_quality(table: pd.DataFrame, limits: dict[str, tuple[float | None, float | None]], out: Path) -> None:
    """One panel per metric: kept faces vs. rejected ones, dashed lines at the thresholds."""
    fig, axes = plt.subplots(1, len(limits), figsize=(4 * len(limits), 3.2))
    kept = table.status == "ok"
    for ax, (column, (low, high)) in zip(axes, limits.items(), strict=True):
        ax.hist([table.loc[kept, column], table.loc[~kept, column]], bins=30, stacked=True,
                label=["kept", "rejected"], color=["tab:blue", "tab:red"])
        for limit in (low, high):
            if limit is not None:
                ax.axvline(limit, color="black", linestyle="--", linewidth=1)
        ax.set_title(column)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
