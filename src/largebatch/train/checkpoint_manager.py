"""Checkpointing of a run, in one place (after torchtitan's ``CheckpointManager``): when a checkpoint
is written (the triggers), what it holds (the parts), writing it, loading it on resume (after the
resumability check) and how many are kept (``train.keep_checkpoints``).

* **Triggers** (:class:`CheckpointTriggers`, driven by the manager's callback hooks): every
  ``train.checkpoint_every_epochs`` epochs, every ``train.checkpoint_every_steps`` steps, every
  ``train.checkpoint_every_minutes`` minutes, when any rank was asked to stop (SIGTERM or SIGINT:
  the run then stops with :class:`Preempted`), and at the end of the run (its last epoch, or a stop
  rule inside an epoch).
* **Parts**: a header (the config and its hash, the number of processes, the precision, the sampler
  position), then the ``state_dict()`` of every part the trainer registers (``model``,
  ``optimizer``, ``train_state``, ``rng``, ``scaler`` under fp16) and of every callback, under its
  ``name``. :meth:`CheckpointManager.load` hands each its entry back.
* **Files**: :mod:`largebatch.train.checkpoint` writes and verifies them (format 3: an archive and
  its ``.sha256``) and deletes the oldest beyond ``keep`` (never the newest with finite weights);
  the on-disk format does not depend on this module.

The manager is itself the callback named ``checkpointing`` (its entry in every checkpoint is empty,
as it always was): the triggers restart from the resumed step and keep nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from largebatch.config import Config, ConfigError, config_hash, config_mismatch, to_dict
from largebatch.dist import DistEnv, barrier
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.callbacks import Callback, CallbackList, StepEnd, TrainingLoop
from largebatch.train.position import StepPosition
from largebatch.train.precision import PrecisionChoice
from largebatch.train.state import TrainState

log = logging.getLogger(__name__)

STOP_SIGNALS = {1: "SIGTERM", 2: "SIGINT"}
"""Stop levels of :class:`CheckpointTriggers` and the signal each stands for; the ranks agree on the
highest (an interrupt outranks a preemption), so every rank leaves with the same status."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, or SIGINT) and wrote a checkpoint at a step boundary;
    ``args``: (step, the agreed signal's name)."""


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
        """Nothing pending for the new epoch's end."""
        self.pending_at_epoch_end = False
        self.stop_at_epoch_end = 0

    def saved(self) -> None:
        """A checkpoint was written now: the minute interval starts again."""
        self._last_save = time.monotonic()

    def control_flags(self, step: int) -> tuple[int, bool]:
        """(stop level, checkpoint due) agreed by all ranks after ``step``: the highest rank's stop
        request, and rank 0's step or minute interval. Collective on several processes."""
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


class ProcessRNG:
    """The torch RNG state of every rank, as a checkpoint part: ``state_dict()`` gathers the ranks'
    states (collective on several processes), ``load_state_dict`` restores this rank's only when the
    checkpoint has one per rank of this run (on another number of processes training draws nothing
    from them: sample order and augmentation depend on (seed, epoch, step) only)."""

    def __init__(self, env) -> None:
        self.env = env

    def state_dict(self) -> list[torch.Tensor]:
        rng = torch.get_rng_state()
        if not self.env.distributed:
            return [rng]
        states = [None] * self.env.world_size
        torch.distributed.all_gather_object(states, rng)
        return states

    def load_state_dict(self, states: list[torch.Tensor]) -> None:
        if len(states) == self.env.world_size:
            torch.set_rng_state(states[self.env.rank])


def refuse_other_config(cfg: Config, checkpoint_config: dict, path) -> None:
    """Refuse to resume a checkpoint written with another config. Compared key by key after migrating
    the checkpoint's config (the stored hash is that of the config's layout when it was written, so an
    older checkpoint of the same run still resumes); operational keys may differ.

    Raises:
        ConfigError: naming every key that differs.
    """
    mismatch = config_mismatch(cfg, checkpoint_config, path)
    if mismatch:
        raise ConfigError(mismatch)


def check_resumable(cfg: Config, ckpt: dict, path, precision) -> None:
    """Refuse a checkpoint written with another config; warn when its precision differs (the run goes
    on, not bitwise equal to an uninterrupted one).

    Raises:
        ConfigError: naming every key that differs.
    """
    refuse_other_config(cfg, ckpt["config"], path)
    if ckpt.get("precision", precision.precision) != precision.precision:
        log.warning(
            "checkpoint %s was trained in %s, this segment runs in %s (%s): the run goes on, but is not "
            "bitwise an uninterrupted one; set train.precision=%s to keep it",
            path,
            ckpt["precision"],
            precision.precision,
            precision.reason,
            ckpt["precision"],
        )


def kept_checkpoint_note(run_dir: Path) -> str:
    """What a run stopped by a non-finite gradient kept, read from the disk: its newest usable
    checkpoint (finite weights), or that there is none."""
    usable = ckpt_io.newest_usable_checkpoint(run_dir)
    return (
        f"the newest usable checkpoint (finite weights) is {usable}; --resume auto continues from it"
        if usable
        else "no usable checkpoint (with finite weights) exists"
    )


class CheckpointManager(Callback):
    """The run's checkpoints: triggers, parts, save, load and rotation (module docstring).

    ``parts``: {checkpoint key: the object whose ``state_dict()`` it holds}, in the order they are
    restored (the trainer's: ``model``, ``optimizer``, ``train_state``, ``rng`` (:class:`ProcessRNG`),
    ``scaler`` under fp16). ``callbacks``: the trainer's list (this manager included), whose states follow the
    parts. ``prepare()`` runs on every rank before the parts are gathered (pending non-finite skips
    settled, BN statistics synchronized). ``stop_requested()``: this rank's stop level.
    """

    name = "checkpointing"

    def __init__(
        self,
        cfg: Config,
        env: DistEnv,
        run_dir: Path,
        precision: PrecisionChoice,
        position: StepPosition,
        state: TrainState,
        parts: dict,
        callbacks: CallbackList,
        *,
        prepare: Callable[[], None],
        stop_requested: Callable[[], int],
    ) -> None:
        self.cfg, self.env, self.run_dir, self.precision = cfg, env, Path(run_dir), precision
        self.position, self.state, self.callbacks, self.prepare = position, state, callbacks, prepare
        self.parts = parts
        self.keep = cfg.train.keep_checkpoints
        self.triggers = CheckpointTriggers(cfg.train, env, stop_requested)

    # ------------------------------------------------------------------ the triggers (callback hooks)
    def on_epoch_start(self, loop: TrainingLoop) -> None:
        """Forget what the previous epoch's last step left pending (its end has handled it)."""
        self.triggers.start_epoch()

    def on_step_end(self, loop: TrainingLoop, step: StepEnd) -> bool:
        """The step and minute intervals and the agreed stop (which raises :class:`Preempted`)."""
        if self.triggers.after_step(loop.state.step, step.epoch_end):
            loop.save_now()
            if self.triggers.stop:
                raise self.preempted(self.triggers.stop)
        return False

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        """The epoch interval, the run's end, and what the epoch's last step left pending."""
        last = loop.finished()
        if last or loop.state.epoch % self.cfg.train.checkpoint_every_epochs == 0 or self.triggers.pending_at_epoch_end:
            loop.save_now()
        if self.triggers.stop_at_epoch_end and not last:
            raise self.preempted(self.triggers.stop_at_epoch_end)

    def on_stop_in_epoch(self, loop: TrainingLoop) -> None:
        """A stop rule ended the run inside an epoch: its last checkpoint."""
        loop.save_now()

    def preempted(self, level: int = 1) -> Preempted:
        """The stop the ranks agreed on (``level``: :data:`STOP_SIGNALS`), after its checkpoint."""
        name = STOP_SIGNALS.get(level, "SIGTERM")
        log.warning(
            "stop requested (%s): checkpoint written at step %d; continue with --resume auto", name, self.state.step
        )
        return Preempted(self.state.step, name)

    # ------------------------------------------------------------------ the parts, save and rotation
    def payload(self) -> dict:
        """The header (config, world size, precision, sample position) and every part's and
        callback's ``state_dict()``. Collective: every rank calls it."""
        st = self.state
        header = {
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "world_size": self.env.world_size,
            "precision": self.precision.precision,
            "scaler": None,
            "sampler": self.position.sampler_record(st.step, st.epoch),
        }
        parts = {name: part.state_dict() for name, part in self.parts.items()}
        return {**header, **parts, **self.callbacks.state_dict()}

    def save(self) -> None:
        """Write the checkpoint of the current step (rank 0 writes ``checkpoints/ckpt_step<step>.pt``
        and deletes the oldest beyond ``train.keep_checkpoints``); adds the seconds spent to
        ``state.checkpoint_s``. Collective: every rank calls it.

        Raises:
            CheckpointError: a directory has the checkpoint's name (rank 0).
            OSError: the file cannot be written (rank 0).
        """
        t0 = time.perf_counter()
        self.triggers.saved()
        self.prepare()  # every rank's BN statistics become the checkpointed ones
        payload = self.payload()
        if self.env.is_main:
            ckpt_io.save_checkpoint(self.run_dir, self.state.step, payload, keep=self.keep)
        barrier()
        self.state.checkpoint_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ load and resume
    def load(self, path: Path, ckpt: dict | None = None, *, plan) -> None:
        """Restore every part and callback from the checkpoint ``path`` (``ckpt``: already loaded and
        verified). On another number of processes the global batch, LR position and sample order stay
        the checkpoint's (they depend on the config and the step only); per-rank RNG states are
        restored only on the same number (training draws nothing from them). ``plan``: the run's
        current plan, for the log line.

        Raises:
            ConfigError: another config's checkpoint, or a part whose tensors do not fit (one line).
            CheckpointError: truncated, corrupt, pickled, non-finite weights.
        """
        ckpt = ckpt if ckpt is not None else ckpt_io.load_checkpoint(path)
        check_resumable(self.cfg, ckpt, path, self.precision)
        for name, part in self.parts.items():
            if ckpt.get(name) is not None:
                _restore(name, part, ckpt[name], path)
        self.callbacks.load_state_dict(ckpt)
        if ckpt["world_size"] != self.env.world_size:
            log.info(
                "checkpoint written by %d processes, resuming on %d: same global batch %d, now %s",
                ckpt["world_size"],
                self.env.world_size,
                plan.global_batch_size,
                plan.describe(),
            )
        log.info("resumed from %s at step %d (epoch %d)", path, self.state.step, self.state.epoch)


def _restore(name: str, part, state, path: Path) -> None:
    """``part.load_state_dict(state)`` (the model's tensors checked first).

    Raises:
        ConfigError: the state does not fit ``part`` (one line naming ``path`` and ``name``).
    """
    try:
        if name == "model":
            ckpt_io.load_model_state(part, state, path)
        else:
            part.load_state_dict(state)
    except ckpt_io.CheckpointError as err:
        raise ConfigError(str(err)) from None
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: its {name!r} state does not fit this run ({first})") from None
