"""The state of a run that the loop advances: the counters a checkpoint keeps (:class:`TrainState`) and
the wall clock of training summed over the segments of a resumed run (:class:`WallClock`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields


@dataclass
class TrainState:
    """Counters saved in checkpoints; everything else is derived from them and the config."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Epoch the next step belongs to."""
    best_top1: float = 0.0
    top1: float = float("nan")
    val_top1: float | None = None
    """Top-1 on the held-out validation split (data.val_size) at the last evaluation."""
    best_val_top1: float | None = None
    time_to_target_s: float | None = None
    train_wall_s: float = 0.0
    """Seconds spent in the training loop (steps, evaluation, checkpoints), summed over resumes."""
    step_time_s: float = 0.0
    """Seconds spent in optimizer steps only (for images_per_s), summed over resumes."""
    eval_s: float = 0.0
    """Seconds spent in evaluations (BN settling included), summed over resumes."""
    checkpoint_s: float = 0.0
    """Seconds spent writing checkpoints, summed over resumes."""
    images_seen: int = 0
    skipped_steps: int = 0
    """Steps skipped because a gradient held a NaN or Inf (train.nonfinite_policy=skip)."""
    steps_to_val_target: int | None = None
    """Optimizer steps at the first evaluation whose validation top-1 reached train.val_target_top1
    (or train.stop_at_val_top1)."""
    images_to_val_target: int | None = None
    """Training images seen by then (steps x global batch, summed over batch stages)."""
    stopped_at_target: bool = False
    """The run ended early because train.stop_at_val_top1 was reached."""
    stopped_at_budget: bool = False
    """The run ended early because train.stop_after_images images were seen."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Every counter from ``state`` (those it lacks keep their defaults).

        Raises:
            TypeError: ``state`` has a key that is not a counter."""
        fresh = TrainState(**state)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


class WallClock:
    """Seconds of training: those of earlier segments (``before``, in seconds) plus this one's so far."""

    def __init__(self, before: float) -> None:
        self.before, self.start = before, time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start
