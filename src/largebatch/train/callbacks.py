"""The periodic work of the training loop as callbacks: the noise scale, evaluation and the stop
rules, and the training log (checkpointing is the
:class:`~largebatch.train.checkpoint_manager.CheckpointManager`, a callback of the same list).

``Trainer.fit`` runs the steps and keeps the counters (:class:`~largebatch.train.state.TrainState`);
everything else it does is a :class:`Callback`, called in the order of the trainer's list:

* ``on_fit_start(loop)`` once, before the first step of this segment of the run;
* ``on_epoch_start(loop)`` before the first step of an epoch (or of a resumed epoch);
* ``on_step_end(loop, step)`` after every optimizer step, counters already advanced. A callback
  that returns True stops the run inside the epoch (validation target, image budget): the later
  callbacks of that step are not called and ``on_stop_in_epoch`` follows;
* ``on_epoch_end(loop)`` after ``state.epoch`` has advanced;
* ``on_stop_in_epoch(loop)``: the last evaluation and checkpoint of a run stopped mid-epoch;
* ``on_fit_end(loop)`` always (a ``finally``): bars and files closed.

``loop`` is the :class:`~largebatch.train.trainer.Trainer`, seen through :class:`TrainingLoop`: the
attributes and methods a callback may read and call, and nothing else. What a callback must keep
across a resume it returns from ``state_dict()``; the checkpoint stores it under the callback's
``name`` and a resumed run hands it back to ``load_state_dict`` (docs/architecture.md, "Checkpoints").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from largebatch.dist import DistEnv
from largebatch.plan import Plan, Stage
from largebatch.train.guard import NonFiniteGuard
from largebatch.train.metrics import MetricsLogger
from largebatch.train.progress import IntervalLog, Progress
from largebatch.train.state import TrainState, WallClock

log = logging.getLogger(__name__)


class TrainingLoop(Protocol):
    """What a callback may read and call on the loop (the :class:`~largebatch.train.trainer.Trainer`)."""

    env: DistEnv
    """This process's rank, world size and device."""
    plan: Plan
    """The current batch stage's plan (global batch in images, accumulation, BN groups, peak LR)."""
    stage: Stage
    """The current batch stage."""
    state: TrainState
    """The counters a checkpoint keeps; callbacks record their results in it."""
    metrics: MetricsLogger
    """metrics.jsonl and TensorBoard (rank 0 writes, the others ignore)."""
    guard: NonFiniteGuard
    """The non-finite guard: ``settle(state)`` counts pending skipped steps (one host sync)."""
    clock: WallClock
    """Seconds of training so far, earlier segments of a resumed run included."""
    epoch_position: Callable[[int], float]
    """Step -> position in epochs (fractional; under a batch schedule, by images seen)."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        ...

    def finished(self) -> bool:
        """All epochs done, or a stop rule ended the run."""
        ...

    def save_now(self) -> None:
        """Write a checkpoint of the current step (collective: every rank calls it)."""
        ...


@dataclass
class StepEnd:
    """What one optimizer step hands to the callbacks."""

    loss: torch.Tensor
    """Summed micro-batch losses of this rank (on the device, not synced)."""
    ok: bool | torch.Tensor
    """False (or a false device tensor) when the step was skipped for a non-finite gradient."""
    lr: float
    epoch: int
    """The epoch the step belongs to."""
    epoch_end: bool
    """The step was the last of its epoch."""
    grad_scale_sq: torch.Tensor | None = None
    """The squared fp16 loss scale the gradients carried (None without loss scaling)."""
    micro_batch_norms: tuple[torch.Tensor, torch.Tensor] | None = None
    """``train.noise_scale_small_batch=micro_batch``: the step's mean squared micro-batch gradient
    norm and the all-reduced gradient's (:class:`largebatch.train.noise_scale.MicroBatchNorms`)."""


class Callback:
    """Base class: every hook does nothing; ``state_dict`` is empty (nothing to keep)."""

    name = "callback"

    def on_fit_start(self, loop: TrainingLoop) -> None:
        pass

    def on_epoch_start(self, loop: TrainingLoop) -> None:
        pass

    def on_step_end(self, loop: TrainingLoop, step: StepEnd) -> bool:
        return False

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        pass

    def on_stop_in_epoch(self, loop: TrainingLoop) -> None:
        pass

    def on_fit_end(self, loop: TrainingLoop) -> None:
        pass

    def state_dict(self) -> Any:
        return {}

    def load_state_dict(self, state: Any) -> None:
        pass


class CallbackList(list):
    """The trainer's callbacks, called in order."""

    def call(self, hook: str, loop: TrainingLoop) -> None:
        for cb in self:
            getattr(cb, hook)(loop)

    def step_end(self, loop: TrainingLoop, step: StepEnd) -> bool:
        """True as soon as one callback stops the run (the rest are not called for this step)."""
        return any(cb.on_step_end(loop, step) for cb in self)

    def state_dict(self) -> dict:
        """{callback name: its state}; collective where a callback's is (the noise scale's)."""
        return {cb.name: cb.state_dict() for cb in self}

    def load_state_dict(self, ckpt: dict) -> None:
        """Hand each callback its part of a checkpoint, where the checkpoint has one."""
        for cb in self:
            if ckpt.get(cb.name) is not None:
                cb.load_state_dict(ckpt[cb.name])


class NoiseScaleCallback(Callback):
    """Feeds the comm hook's per-step gradient norms to the noise-scale estimate (McCandlish et al.
    2018 app. A); its state is the smoothed estimate, averaged over ranks."""

    name = "noise_scale"

    def __init__(self, monitor) -> None:
        self.monitor = monitor

    def on_step_end(self, loop: TrainingLoop, step: StepEnd) -> bool:
        self.monitor.after_step(loop.plan, step.grad_scale_sq, step.micro_batch_norms)
        return False

    def state_dict(self) -> dict | None:
        return self.monitor.state()  # collective; None when not measured

    def load_state_dict(self, state: dict) -> None:
        self.monitor.estimator.load_state_dict(state)


class EvalCallback(Callback):
    """Evaluation and the stop rules: the validation split every ``train.val_every_steps`` steps and at
    ``train.val_at_steps``, the
    test (and validation) split every ``train.eval_every_epochs`` epochs and at the end, the stop at
    ``train.stop_at_val_top1`` and the image budget ``train.stop_after_images``. Its records (best
    top-1, steps to the validation target) live in the run's ``TrainState``, which the summary reports."""

    name = "evaluation"

    def __init__(self, evaluator, train_cfg) -> None:
        self.evaluator, self.cfg = evaluator, train_cfg

    def on_step_end(self, loop: TrainingLoop, step: StepEnd) -> bool:
        t, st = self.cfg, loop.state
        will_eval = step.epoch_end and ((step.epoch + 1) % t.eval_every_epochs == 0 or step.epoch + 1 == t.epochs)
        # the image budget's stop evaluates both splits at this step anyway
        will_eval = will_eval or bool(t.stop_after_images and st.images_seen >= t.stop_after_images)
        if (
            ((t.val_every_steps and st.step % t.val_every_steps == 0) or st.step in t.val_at_steps)
            and not will_eval
            and self.evaluator.validation(st, wall_clock=loop.clock)
        ):
            st.stopped_at_target = True
            return True
        if t.stop_after_images and st.images_seen >= t.stop_after_images and not step.epoch_end:
            st.stopped_at_budget = True
            return True
        return False

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        t, st = self.cfg, loop.state
        last = st.epoch == t.epochs
        evaluated = last or st.epoch % t.eval_every_epochs == 0
        if evaluated:
            self.evaluator.full(st, wall_clock=loop.clock)
            if self.evaluator.reached_val_stop(st) and not last:
                st.stopped_at_target = last = True
                log.info("stopping at the validation target (train.stop_at_val_top1=%g)", t.stop_at_val_top1)
        if t.stop_after_images and st.images_seen >= t.stop_after_images and not last:
            st.stopped_at_budget = True
            if not evaluated:
                self.evaluator.full(st, wall_clock=loop.clock)

    def on_stop_in_epoch(self, loop: TrainingLoop) -> None:
        self.evaluator.full(loop.state, wall_clock=loop.clock)


class LogCallback(Callback):
    """The training record of every ``train.log_every_steps`` steps and of each epoch's last step
    (loss, LR, images/s, noise scale; one host sync per interval), a ``stage`` record when a batch
    schedule enters a new stage, and rank 0's progress bar."""

    name = "log"

    def __init__(self, train_cfg, noise_values) -> None:
        self.cfg, self.noise_values = train_cfg, noise_values
        self.progress: Progress | None = None
        self.interval: IntervalLog | None = None
        self.stage_index = 0  # the trainer starts in the first stage

    def on_fit_start(self, loop: TrainingLoop) -> None:
        self.progress = Progress(loop.env, loop.total_steps, loop.state.step)

    def on_epoch_start(self, loop: TrainingLoop) -> None:
        self.interval = IntervalLog(loop.env, loop.metrics, self.progress, loop.total_steps)
        stage = loop.stage
        if stage.index != self.stage_index:
            self.stage_index = stage.index
            loop.metrics.write(
                "stage",
                step=loop.state.step,
                epoch=loop.epoch_position(loop.state.step),
                stage=stage.index,
                global_batch_size=stage.plan.global_batch_size,
                accumulation_steps=stage.plan.accumulation_steps,
                bn_batch_size=stage.plan.bn_batch_size,
                peak_lr=stage.plan.peak_lr,
            )

    def on_step_end(self, loop: TrainingLoop, step: StepEnd) -> bool:
        st = loop.state
        self.interval.add(step.loss, step.ok)  # a skipped step's loss is NaN or Inf: not averaged
        self.progress.update()
        if st.step % self.cfg.log_every_steps == 0 or step.epoch_end:
            loop.guard.settle(st)
            self.interval.flush(
                st,
                step.epoch,
                step.lr,
                loop.plan.global_batch_size,
                loop.epoch_position(st.step),
                loop.clock,
                self.noise_values,
            )
        return False

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.progress is not None:
            self.progress.close()
