"""Learning-rate (and later batch-size) schedules: pure functions of the optimizer step."""

from largebatch.schedules.lr import StepSchedule, epoch_to_step, goyal_lr

__all__ = ["StepSchedule", "epoch_to_step", "goyal_lr"]
