"""Learning-rate (and later batch-size) schedules: pure functions of the optimizer step."""

from largebatch.schedules.lr import LRSchedule, build_schedule, epoch_to_step, goyal_lr

__all__ = ["LRSchedule", "build_schedule", "epoch_to_step", "goyal_lr"]
