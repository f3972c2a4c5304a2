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

The parts own their state (docs/architecture.md): the step position, the non-finite guard and the
BN policy, and the callbacks (``largebatch.train.callbacks``: noise scale, evaluation and stop rules,
training log; and the :class:`~largebatch.train.checkpoint_manager.CheckpointManager`) that ``fit``
calls after each step and epoch. The manager assembles a checkpoint from the ``state_dict()`` of each
part (:meth:`Trainer.checkpoint_parts`) and of each callback, and restores them on resume.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from largebatch.config import Config
from largebatch.data import build_data
from largebatch.dist import DistEnv
from largebatch.optim import build_optimizer
from largebatch.plan import Plan, Stage, resolve_stages
from largebatch.train import build
from largebatch.train.bn_policy import BNPolicy
from largebatch.train.callbacks import CallbackList, EvalCallback, LogCallback, NoiseScaleCallback, StepEnd
from largebatch.train.checkpoint_manager import CheckpointManager, Preempted, ProcessRNG
from largebatch.train.evaluation import Evaluator, evaluate  # noqa: F401  (evaluate: re-exported)
from largebatch.train.guard import NonFiniteGradient, NonFiniteGuard  # noqa: F401  (re-exported)
from largebatch.train.metrics import MetricsLogger
from largebatch.train.noise_scale import MicroBatchNorms, NoiseScaleMonitor
from largebatch.train.position import StepPosition
from largebatch.train.precision import PrecisionChoice, choose_precision
from largebatch.train.state import TrainState, WallClock

__all__ = ["NonFiniteGradient", "Preempted", "TrainState", "Trainer", "evaluate"]

log = logging.getLogger(__name__)


class Trainer:
    """Builds data, model, optimizer and schedule for one process and runs the epochs."""

    def __init__(
        self,
        cfg: Config,
        plan: Plan,
        env: DistEnv,
        run_dir: Path,
        precision: PrecisionChoice | None = None,
        stages: list[Stage] | None = None,
    ) -> None:
        self.cfg, self.plan, self.env, self.run_dir = cfg, plan, env, Path(run_dir)
        t = cfg.train
        self.precision = precision or choose_precision(t.precision, env.device)
        self.autocast_dtype = self.precision.autocast_dtype
        t0 = time.perf_counter()
        self.data = build_data(cfg, device=env.device)
        self.build_times = {"data_load_s": time.perf_counter() - t0}
        self.stages: list[Stage] = stages or resolve_stages(cfg, env.world_size)
        self.stage = self.stages[0]
        self._build_model()
        build.check_batches_fit(self.data.num_train, self.stages, env, t.seed)
        self._build_step()
        self.state = TrainState()
        self.stop_requested = 0  # a stop level of checkpoint_manager.STOP_SIGNALS, set by run_worker's signal handler
        self.metrics = MetricsLogger(self.run_dir, enabled=env.is_main)
        self._build_callbacks()
        self._last_step_ok: bool | torch.Tensor = True
        self._micro_batch_norms = None  # this step's MicroBatchNorms.finish(), for the callbacks
        build.log_setup(cfg, plan, self.precision, self.position)

    def _build_model(self) -> None:
        """The model, its DDP wrapper and comm hook, and the noise-scale measurement."""
        cfg, plan, env, t = self.cfg, self.plan, self.env, self.cfg.train
        self.model, self.channels_last = build.build_run_model(cfg, plan, env, self.data)
        self.ddp = build.wrap_ddp(self.model, cfg, env)
        self.noise_monitor = NoiseScaleMonitor(t.noise_scale_decay, env.device, env.world_size)
        self.noise = self.noise_monitor.estimator
        micro_noise = t.noise_scale and t.noise_scale_small_batch == "micro_batch"
        if env.distributed:
            self.noise_monitor.hook = build.register_comm_hook(
                self.ddp, cfg, plan, env, noise_scale=t.noise_scale and not micro_noise
            )
        if micro_noise:
            self.noise_monitor.micro = MicroBatchNorms()
        if t.compile:
            self.ddp.compile()  # in place: parameters, buffers and state_dict keys unchanged

    def _build_step(self) -> None:
        """The step position and sampler, the optimizer, the fp16 scaler, the non-finite guard and the BN policy."""
        cfg, env, t = self.cfg, self.env, self.cfg.train
        self.position = StepPosition(cfg, self.stages, self.data.num_train)
        self.lr_at, self.epoch_position = self.position.lr_at, self.position.epoch_position  # step -> LR, epoch
        self.sampler = self.position.sampler(self.stage, env)
        # The trainer guards every step itself (host check, device guard or the fp16 scaler), so the
        # optimizers' own check and its host sync are off: one guard, one count of skipped steps.
        self.optimizer = build_optimizer(
            self.model, cfg.optim, lr=self.lr_at(0), steps_per_epoch=self.position.steps_per_epoch, skip_nonfinite=False
        )
        # fp16 adds dynamic loss scaling: GradScaler.step unscales the all-reduced gradients before the
        # optimizer (so trust ratios see true norms) and skips a step whose gradient is not finite.
        self.scaler = torch.amp.GradScaler(env.device.type) if self.precision.precision == "fp16" else None
        self.guard = NonFiniteGuard(self.model, self.optimizer, t, env.device, self.scaler, self.lr_at)
        self.bn = BNPolicy(
            self.model,
            self.data,
            t,
            self.plan,
            env,
            channels_last=self.channels_last,
            autocast_dtype=self.autocast_dtype,
        )

    def _build_callbacks(self) -> None:
        """The evaluator and the callbacks fit calls, the checkpoint manager among them, with the
        checkpoint's parts (a new part that keeps state goes into ``parts`` here)."""
        env, t = self.env, self.cfg.train
        self.evaluator = Evaluator(
            self.model,
            self.data,
            env,
            t,
            self.metrics,
            self.position,
            channels_last=self.channels_last,
            autocast_dtype=self.autocast_dtype,
            prepare=self._before_eval,
        )
        self.callbacks = CallbackList()
        parts = {"model": self.model, "optimizer": self.optimizer, "train_state": self.state, "rng": ProcessRNG(env)}
        self.checkpoints = CheckpointManager(
            self.cfg,
            env,
            self.run_dir,
            self.precision,
            self.position,
            self.state,
            {**parts, "scaler": self.scaler} if self.scaler else parts,
            self.callbacks,
            prepare=self._before_checkpoint,
            stop_requested=lambda: self.stop_requested,
        )
        self.callbacks.extend(
            [
                NoiseScaleCallback(self.noise_monitor),
                EvalCallback(self.evaluator, t),
                self.checkpoints,
                LogCallback(t, self.noise_monitor.values),
            ]
        )

    # ------------------------------------------------------------------ position (delegated)
    device_guard = property(lambda self: self.guard.on_device)
    epoch_steps = property(lambda self: self.position.epoch_steps)
    total_steps = property(lambda self: self.position.total_steps)

    def _enter_stage(self, stage: Stage) -> None:
        """Switch the per-process batch, accumulation and BN groups to ``stage`` (same process group)."""
        self.stage, self.plan = stage, stage.plan
        self.sampler = self.position.sampler(stage, self.env)
        self.bn.set_stage(stage.plan)
        log.info("batch stage %d from epoch %d: %s", stage.index, stage.start_epoch, stage.plan.describe())

    # ------------------------------------------------------------------ checkpoints (the manager's)
    def checkpoint_parts(self) -> dict:
        """{checkpoint key: the part whose ``state_dict()`` it holds}, in the order they are restored."""
        return dict(self.checkpoints.parts)

    def checkpoint_payload(self) -> dict:
        """What a checkpoint of now holds (:meth:`CheckpointManager.payload`). Collective."""
        return self.checkpoints.payload()

    def save(self) -> None:
        """Write a checkpoint of the current step (:meth:`CheckpointManager.save`). Collective."""
        self.checkpoints.save()

    def load(self, path: Path, ckpt: dict | None = None) -> None:
        """Resume from the checkpoint ``path`` (``ckpt``: already loaded): :meth:`CheckpointManager.load`.

        Raises: ConfigError (another config's checkpoint, or a part whose tensors do not fit: one line),
        CheckpointError (truncated, corrupt, pickled, non-finite weights).
        """
        self.checkpoints.load(path, ckpt, plan=self.plan)

    def _before_checkpoint(self) -> None:
        """Before a checkpoint: pending non-finite skips settled, every rank's BN statistics made the
        checkpointed ones."""
        self.guard.settle(self.state)
        self.bn.before_checkpoint()

    # ------------------------------------------------------------------ one step
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _before_eval(self) -> None:
        """Before any evaluation: pending non-finite skips settled, then the BN statistics the
        evaluation uses (precise BN recomputed, or the workers' statistics averaged)."""
        self.guard.settle(self.state)
        self.bn.before_eval(self.state.epoch, self.sampler.steps_per_epoch)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over this rank's share of the global batch, without a host sync; returns
        the summed (unreduced, on-device) micro-batch losses and the squared fp16 loss scale the
        gradients carried (None without loss scaling or noise-scale hook)."""
        accum = self.plan.accumulation_steps
        loss_sum = torch.zeros((), device=self.env.device)
        self.bn.begin_step()
        self.guard.begin_step()  # a skipped step leaves the BN running statistics as they were
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        micro = self.noise_monitor.micro
        for i, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum))):
            ctx = self.ddp.no_sync() if (self.env.distributed and i < accum - 1) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(
                    self.env.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
                ):
                    loss = F.cross_entropy(self.ddp(x), y, label_smoothing=self.cfg.train.label_smoothing) / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            if micro is not None and i < accum - 1:
                micro.after_micro_batch(self.model.parameters(), accum)
            loss_sum += loss.detach().float()
        self._micro_batch_norms = micro.finish(self.model.parameters()) if micro is not None else None
        # The noise-scale norms were taken of gradients carrying the fp16 loss scale (update() changes it in place).
        grad_scale_sq = None
        if self.scaler and self.noise_monitor.measuring and self.scaler.is_enabled():
            grad_scale_sq = self.scaler._get_scale_async().detach().square()  # a new tensor
        self._last_step_ok = self.guard.step(self.state)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, grad_scale_sq

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        """Train from ``state`` to the last epoch or a stop rule: the steps, then the callbacks.

        Raises: Preempted (SIGTERM: checkpoint written), NonFiniteGradient, FloatingPointError."""
        st = self.state
        self.fit_started_unix_s = time.time()
        self.clock = WallClock(st.train_wall_s)
        self.callbacks.call("on_fit_start", self)
        try:
            while not self.finished():
                if self._run_epoch():  # stopped inside it: the run's last evaluation and checkpoint
                    self.callbacks.call("on_stop_in_epoch", self)
                    break
                st.epoch += 1
                self.callbacks.call("on_epoch_end", self)
        finally:
            self.callbacks.call("on_fit_end", self)
            self.metrics.close()
        st.train_wall_s = self.clock()
        return st

    def finished(self) -> bool:
        """All epochs done, or a stop rule (validation target, image budget) ended the run."""
        st = self.state
        return st.epoch >= self.cfg.train.epochs or st.stopped_at_target or st.stopped_at_budget

    def _run_epoch(self) -> bool:
        """The steps of the current epoch; True if a callback stopped the run inside it."""
        st, epoch = self.state, self.state.epoch
        stage = self.position.stage_of(epoch)
        if stage.index != self.stage.index:
            self._enter_stage(stage)
        self.sampler.set_epoch(epoch, self.position.step_in_epoch(st.step, epoch))
        self.callbacks.call("on_epoch_start", self)
        for images, labels in self.data.train_batches(self.sampler, seed=self.cfg.train.seed):
            lr = self.lr_at(st.step)
            self._set_lr(lr)
            if self.position.batch_schedule and hasattr(self.optimizer, "epoch_position"):
                self.optimizer.epoch_position = self.epoch_position(st.step)  # RMSpropWarmup's alpha_SGD
            t0 = time.perf_counter()
            loss, grad_scale_sq = self._train_step(images, labels)
            st.step_time_s += time.perf_counter() - t0
            st.step, st.images_seen = st.step + 1, st.images_seen + self.plan.global_batch_size
            end = StepEnd(
                loss,
                self._last_step_ok,
                lr,
                epoch,
                self.position.is_epoch_end(st.step, epoch),
                grad_scale_sq,
                self._micro_batch_norms,
            )
            if self.callbacks.step_end(self, end):
                return True
        return False

    def save_now(self) -> None:
        """A checkpoint of the current step, with the wall clock so far (the checkpoint manager calls it)."""
        self.state.train_wall_s = self.clock()
        self.save()
