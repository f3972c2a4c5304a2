"""What a run writes while it trains: metrics.jsonl, TensorBoard events, curves.png (rank 0 only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

METRIC_KEYS = ("step", "epoch", "lr", "loss", "top1", "images_per_s", "wall_s")


class MetricsLogger:
    """Appends one JSON object per log interval (``kind: train``) and per evaluation (``kind: eval``)
    to ``metrics.jsonl`` and mirrors the numbers to TensorBoard. Every record has the keys
    ``step, epoch, lr, loss, top1, images_per_s, wall_s`` (null where not measured)."""

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir))

    def write(self, kind: str, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, **{k: values.pop(k, None) for k in METRIC_KEYS}, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{key}", value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path) -> Path:
    """Draw ``curves.png``: loss, test top-1 and LR against epochs, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["epoch"] for r in train], [r["loss"] for r in train], label="train")
    axes[0].plot([r["epoch"] for r in evals], [r["loss"] for r in evals], "o-", label="test")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    axes[0].legend()
    axes[1].plot([r["epoch"] for r in evals], [r["top1"] for r in evals], "o-")
    axes[1].set(xlabel="epoch", ylabel="top-1 (%)", title="test top-1")
    axes[2].plot([r["epoch"] for r in train], [r["lr"] for r in train])
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="LR")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
