"""A PNG of training loss and validation mIoU per epoch, from the metrics log."""

from __future__ import annotations

from pathlib import Path

from ..core.atomic import atomic_path
from .rundir import read_metrics


def plot_metrics(log_path: "str | Path", png_path: "str | Path") -> Path:
    """Plot ``train_loss`` and ``miou`` from a JSON-lines log into a two-panel PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(log_path)
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    ax2.plot(epochs, [r["miou"] * 100 for r in rows], marker="o", color="tab:green")
    ax2.set(xlabel="epoch", ylabel="mIoU (%)", title="val mIoU", ylim=(0, 100))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(png_path)
