"""Learning-rate schedules: pure functions of the optimizer step, and the same as a PyTorch scheduler."""

from largebatch.schedules.lr import LRSchedule, ScheduledLR, build_schedule, epoch_to_step, goyal_lr

__all__ = ["LRSchedule", "ScheduledLR", "build_schedule", "epoch_to_step", "goyal_lr"]
