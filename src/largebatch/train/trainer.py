"""The training loop: Goyal et al. 2017 large-minibatch synchronous SGD, data-parallel.

One optimizer step on W processes:

1. each process takes its B / W samples of the global batch (``GlobalBatchSampler``) and splits them
   into ``accumulation_steps`` micro-batches; each micro-batch is normalized in BN groups of
   ``bn_batch_size`` samples (``GhostBatchNorm2d``);
2. the loss of a micro-batch is the mean cross-entropy over its samples divided by the number of
   micro-batches; DDP averages gradients over the W processes, so the aggregated gradient is
   (1 / B) * sum over the global batch, the normalization of Remark 3 (by kn, not n);
3. the LR of the step comes from the schedule (a pure function of the step), weight decay is added
   to the aggregated gradient once (eq. 8), and ``torch.optim.SGD`` applies Nesterov momentum
   (form 9: no momentum correction needed).

Equivalence (tested): the update equals that of k = B / bn_batch_size separate workers of n samples
each, for any number of processes W, because the global batch, its BN groups and its augmentation
depend only on (seed, epoch, step). Floating-point sums are ordered differently for different W,
so results agree to rounding, and bitwise for the same W.

The parts own their state (docs/architecture.md): position, guard, BN policy, evaluator, interval
log and checkpoint triggers, each in its own module of ``largebatch.train``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from largebatch.config import Config, config_hash, to_dict
from largebatch.data import GlobalBatchSampler, build_data
from largebatch.dist import DistEnv, barrier
from largebatch.optim import build_optimizer
from largebatch.plan import Plan, Stage, resolve_stages
from largebatch.train import build
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.bn_policy import BNPolicy
from largebatch.train.evaluation import Evaluator, evaluate  # noqa: F401  (evaluate: re-exported)
from largebatch.train.guard import NonFiniteGradient, NonFiniteGuard  # noqa: F401  (re-exported)
from largebatch.train.loop import CheckpointTriggers, IntervalLog, Preempted, Progress, TrainState, WallClock
from largebatch.train.metrics import MetricsLogger
from largebatch.train.noise_scale import NoiseScaleMonitor
from largebatch.train.position import StepPosition
from largebatch.train.precision import PrecisionChoice, choose_precision

__all__ = ["NonFiniteGradient", "Preempted", "TrainState", "Trainer", "evaluate"]

log = logging.getLogger(__name__)


class Trainer:
    """Builds data, model, optimizer and schedule for one process and runs the epochs."""

    def __init__(self, cfg: Config, plan: Plan, env: DistEnv, run_dir: Path,
                 precision: PrecisionChoice | None = None, stages: list[Stage] | None = None) -> None:
        self.cfg, self.plan, self.env, self.run_dir = cfg, plan, env, Path(run_dir)
        t = cfg.train
        self.precision = precision or choose_precision(t.precision, env.device)
        self.autocast_dtype = self.precision.autocast_dtype
        t0 = time.perf_counter()
        self.data = build_data(cfg, device=env.device)
        self.build_times = {"data_load_s": time.perf_counter() - t0}
        self.stages: list[Stage] = stages or resolve_stages(cfg, env.world_size)
        self.stage = self.stages[0]
        self.model, self.channels_last = build.build_run_model(cfg, plan, env, self.data)
        self.ddp = build.wrap_ddp(self.model, cfg, env)
        self.noise_monitor = NoiseScaleMonitor(t.noise_scale_decay, env.device, env.world_size)
        self.noise = self.noise_monitor.estimator
        if env.distributed:
            self.noise_monitor.hook = build.register_comm_hook(self.ddp, cfg, plan, env)
        build.check_batches_fit(self.data.num_train, self.stages, env, t.seed)
        self.position = StepPosition(cfg, self.stages, self.data.num_train)
        self.lr_at, self.epoch_position = self.position.lr_at, self.position.epoch_position  # step -> LR, epoch
        self.sampler = self._make_sampler(self.stage)
        # The trainer guards every step itself (host check, device guard or the fp16 scaler), so the
        # optimizers' own check and its host sync are off: one guard, one count of skipped steps.
        self.optimizer = build_optimizer(self.model, cfg.optim, lr=self.lr_at(0),
                                         steps_per_epoch=self.position.steps_per_epoch, skip_nonfinite=False)
        # fp16 adds dynamic loss scaling: GradScaler.step unscales the all-reduced gradients before the
        # optimizer (so trust ratios see true norms) and skips a step whose gradient is not finite.
        self.scaler = torch.amp.GradScaler(env.device.type) if self.precision.precision == "fp16" else None
        self.guard = NonFiniteGuard(self.model, self.optimizer, t, env.device, self.scaler, self.lr_at)
        self.bn = BNPolicy(self.model, self.data, t, plan, env, channels_last=self.channels_last,
                           autocast_dtype=self.autocast_dtype)
        self.state = TrainState()
        self.stop_requested = False  # set by the SIGTERM handler of run_worker
        self.triggers = CheckpointTriggers(t, env, lambda: self.stop_requested)
        self.metrics = MetricsLogger(self.run_dir, enabled=env.is_main)
        self.evaluator = Evaluator(self.model, self.data, env, t, self.metrics, self.position,
                                   channels_last=self.channels_last, autocast_dtype=self.autocast_dtype,
                                   prepare=self._before_eval)
        self._last_step_ok: bool | torch.Tensor = True
        build.log_setup(cfg, plan, self.precision, self.position)

    # ------------------------------------------------------------------ position (delegated)
    device_guard = property(lambda self: self.guard.on_device)
    epoch_steps = property(lambda self: self.position.epoch_steps)
    epoch_start = property(lambda self: self.position.epoch_start)
    total_steps = property(lambda self: self.position.total_steps)
    steps_per_epoch = property(lambda self: self.position.steps_per_epoch)
    schedule = property(lambda self: self.position.schedule)

    def _make_sampler(self, stage: Stage) -> GlobalBatchSampler:
        # The shuffle of an epoch depends on (seed, epoch) only, so a stage change keeps one
        # permutation per epoch; only how it is cut into global batches changes.
        return GlobalBatchSampler(self.data.num_train, stage.plan.global_batch_size, world_size=self.env.world_size,
                                  rank=self.env.rank, seed=self.cfg.train.seed)

    def _enter_stage(self, stage: Stage) -> None:
        """Switch the per-process batch, accumulation and BN groups to ``stage`` (same process group)."""
        self.stage, self.plan = stage, stage.plan
        self.sampler = self._make_sampler(stage)
        self.bn.set_stage(stage.plan)
        log.info("batch stage %d from epoch %d: %s", stage.index, stage.start_epoch, stage.plan.describe())
        self.metrics.write("stage", step=self.state.step, epoch=self.epoch_position(self.state.step),
                           stage=stage.index, global_batch_size=stage.plan.global_batch_size,
                           accumulation_steps=stage.plan.accumulation_steps, bn_batch_size=stage.plan.bn_batch_size,
                           peak_lr=stage.plan.peak_lr)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict:
        rng = torch.get_rng_state()
        states = [None] * self.env.world_size if self.env.distributed else [rng]
        if self.env.distributed:
            torch.distributed.all_gather_object(states, rng)
        st = self.state
        return {
            "config": to_dict(self.cfg), "config_hash": config_hash(self.cfg),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None, "train_state": asdict(st),
            "sampler": {"seed": self.sampler.seed, "epoch": st.epoch,
                        "step_in_epoch": self.position.step_in_epoch(st.step, st.epoch),
                        "stage": self.stage.index, "global_batch_size": self.plan.global_batch_size},
            "world_size": self.env.world_size, "rng": states, "noise_scale": self.noise_monitor.state(),
            "precision": self.precision.precision,
        }

    def save(self) -> None:
        t0 = time.perf_counter()
        self.guard.settle(self.state)
        self.triggers.saved()
        self.bn.before_checkpoint()  # every rank's BN statistics become the checkpointed ones
        payload = self.checkpoint_payload()
        if self.env.is_main:
            ckpt_io.save_checkpoint(self.run_dir, self.state.step, payload, keep=self.cfg.train.keep_checkpoints)
        barrier()
        self.state.checkpoint_s += time.perf_counter() - t0

    def load(self, path: Path, ckpt: dict | None = None) -> None:
        """Restore model, optimizer, counters and RNG from a checkpoint (``ckpt``: already loaded). On
        another number of processes the global batch, LR position and sample order stay the
        checkpoint's (they depend on the config and the step only); per-rank RNG states are restored
        only on the same number (training draws nothing from them).

        Raises: ConfigError (another config's checkpoint), CheckpointError (truncated, corrupt, pickled).
        """
        ckpt = ckpt if ckpt is not None else ckpt_io.load_checkpoint(path)
        build.check_resumable(self.cfg, ckpt, path, self.precision)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        if ckpt.get("noise_scale"):
            self.noise.load_state_dict(ckpt["noise_scale"])
        if ckpt["world_size"] == self.env.world_size:
            torch.set_rng_state(ckpt["rng"][self.env.rank])
        else:
            log.info("checkpoint written by %d processes, resuming on %d: same global batch %d, now %s",
                     ckpt["world_size"], self.env.world_size, self.plan.global_batch_size, self.plan.describe())
        log.info("resumed from %s at step %d (epoch %d)", path, self.state.step, self.state.epoch)

    # ------------------------------------------------------------------ one step
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _before_eval(self) -> None:
        """Before any evaluation: pending non-finite skips settled, then the BN statistics the
        evaluation uses (precise BN recomputed, or the workers' statistics averaged)."""
        self.guard.settle(self.state)
        self.bn.before_eval(self.state.epoch, self.sampler.steps_per_epoch)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step over this rank's share of the global batch; returns the summed
        (unreduced, on-device) micro-batch losses, without a host sync."""
        accum = self.plan.accumulation_steps
        loss_sum = torch.zeros((), device=self.env.device)
        self.bn.begin_step()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for i, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum))):
            ctx = self.ddp.no_sync() if (self.env.distributed and i < accum - 1) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(self.env.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    loss = F.cross_entropy(self.ddp(x), y, label_smoothing=self.cfg.train.label_smoothing) / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach().float()
        grad_scale_sq = None  # the hook measured gradients carrying the fp16 loss scale (update() changes it in place)
        if self.scaler and self.noise_monitor.hook is not None and self.scaler.is_enabled():
            grad_scale_sq = self.scaler._get_scale_async().detach().square()  # a new tensor
        self._last_step_ok = self.guard.step(self.state)
        self.optimizer.zero_grad(set_to_none=True)
        self.noise_monitor.after_step(self.plan, grad_scale_sq)
        return loss_sum

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        t, st = self.cfg.train, self.state
        progress = Progress(self.env, self.total_steps, st.step)
        self.fit_started_unix_s = time.time()
        self.clock = WallClock(st.train_wall_s)
        try:
            while st.epoch < t.epochs and not (st.stopped_at_target or st.stopped_at_budget):
                if self._run_epoch(progress):  # stopped mid-epoch: the run's final evaluation and checkpoint
                    self.evaluator.full(st, wall_clock=self.clock)
                    self._save_now()
                    break
                self._end_epoch()
        finally:
            progress.close()
            self.metrics.close()
        st.train_wall_s = self.clock()
        return st

    def _save_now(self) -> None:
        self.state.train_wall_s = self.clock()
        self.save()

    def _run_epoch(self, progress: Progress) -> bool:
        """The steps of the current epoch; True if the run stopped inside it (validation target or
        image budget)."""
        t, st, epoch = self.cfg.train, self.state, self.state.epoch
        stage = self.position.stage_of(epoch)
        if stage.index != self.stage.index:
            self._enter_stage(stage)
        self.sampler.set_epoch(epoch, self.position.step_in_epoch(st.step, epoch))
        interval = IntervalLog(self.env, self.metrics, progress, self.total_steps)
        self.triggers.start_epoch()
        gbs = self.plan.global_batch_size
        for images, labels in self.data.train_batches(self.sampler, seed=t.seed):
            lr = self.lr_at(st.step)
            self._set_lr(lr)
            if self.position.batch_schedule and hasattr(self.optimizer, "epoch_position"):
                self.optimizer.epoch_position = self.epoch_position(st.step)  # RMSpropWarmup's alpha_SGD
            t0 = time.perf_counter()
            step_loss = self._train_step(images, labels)
            interval.add(step_loss, self._last_step_ok)  # a skipped step's loss is NaN or Inf: not averaged
            st.step_time_s += time.perf_counter() - t0
            st.step, st.images_seen = st.step + 1, st.images_seen + gbs
            progress.update()
            epoch_end = self.position.is_epoch_end(st.step, epoch)
            if self.triggers.after_step(st.step, epoch_end):
                self._save_now()
                if self.triggers.stop:
                    raise self._preempted()
            will_eval = epoch_end and ((epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs)
            if t.val_every_steps and st.step % t.val_every_steps == 0 and not will_eval \
                    and self.evaluator.validation(st, wall_clock=self.clock):
                st.stopped_at_target = True
                return True
            if t.stop_after_images and st.images_seen >= t.stop_after_images and not epoch_end:
                st.stopped_at_budget = True
                return True
            if st.step % t.log_every_steps == 0 or epoch_end:
                self.guard.settle(st)
                interval.flush(st, epoch, lr, gbs, self.epoch_position(st.step), self.clock, self.noise_monitor.values)
        return False

    def _end_epoch(self) -> None:
        """Evaluation, stop rules and checkpoint at the end of an epoch."""
        t, st = self.cfg.train, self.state
        st.epoch += 1
        last = st.epoch == t.epochs
        evaluated = last or st.epoch % t.eval_every_epochs == 0
        if evaluated:
            self.evaluator.full(st, wall_clock=self.clock)
            if self.evaluator.reached_val_stop(st) and not last:
                st.stopped_at_target = last = True
                log.info("stopping at the validation target (train.stop_at_val_top1=%g)", t.stop_at_val_top1)
        if t.stop_after_images and st.images_seen >= t.stop_after_images and not last:
            st.stopped_at_budget = last = True
            if not evaluated:
                self.evaluator.full(st, wall_clock=self.clock)
        if last or st.epoch % t.checkpoint_every_epochs == 0 or self.triggers.pending_at_epoch_end:
            self._save_now()
        if self.triggers.stop_at_epoch_end and not last:
            raise self._preempted()

    def _preempted(self) -> Preempted:
        log.warning("stop requested (SIGTERM): checkpoint written at step %d; continue with --resume auto",
                    self.state.step)
        return Preempted(self.state.step)
