"""Loss and learning-rate curves of a run, for people (PNG) next to the CSV that ``dvc plots`` reads."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from components.io.atomic import atomic_path  # noqa: E402


def plot_loss(history: pd.DataFrame, out: Path) -> None:
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    if len(history):
        loss_ax.plot(history.step, history.loss)
        lr_ax.plot(history.step, history.lr, color="tab:orange")
    loss_ax.set(title="training loss", xlabel="step")
    lr_ax.set(title="learning rate", xlabel="step")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
