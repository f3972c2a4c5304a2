"""The pieces of the training loop that are not the step: the counters a checkpoint keeps, the wall
clock, the progress bar, the per-interval training log and the checkpoint triggers (epoch, step and
minute intervals, and the SIGTERM agreement between ranks)."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch

from largebatch.dist import all_reduce_sum

log = logging.getLogger(__name__)


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


STOP_SIGNALS = {1: "SIGTERM", 2: "SIGINT"}
"""Stop levels of :class:`CheckpointTriggers` and the signal each stands for; the ranks agree on the
highest (an interrupt outranks a preemption), so every rank leaves with the same status."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, or SIGINT) and wrote a checkpoint at a step boundary;
    ``args``: (step, the agreed signal's name)."""


class WallClock:
    """Seconds of training: those of earlier segments (``before``) plus this one's so far."""

    def __init__(self, before: float) -> None:
        self.before, self.start = before, time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start


class Progress:
    """A live tqdm bar on rank 0's terminal; in a log file (not a TTY) the interval log says it instead."""

    def __init__(self, env, total_steps: int, initial: int) -> None:
        self.bar = None
        if env.is_main:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                leave=False,
                disable=not sys.stderr.isatty(),
            )

    @property
    def live(self) -> bool:
        return self.bar is not None and not self.bar.disable

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class IntervalLog:
    """The training loss and throughput of each ``train.log_every_steps`` interval: summed on the
    device without a host sync, reduced across ranks once per interval (the one sync of the interval)."""

    def __init__(self, env, metrics, progress: Progress, total_steps: int) -> None:
        self.env, self.metrics, self.progress, self.total_steps = env, metrics, progress, total_steps
        self.loss = torch.zeros((), device=env.device)
        self.steps, self.counted, self.t0 = 0, 0, time.perf_counter()

    def add(self, step_loss: torch.Tensor, ok: bool | torch.Tensor) -> None:
        """One step's summed micro-batch losses; a skipped step (``ok`` false) is not averaged."""
        if isinstance(ok, torch.Tensor):  # the device guard: no sync here
            self.loss += torch.where(ok, step_loss, torch.zeros_like(step_loss))
            self.counted = self.counted + ok.to(torch.int64)
        elif ok:
            self.loss += step_loss
            self.counted += 1
        self.steps += 1

    def flush(
        self, state, epoch: int, lr: float, global_batch_size: int, epoch_position: float, wall_clock, noise_values
    ) -> None:
        """Reduce, check, write the ``train`` record and the bar or log line, and start a new interval.

        Raises:
            FloatingPointError: the interval's mean loss is not finite.
        """
        loss = all_reduce_sum(self.loss.detach().clone()).item() / (max(int(self.counted), 1) * self.env.world_size)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {state.step} (epoch {epoch}, LR {lr:g}); lower "
                f"optim.base_lr or lengthen schedule.warmup_epochs"
            )
        now = time.perf_counter()
        ips = self.steps * global_batch_size / (now - self.t0)
        noise = noise_values()
        self.metrics.write(
            "train",
            step=state.step,
            epoch=epoch_position,
            lr=lr,
            loss=loss,
            images_per_s=ips,
            wall_s=wall_clock(),
            **noise,
        )
        if self.progress.live:
            self.progress.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.4g}", img_s=f"{ips:.0f}")
        else:
            log.info(
                "step %d/%d epoch %d: loss %.4f, lr %.4g, %.0f images/s",
                state.step,
                self.total_steps,
                epoch,
                loss,
                lr,
                ips,
            )
        self.loss.zero_()
        self.steps, self.counted, self.t0 = 0, 0, now


class CheckpointTriggers:
    """When the loop writes a checkpoint besides every ``train.checkpoint_every_epochs`` epochs: every
    ``train.checkpoint_every_steps`` steps, every ``train.checkpoint_every_minutes`` (rank 0's clock
    decides), and when any rank was asked to stop (SIGTERM), in which case the run then stops.

    The ranks agree after every step with one all-reduce of two ints on a gloo group of CPU tensors,
    so agreeing never waits for the GPU. On an epoch's last step the decision is left to the epoch's
    end (its checkpoint covers it): :attr:`pending_at_epoch_end` and :attr:`stop_at_epoch_end`."""

    def __init__(self, train_cfg, env, stop_requested) -> None:
        """``stop_requested()``: this rank's stop level (0: none; see :data:`STOP_SIGNALS`)."""
        self.cfg, self.env, self.stop_requested = train_cfg, env, stop_requested
        self._control = torch.distributed.new_group(backend="gloo") if env.distributed else None
        self._last_save = time.monotonic()
        self.stop = 0
        self.start_epoch()

    def start_epoch(self) -> None:
        self.pending_at_epoch_end = False
        self.stop_at_epoch_end = 0

    def saved(self) -> None:
        self._last_save = time.monotonic()

    def control_flags(self, step: int) -> tuple[int, bool]:
        """(stop level, checkpoint due) agreed by all ranks after ``step``: the highest rank's stop
        request, and rank 0's step or minute interval."""
        t = self.cfg
        due = bool(t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0)
        if self.env.is_main and t.checkpoint_every_minutes:
            due = due or time.monotonic() - self._last_save >= 60.0 * t.checkpoint_every_minutes
        if self._control is None:
            return int(self.stop_requested()), due
        flags = torch.tensor([int(self.stop_requested()), int(due)], dtype=torch.int32)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self._control)
        return int(flags[0]), bool(flags[1])

    def after_step(self, step: int, epoch_end: bool) -> bool:
        """True when a checkpoint is due now (then :attr:`stop` says whether the run stops after it)."""
        stop, due = self.control_flags(step)
        if epoch_end:
            self.stop_at_epoch_end = max(self.stop_at_epoch_end, stop)
            self.pending_at_epoch_end = bool(self.stop_at_epoch_end) or due
            return False
        self.stop = stop
        return bool(stop) or due
