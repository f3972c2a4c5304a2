"""The old home of the loop's state, training log and checkpoint triggers, kept so that imports of
``largebatch.train.loop`` still work. Each now lives with what it belongs to: :class:`TrainState` and
:class:`WallClock` in :mod:`largebatch.train.state`, :class:`Progress` and :class:`IntervalLog` in
:mod:`largebatch.train.progress`, :class:`CheckpointTriggers`, :class:`Preempted` and
:data:`STOP_SIGNALS` in :mod:`largebatch.train.checkpoint_manager`."""

from largebatch.train.checkpoint_manager import STOP_SIGNALS, CheckpointTriggers, Preempted
from largebatch.train.progress import IntervalLog, Progress
from largebatch.train.state import TrainState, WallClock

__all__ = ["STOP_SIGNALS", "CheckpointTriggers", "IntervalLog", "Preempted", "Progress", "TrainState", "WallClock"]
