"""Learning-rate schedules as pure functions of the optimizer step.

The trainer asks the schedule for the LR of step ``t`` and writes it into the optimizer's param
groups before the step; only the step counter goes into checkpoints.

Epoch boundaries are converted to steps with ``round(epoch * steps_per_epoch)`` where
``steps_per_epoch = floor(N / B)`` (drop-last loader), our docs' convention (docs/recipes.md).

Every schedule is linear warmup (from a configurable start: Goyal starts at the small-batch LR,
MLPerf at 0) followed by one decay rule:

* ``step``: multiply by ``decay_factor`` at each decay step (Goyal et al. 2017, sec. 5.1);
* ``poly``: ``end + (peak - end) * (1 - t' / D) ** power`` with ``t'`` the steps after warmup and
  ``D = total - warmup + 1`` (the MLPerf reference ``PolynomialDecayWithWarmup``);
* ``cosine``: ``end + (peak - end) * (1 + cos(pi * t' / D)) / 2``;
* ``slow_start``: piecewise constant multiples of the peak (Akiba et al. 2017, sec. 3.2: 0.5, 0.075,
  0.01, 0.001 of the scaled LR from epochs 0, 40, 70, 85 of 90), usually without warmup since the
  RMSprop blend is the warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from largebatch.config import SCHEDULE_NAMES


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

    Raises:
        ValueError: for a negative step.

    Example (Goyal et al. 2017, kn = 8192, 156 steps/epoch): t = 390 -> 1.65, t = 4680 -> 0.32.
    """
    return LRSchedule(
        kind="step",
        peak_lr=peak_lr,
        warmup_start_lr=warmup_start_lr,
        warmup_steps=warmup_steps,
        total_steps=max(warmup_steps, 1),
        decay_steps=tuple(decay_steps),
        decay_factor=decay_factor,
    )(step)


@dataclass(frozen=True, kw_only=True)
class LRSchedule:
    """Warmup then a decay rule, bound to a run's steps; ``schedule(t)`` is the LR of step t.

    Attributes:
        kind: ``step``, ``poly``, ``cosine`` or ``slow_start``.
        peak_lr: LR at the end of warmup (after the scaling rule).
        warmup_start_lr: LR at step 0 of the warmup.
        warmup_steps: number of warmup steps (0: none).
        total_steps: steps of training over which poly and cosine decay (their D = total - warmup + 1).
        decay_steps: step boundaries (``step``: where the LR is multiplied by decay_factor;
            ``slow_start``: where the next factor begins).
        decay_factor: ``step`` multiplier.
        factors: ``slow_start`` multiples of peak_lr, one more than decay_steps.
        end_lr: final LR of ``poly`` and ``cosine``.
        power: exponent of ``poly``.
    """

    kind: str
    peak_lr: float
    warmup_start_lr: float
    warmup_steps: int
    total_steps: int
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1
    factors: tuple[float, ...] = ()
    end_lr: float = 0.0
    power: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_NAMES:
            raise ValueError(f"schedule kind {self.kind!r} is unknown; accepted: {', '.join(SCHEDULE_NAMES)}")
        if self.kind == "slow_start" and len(self.factors) != len(self.decay_steps) + 1:
            raise ValueError(
                f"slow_start needs one more factor than boundaries, got {len(self.factors)} factors "
                f"and {len(self.decay_steps)} boundaries"
            )

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * step / self.warmup_steps
        if self.kind == "step":
            return self.peak_lr * self.decay_factor ** sum(1 for s in self.decay_steps if step >= s)
        if self.kind == "slow_start":
            return self.peak_lr * self.factors[sum(1 for s in self.decay_steps if step >= s)]
        span = self.total_steps - self.warmup_steps + 1
        progress = min(step - self.warmup_steps, span) / span
        if self.kind == "poly":
            return self.end_lr + (self.peak_lr - self.end_lr) * (1.0 - progress) ** self.power
        return self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(schedule_cfg, *, peak_lr: float, base_lr: float, steps_per_epoch: int, epochs: int) -> LRSchedule:
    """The :class:`LRSchedule` of a config's ``schedule`` section for a run of ``epochs``.

    The warmup starts at ``schedule.warmup_start_lr`` (None: ``optim.base_lr``, Goyal), lowered to
    the peak when it is above it (no warmup for a batch at or below the base batch).
    """
    s = schedule_cfg
    start = base_lr if s.warmup_start_lr is None else s.warmup_start_lr
    decay_end = s.decay_end_epochs if s.decay_end_epochs is not None else epochs
    if s.name == "step":
        bounds = s.decay_epochs
    elif s.name == "slow_start":
        bounds = s.slow_start.epochs
    else:
        bounds = []
    return LRSchedule(
        kind=s.name,
        peak_lr=peak_lr,
        warmup_start_lr=min(start, peak_lr),
        warmup_steps=epoch_to_step(s.warmup_epochs, steps_per_epoch),
        total_steps=epoch_to_step(decay_end, steps_per_epoch),
        decay_steps=tuple(epoch_to_step(e, steps_per_epoch) for e in bounds),
        decay_factor=s.decay_factor,
        factors=tuple(s.slow_start.factors),
        end_lr=s.end_lr,
        power=s.poly.power,
    )


class ScheduledLR(torch.optim.lr_scheduler.LRScheduler):
    """An :class:`LRSchedule` as a ``torch.optim.lr_scheduler.LRScheduler``, for a training loop of
    one's own: every param group's ``lr`` is ``schedule(t)`` at step ``t``; call ``step()`` after each
    ``optimizer.step()``, as with any PyTorch scheduler. ``state_dict()`` holds the step count
    (``last_epoch``, PyTorch's name; it counts optimizer steps here), so a resumed loop continues
    the schedule where it stopped.

    Example::

        schedule = LRSchedule("poly", peak_lr=9.0, warmup_start_lr=0.0, warmup_steps=500, total_steps=5000)
        scheduler = ScheduledLR(optimizer, schedule)
        for images, labels in loader:
            ...; optimizer.step(); scheduler.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule, last_epoch: int = -1) -> None:
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [self.schedule(max(self.last_epoch, 0))] * len(self.optimizer.param_groups)

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
