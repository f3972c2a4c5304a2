"""Learning-rate schedules as pure functions of the optimizer step.

The trainer asks the schedule for the LR of step ``t`` and writes it into the optimizer's param
groups before the step; only the step counter goes into checkpoints.

Epoch boundaries are converted to steps with ``round(epoch * steps_per_epoch)`` where
``steps_per_epoch = floor(N / B)`` (drop-last loader), the convention of techniques.md sec. 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def epoch_to_step(epoch: float, steps_per_epoch: int) -> int:
    """Step index at which ``epoch`` (possibly fractional) begins: ``round(epoch * steps_per_epoch)``."""
    return int(round(epoch * steps_per_epoch))


def goyal_lr(
    step: int,
    *,
    peak_lr: float,
    warmup_start_lr: float,
    warmup_steps: int,
    decay_steps: Sequence[int],
    decay_factor: float = 0.1,
) -> float:
    """Gradual warmup then step decay (Goyal et al. 2017, sec. 2.2 and 5.1).

    For ``step < warmup_steps`` the LR grows by a constant amount per iteration:
    ``lr(t) = start + (peak - start) * t / warmup_steps``; Goyal starts at the small-batch LR
    (0.1 for kn = 256) and reaches ``peak = k * 0.1`` after 5 epochs. Afterwards the LR is
    ``peak * decay_factor ** (number of decay steps <= t)``.

    Args:
        step: optimizer step t >= 0 (0-based).
        peak_lr: LR after warmup (the linear scaling rule's k * eta).
        warmup_start_lr: LR at t = 0.
        warmup_steps: T_w, the number of warmup iterations (0: no warmup).
        decay_steps: steps at which the LR is multiplied by ``decay_factor``.
        decay_factor: the multiplier (0.1 in Goyal et al.).

    Returns:
        The learning rate (float) for step t.

    Raises:
        ValueError: for a negative step.

    Example (techniques.md sec. 2.7, kn = 8192, 156 steps/epoch): t = 390 -> 1.65, t = 4680 -> 0.32.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return warmup_start_lr + (peak_lr - warmup_start_lr) * step / warmup_steps
    drops = sum(1 for s in decay_steps if step >= s)
    return peak_lr * decay_factor**drops


@dataclass(frozen=True, kw_only=True)
class StepSchedule:
    """Goyal et al.'s schedule bound to a run's steps; ``schedule(t)`` is the LR of step t."""

    peak_lr: float
    warmup_start_lr: float
    warmup_steps: int
    decay_steps: tuple[int, ...]
    decay_factor: float

    @classmethod
    def from_epochs(
        cls,
        *,
        peak_lr: float,
        warmup_start_lr: float,
        warmup_epochs: float,
        decay_epochs: Sequence[float],
        decay_factor: float,
        steps_per_epoch: int,
    ) -> "StepSchedule":
        return cls(
            peak_lr=peak_lr,
            warmup_start_lr=warmup_start_lr,
            warmup_steps=epoch_to_step(warmup_epochs, steps_per_epoch),
            decay_steps=tuple(epoch_to_step(e, steps_per_epoch) for e in decay_epochs),
            decay_factor=decay_factor,
        )

    def __call__(self, step: int) -> float:
        return goyal_lr(
            step,
            peak_lr=self.peak_lr,
            warmup_start_lr=self.warmup_start_lr,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps,
            decay_factor=self.decay_factor,
        )
