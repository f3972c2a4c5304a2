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
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from largebatch.config import Config, ConfigError, Plan, Stage, config_hash, config_mismatch, resolve_stages, to_dict
from largebatch.data import GlobalBatchSampler, build_data, derive_seed
from largebatch.dist import DistEnv, all_reduce_sum, barrier, consecutive_groups
from largebatch.dist.hooks import HookState, make_comm_hook
from largebatch.dist.topology import build_groups, make_topology
from largebatch.nn import (
    average_bn_statistics,
    build_model,
    channels_last_unsafe_convs,
    configure_bn,
    recompute_bn_statistics,
    set_bn_batch_size,
    start_bn_step,
)
from largebatch.optim import build_optimizer
from largebatch.optim._common import Settings
from largebatch.schedules import build_schedule
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.metrics import MetricsLogger
from largebatch.train.precision import PrecisionChoice, choose_precision

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


class Preempted(Exception):
    """The run was asked to stop (SIGTERM) and wrote a checkpoint at a step boundary."""


class NonFiniteGradient(FloatingPointError):
    """A gradient held a NaN or Inf and the policy (or the number of skips) says stop."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


@torch.no_grad()
def evaluate(model: nn.Module, data, env: DistEnv, *, channels_last: bool, batch_size: int,
             split: str = "test", autocast_dtype: torch.dtype | None = None) -> dict:
    """Top-1 (and top-5 when there are more than 10 classes) and mean loss on the ``test`` split (or
    the held-out ``val`` split); every sample is counted exactly once across ranks (sums
    all-reduced). ``autocast_dtype``: the forward pass in that autocast (the run's precision); the
    loss and the counts are summed in fp64."""
    model.eval()
    topk = (1, 5) if data.num_classes > 10 else (1,)
    sums = torch.zeros(2 + len(topk), dtype=torch.float64, device=env.device)  # loss, count, correct@k
    batches = data.eval_batches(world_size=env.world_size, rank=env.rank, batch_size=batch_size, split=split)
    for images, labels in batches:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(env.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images).float()
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += labels.numel()
        pred = logits.topk(max(topk), dim=1).indices
        hits = pred == labels[:, None]
        for i, k in enumerate(topk):
            sums[2 + i] += hits[:, :k].any(dim=1).sum()
    all_reduce_sum(sums)
    model.train()
    loss, count = sums[0].item(), sums[1].item()
    out = {"loss": loss / count, "count": int(count), "top1": 100.0 * sums[2].item() / count}
    if len(topk) > 1:
        out["top5"] = 100.0 * sums[3].item() / count
    return out


class Trainer:
    """Builds data, model, optimizer and schedule for one process and runs the epochs."""

    def __init__(self, cfg: Config, plan: Plan, env: DistEnv, run_dir: Path,
                 precision: PrecisionChoice | None = None) -> None:
        self.cfg, self.plan, self.env, self.run_dir = cfg, plan, env, Path(run_dir)
        t = cfg.train
        self.precision = precision or choose_precision(t.precision, env.device)
        t0 = time.perf_counter()
        self.data = build_data(cfg, device=env.device)
        self.build_times = {"data_load_s": time.perf_counter() - t0}
        torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        self.stages: list[Stage] = resolve_stages(cfg, env.world_size)
        self.stage = self.stages[0]
        model = build_model(
            cfg.model.name,
            num_classes=self.data.num_classes,
            in_channels=self.data.in_channels,
            bn_batch_size=plan.bn_local_batch_size,
            width=cfg.model.width,
            blocks_per_stage=cfg.model.blocks_per_stage,
            zero_init_residual=cfg.model.zero_init_residual,
            fc_init_std=cfg.model.fc_init_std,
        ).to(env.device)
        if t.init_from:
            self._init_from(model, t.init_from)
        self.channels_last = cfg.model.channels_last
        unsafe = channels_last_unsafe_convs(model, env.device) if self.channels_last else []
        if unsafe:
            self.channels_last = False
            log.warning("model.channels_last=true ignored: channels_last weight gradients of %s (1x1, stride 2, fewer "
                        "than 8 input channels) corrupt memory on this CPU with torch %s; the model stays contiguous "
                        "(use model.width >= 8 for channels_last)", ", ".join(unsafe), torch.__version__)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        torch.manual_seed(t.seed + env.rank)  # per-rank seed for anything random beyond data and init
        sync_group = consecutive_groups(plan.bn_sync_ranks) if env.distributed and plan.bn_sync_ranks > 1 else None
        configure_bn(model, statistics=t.bn_statistics, variance_averaging=t.bn_variance_averaging,
                     sync_group=sync_group, sync_ranks=plan.bn_sync_ranks)
        self.model = model
        # BN buffers stay per worker (Goyal sec. 2.3): no broadcast from rank 0 at every forward.
        self.ddp = DDP(model, forward_sync_buffers=False, bucket_cap_mb=cfg.comm.bucket_cap_mb,
                       device_ids=[env.device.index] if env.device.type == "cuda" else None) \
            if env.distributed else model
        from largebatch.train.noise_scale import NoiseScaleEstimator

        self._noise_hook = None
        self.noise = NoiseScaleEstimator(decay=t.noise_scale_decay)
        if env.distributed:
            self._register_comm_hook()
        # Steps of each epoch follow its stage's global batch (drop last); epoch e starts at step
        # epoch_start[e]. Without a batch schedule every epoch has the same steps_per_epoch.
        n = self.data.num_train
        if any(n < st.plan.global_batch_size for st in self.stages):
            GlobalBatchSampler(n, max(st.plan.global_batch_size for st in self.stages), world_size=env.world_size,
                               rank=env.rank, seed=t.seed)  # raises the sampler's clear error
        self.epoch_steps = [n // self._stage_of(e).plan.global_batch_size for e in range(t.epochs)]
        self.epoch_start = [sum(self.epoch_steps[:e]) for e in range(t.epochs + 1)]
        self.steps_per_epoch = self.epoch_steps[0]
        self.total_steps = self.epoch_start[-1]
        self.batch_schedule = bool(t.batch_schedule)
        if not self.batch_schedule:
            # A pure function of the step (bitwise the behaviour of a fixed-batch run).
            self.schedule = build_schedule(cfg.schedule, peak_lr=plan.peak_lr, base_lr=cfg.optim.base_lr,
                                           steps_per_epoch=self.steps_per_epoch, epochs=t.epochs)
            self.stage_schedules = [self.schedule]
        else:
            # Positions in samples of the nominal epoch (N per epoch): warmup and decay boundaries sit
            # at the same epochs whatever the batch of each stage; each stage has its own peak LR.
            self.stage_schedules = [build_schedule(cfg.schedule, peak_lr=st.plan.peak_lr, base_lr=cfg.optim.base_lr,
                                                   steps_per_epoch=n, epochs=t.epochs) for st in self.stages]
            self.schedule = self.stage_schedules[0]
        self.sampler = self._make_sampler(self.stage)
        # The trainer guards every step itself (host check, device guard or the fp16 scaler), so the
        # optimizers' own check and its host sync are off: one guard, one count of skipped steps.
        self.optimizer = build_optimizer(model, cfg.optim, lr=self.lr_at(0), steps_per_epoch=self.steps_per_epoch,
                                         skip_nonfinite=False)
        # Mixed precision: autocast for bf16/fp16; fp16 adds dynamic loss scaling. GradScaler.step
        # unscales the all-reduced gradients before the optimizer (so trust ratios see true norms)
        # and skips a step whose gradient is not finite.
        self.autocast_dtype = self.precision.autocast_dtype
        self.scaler = torch.amp.GradScaler(env.device.type) if self.precision.precision == "fp16" else None
        self.state = TrainState()
        self.stop_requested = False  # set by the SIGTERM handler of run_worker
        self._last_step_ok: bool | torch.Tensor = True
        # Non-finite check: on the host (one sync per step, free on CPU) or on the device (no sync).
        check = t.nonfinite_check
        self.device_guard = self.scaler is None and (check == "device" or (check == "auto" and env.device.type == "cuda"))
        self._snapshot: list[torch.Tensor] | None = None
        self._pending_skips = torch.zeros((), dtype=torch.int32, device=env.device)
        self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=env.device)
        self._first_bad_mask: torch.Tensor | None = None
        self._guard_names: list[str] = []
        # Control messages (stop, checkpoint due) travel on a gloo group of CPU tensors, so agreeing on
        # them never waits for the GPU.
        self._control = torch.distributed.new_group(backend="gloo") if env.distributed else None
        self._last_checkpoint_time = time.monotonic()
        self.metrics = MetricsLogger(self.run_dir, enabled=env.is_main)
        log.info("%s", plan.describe())
        log.info("precision %s (train.precision=%s): %s", self.precision.precision, t.precision, self.precision.reason)
        log.info("BN: %s statistics%s", t.bn_statistics,
                 f" ({t.bn_variance_averaging} variance)" if t.bn_statistics == "last_batch" else
                 f" over {t.precise_bn_batches} batches before each evaluation" if t.bn_statistics == "precise" else "")
        if self.batch_schedule:
            for st in self.stages:
                log.info("batch stage %d from epoch %d: %s; %d steps/epoch", st.index, st.start_epoch,
                         st.plan.describe(), n // st.plan.global_batch_size)
            log.info("%d training samples, %d steps in %d epochs; warmup and decay positions in epochs of samples "
                     "seen", n, self.total_steps, t.epochs)
        else:
            log.info("%d training samples, %d steps/epoch (drop last %d), %d steps in %d epochs, warmup %d steps, "
                     "decay at steps %s", n, self.steps_per_epoch,
                     n - self.steps_per_epoch * plan.global_batch_size, self.total_steps, t.epochs,
                     self.schedule.warmup_steps, list(self.schedule.decay_steps))

    @staticmethod
    def _init_from(model: nn.Module, path: str) -> None:
        """Model weights and BN buffers from the checkpoint ``path`` (train.init_from).

        Raises:
            ConfigError: if the checkpoint's model does not have this model's tensors and shapes.
        """
        state = ckpt_io.load_checkpoint(Path(path))["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise ConfigError(f"train.init_from={path}: its model does not fit this one ({first[1].strip() if len(first) > 1 else first[0]}); "
                              "use the model.* settings of the run that wrote it") from None
        log.info("model weights and BN buffers from %s (train.init_from); optimizer, schedule and steps start fresh", path)

    def _register_comm_hook(self) -> None:
        """``comm.algorithm`` / ``comm.compression`` as a DDP communication hook (none: DDP's own)."""
        c, env = self.cfg.comm, self.env
        state = None
        if c.algorithm != "allreduce":
            topology = make_topology(env.world_size, workers_per_node=c.workers_per_node or env.local_world_size,
                                     torus_x=c.torus_x)
            state = HookState(groups=build_groups(topology), hierarchical_mode=c.hierarchical_mode)
            log.info("gradient all-reduce: %s%s over %s, %s backend", c.algorithm,
                     f" ({c.hierarchical_mode})" if c.algorithm == "hierarchical" else "", topology.describe(),
                     env.backend)
        pair = make_comm_hook(c.algorithm, c.compression, state)
        if self.cfg.train.noise_scale:  # wraps the chosen all-reduce (or DDP's own): norms before and after
            from largebatch.train.noise_scale import wrap_hook

            self._noise_hook, hook = wrap_hook(pair)
            self.ddp.register_comm_hook(self._noise_hook, hook)
            log.info("gradient noise scale (McCandlish et al. 2018): worker batch %d against global batch %d",
                     self.plan.per_worker_batch_size, self.plan.global_batch_size)
        elif pair is not None:
            self.ddp.register_comm_hook(*pair)
        if pair is not None:
            log.info("DDP communication hook: %s, compression %s, buckets of %g MiB", c.algorithm, c.compression,
                     c.bucket_cap_mb)

    # ----------------------------------------------------------------------------------- stages
    def _stage_of(self, epoch: int) -> Stage:
        """The batch stage that ``epoch`` belongs to."""
        return [st for st in self.stages if st.start_epoch <= epoch][-1]

    def _make_sampler(self, stage: Stage) -> GlobalBatchSampler:
        # The shuffle of an epoch depends on (seed, epoch) only, so a stage change keeps one
        # permutation per epoch; only how it is cut into global batches changes.
        return GlobalBatchSampler(self.data.num_train, stage.plan.global_batch_size, world_size=self.env.world_size,
                                  rank=self.env.rank, seed=self.cfg.train.seed)

    def _enter_stage(self, stage: Stage) -> None:
        """Switch the per-process batch, accumulation and BN groups to ``stage`` (same process group)."""
        self.stage, self.plan = stage, stage.plan
        self.sampler = self._make_sampler(stage)
        set_bn_batch_size(self.model, stage.plan.bn_local_batch_size)
        log.info("batch stage %d from epoch %d: %s", stage.index, stage.start_epoch, stage.plan.describe())
        self.metrics.write("stage", step=self.state.step, epoch=self.epoch_position(self.state.step),
                           stage=stage.index, global_batch_size=stage.plan.global_batch_size,
                           accumulation_steps=stage.plan.accumulation_steps, bn_batch_size=stage.plan.bn_batch_size,
                           peak_lr=stage.plan.peak_lr)

    def epoch_position(self, step: int) -> float:
        """Fractional epoch reached after ``step`` optimizer steps (epoch + share of its steps done)."""
        epoch = max(e for e in range(len(self.epoch_steps)) if self.epoch_start[e] <= step) \
            if step < self.total_steps else len(self.epoch_steps)
        if epoch >= len(self.epoch_steps):
            return float(epoch)
        return epoch + (step - self.epoch_start[epoch]) / self.epoch_steps[epoch]

    def lr_at(self, step: int) -> float:
        """LR of optimizer step ``step``: the schedule at the step (fixed batch), or at the position in
        samples seen with the peak of the step's stage (batch schedule)."""
        if not self.batch_schedule:
            return self.schedule(step)
        position = self.epoch_position(step)
        stage = self._stage_of(min(int(position), len(self.epoch_steps) - 1))
        return self.stage_schedules[stage.index](position * self.data.num_train)

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict:
        rng = torch.get_rng_state()
        if self.env.distributed:
            states = [None] * self.env.world_size
            torch.distributed.all_gather_object(states, rng)
        else:
            states = [rng]
        return {
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "train_state": asdict(self.state),
            "sampler": {"seed": self.sampler.seed, "epoch": self.state.epoch,
                        "step_in_epoch": self.state.step - self.epoch_start[min(self.state.epoch, len(self.epoch_steps))],
                        "stage": self.stage.index, "global_batch_size": self.plan.global_batch_size},
            "world_size": self.env.world_size,
            "rng": states,
            "noise_scale": self._noise_scale_state(),
            "precision": self.precision.precision,
        }

    def _noise_scale_state(self) -> dict | None:
        """The noise-scale averages (g_sq, trace, weight) averaged over ranks, or None when not
        measured. What is logged and what a checkpoint keeps, so a resumed run, on any number of
        workers, goes on from the same smoothed estimate. Collective: every rank calls it."""
        if self._noise_hook is None or self.noise.steps == 0:
            return None
        state = self.noise.state_dict()
        values = torch.tensor([state["g_sq"], state["trace"], state["weight"]], dtype=torch.float64,
                              device=self.env.device)
        g_sq, trace, weight = (all_reduce_sum(values) / self.env.world_size).tolist()
        return {**state, "g_sq": g_sq, "trace": trace, "weight": weight}

    def _average_bn(self) -> None:
        average_bn_statistics(self.model, samples_per_step=self.plan.global_batch_size)

    def save(self) -> None:
        t0 = time.perf_counter()
        self._settle_nonfinite()
        self._last_checkpoint_time = time.monotonic()
        self._average_bn()  # every rank's BN statistics become the checkpointed ones
        payload = self.checkpoint_payload()
        if self.env.is_main:
            ckpt_io.save_checkpoint(self.run_dir, self.state.step, payload, keep=self.cfg.train.keep_checkpoints)
        barrier()
        self.state.checkpoint_s += time.perf_counter() - t0

    def load(self, path: Path, ckpt: dict | None = None) -> None:
        """Restore model, optimizer, counters and RNG from a checkpoint (``ckpt``: already loaded).

        On another number of processes the global batch, the schedule position and the sample
        order stay those of the checkpoint (they depend on the config and the step only); the
        per-rank torch RNG states are restored only on the same number of processes (training draws
        nothing from them: augmentation is derived from (seed, epoch, step)).

        Raises:
            ConfigError: if the checkpoint was written with another config.
            CheckpointError: if the file is truncated, corrupt or holds pickled objects.
        """
        ckpt = ckpt if ckpt is not None else ckpt_io.load_checkpoint(path)
        if ckpt["config_hash"] != config_hash(self.cfg):
            raise ConfigError(config_mismatch(self.cfg, ckpt["config"], path) or
                              f"checkpoint {path} has config hash {ckpt['config_hash']}, this run {config_hash(self.cfg)}")
        if ckpt.get("precision", self.precision.precision) != self.precision.precision:
            log.warning("checkpoint %s was trained in %s, this segment runs in %s (%s): the run goes on, but is not "
                        "bitwise an uninterrupted one; set train.precision=%s to keep it", path, ckpt["precision"],
                        self.precision.precision, self.precision.reason, ckpt["precision"])
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

    # ----------------------------------------------------------------------------------- the loop
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step over this rank's share of the global batch; returns the summed
        (unreduced, on-device) micro-batch losses, without a host sync."""
        accum = self.plan.accumulation_steps
        loss_sum = torch.zeros((), device=self.env.device)
        grad_scale_sq = None
        start_bn_step(self.model)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for i, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum))):
            sync = i == accum - 1
            ctx = self.ddp.no_sync() if (self.env.distributed and not sync) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(self.env.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    loss = F.cross_entropy(self.ddp(x), y, label_smoothing=self.cfg.train.label_smoothing) / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach().float()
        if self.scaler:
            # the all-reduced gradients the noise-scale hook measured carry this scale (update() changes it in place)
            if self._noise_hook is not None and self.scaler.is_enabled():
                grad_scale_sq = self.scaler._get_scale_async().detach().square()  # a new tensor
            self.scaler.step(self.optimizer)  # skips a non-finite step itself and lowers the scale
            self.scaler.update()
            self._last_step_ok = True
        elif self.device_guard:
            self._last_step_ok = self._guarded_step()
        elif self._gradients_finite():
            self.optimizer.step()
            self._last_step_ok = True
        else:
            self._last_step_ok = False
        self.optimizer.zero_grad(set_to_none=True)
        if self._noise_hook is not None:
            local_sq, global_sq = self._noise_hook.take()
            if local_sq is not None and global_sq is not None:  # device tensors: no sync
                if grad_scale_sq is not None:  # fp16 loss scaling: measure the unscaled gradients' norms
                    local_sq, global_sq = local_sq / grad_scale_sq, global_sq / grad_scale_sq
                self.noise.update(local_sq, global_sq, self.plan.per_worker_batch_size, self.plan.global_batch_size)
        return loss_sum

    def _noise_scale_values(self) -> dict:
        """{noise_scale, grad_sq_norm, grad_cov_trace}: the workers' smoothed estimates averaged
        (one all-reduce of three numbers), or {} when not measured."""
        state = self._noise_scale_state()
        if state is None or state["weight"] == 0:
            return {}
        g_sq, trace = state["g_sq"] / state["weight"], state["trace"] / state["weight"]
        return {"noise_scale": trace / g_sq if g_sq > 0 else float("inf"), "grad_sq_norm": g_sq,
                "grad_cov_trace": trace}

    # ------------------------------------------------------------------ non-finite gradients on the device
    def _state_tensors(self) -> list[torch.Tensor]:
        """The optimizer's floating state tensors (momentum buffers, moments), persistent objects."""
        return [v for state in self.optimizer.state.values() for v in state.values()
                if isinstance(v, torch.Tensor) and v.is_floating_point()]

    def _guarded_step(self) -> torch.Tensor:
        """The optimizer step with no host sync (train.nonfinite_check=device, the CUDA default):
        whether every gradient is finite stays a device tensor ``ok``; the step runs, and every
        parameter and floating optimizer-state tensor is then set back to its value before the step
        where ``ok`` is false (state created by this step back to zeros, the state before a first
        step). Counting and the policy are applied at the next point that syncs anyway
        (:meth:`_settle_nonfinite`). Returns ``ok``."""
        from largebatch.optim._common import norms

        named = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        self._guard_names = [n for n, _ in named]
        finite = torch.stack([n.isfinite() for n in norms([p.grad for _, p in named])])
        ok = finite.all()
        states = self._state_tensors()
        before = [p.detach() for p in self.model.parameters()] + states
        if self._snapshot is None or len(self._snapshot) != len(before) or any(
                a.shape != b.shape for a, b in zip(self._snapshot, before)):
            self._snapshot = [t.clone() for t in before]
        else:
            torch._foreach_copy_(self._snapshot, before)
        known = {id(t) for t in states}
        self.optimizer.step()
        for t, old in zip(before, self._snapshot):
            torch.where(ok, t, old, out=t)
        for t in self._state_tensors():
            if id(t) not in known:
                torch.where(ok, t, torch.zeros((), dtype=t.dtype, device=t.device), out=t)
        step = torch.tensor(self.state.step, device=ok.device)
        first = self._first_bad_step < 0
        self._first_bad_mask = torch.where(first & ~ok, ~finite, self._first_bad_mask) \
            if self._first_bad_mask is not None and self._first_bad_mask.numel() == finite.numel() else ~finite & ~ok
        self._first_bad_step = torch.where(first & ~ok, step, self._first_bad_step)
        self._pending_skips = self._pending_skips + (~ok).int()
        return ok

    def _settle_nonfinite(self) -> None:
        """Apply train.nonfinite_policy to the steps skipped on the device since the last call (one
        sync, made where the loop syncs anyway: at log intervals, evaluations and checkpoints)."""
        if not self.device_guard:
            return
        pending, first = torch.stack([self._pending_skips.to(torch.int64).cpu(),
                                      self._first_bad_step.to(torch.int64).cpu()]).tolist()
        if pending == 0:
            return
        st, t = self.state, self.cfg.train
        names = self._guard_names
        mask = self._first_bad_mask.tolist() if self._first_bad_mask is not None else []
        bad = [n for n, m in zip(names, mask) if m]
        where = (f"step {first} (LR {self.lr_at(first):g}): non-finite gradient in "
                 f"{', '.join(bad[:5]) or 'a layer'}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")
        st.skipped_steps += pending
        if isinstance(self.optimizer, Settings):
            # The undone steps still advanced the optimizer's host counters (LAMB's bias-correction t,
            # RMSprop warm-up's epoch count); take them back now. The steps between the bad one and
            # this sync used a count higher by one, the price of not syncing every step.
            self.optimizer.forget_steps(pending)
        self._pending_skips = torch.zeros((), dtype=torch.int32, device=self.env.device)
        self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.env.device)
        self._first_bad_mask = None
        if t.nonfinite_policy == "stop":
            raise NonFiniteGradient(f"{where}; stopping (train.nonfinite_policy=stop; found at the next sync point, "
                                    f"the step and any after it were not applied). The last checkpoint is kept")
        log.warning("%s; %d step(s) skipped since the last report (%d of at most %d)", where, pending,
                    st.skipped_steps, t.max_nonfinite_steps)
        if st.skipped_steps > t.max_nonfinite_steps:
            raise NonFiniteGradient(f"{where}; {st.skipped_steps} steps skipped, more than "
                                    f"train.max_nonfinite_steps={t.max_nonfinite_steps}: stopping. The last good "
                                    f"checkpoint is kept; lower optim.base_lr or lengthen schedule.warmup_epochs")

    def _gradients_finite(self) -> bool:
        """Check the all-reduced gradients; apply train.nonfinite_policy to a NaN or Inf. One host
        sync per step (free on CPU; on CUDA it is the one sync of the step, as GradScaler's)."""
        from largebatch.optim._common import all_finite, norms

        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if all_finite(norms([g for _, g in named])):
            return True
        st, t = self.state, self.cfg.train
        bad = [n for n, g in named if not bool(torch.isfinite(g).all())]
        where = (f"step {st.step} (epoch {st.epoch}, LR {self.lr_at(st.step):g}): non-finite gradient in "
                 f"{', '.join(bad[:5])}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")
        if t.nonfinite_policy == "stop":
            raise NonFiniteGradient(f"{where}; stopping (train.nonfinite_policy=stop). The last checkpoint is kept; "
                                    f"lower optim.base_lr or lengthen schedule.warmup_epochs")
        st.skipped_steps += 1
        log.warning("%s; step skipped (%d of at most %d)", where, st.skipped_steps, t.max_nonfinite_steps)
        if st.skipped_steps > t.max_nonfinite_steps:
            raise NonFiniteGradient(f"{where}; {st.skipped_steps} steps skipped, more than "
                                    f"train.max_nonfinite_steps={t.max_nonfinite_steps}: stopping. The last good "
                                    f"checkpoint is kept; lower optim.base_lr or lengthen schedule.warmup_epochs")
        return False

    def _preempted(self) -> None:
        log.warning("stop requested (SIGTERM): checkpoint written at step %d; continue with --resume auto",
                    self.state.step)
        raise Preempted(self.state.step)

    def _control_flags(self) -> tuple[bool, bool]:
        """(stop, checkpoint due) agreed by all ranks after a step: any rank's stop request, and
        rank 0's step/minute checkpoint interval."""
        t, st = self.cfg.train, self.state
        due = bool(t.checkpoint_every_steps and st.step % t.checkpoint_every_steps == 0)
        if self.env.is_main and t.checkpoint_every_minutes:
            due = due or time.monotonic() - self._last_checkpoint_time >= 60.0 * t.checkpoint_every_minutes
        if self._control is None:
            return self.stop_requested, due
        flags = torch.tensor([int(self.stop_requested), int(due)], dtype=torch.int32)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self._control)
        return bool(flags[0]), bool(flags[1])

    def _settle_bn_for_eval(self) -> None:
        """Before any evaluation: pending non-finite skips settled, then the BN statistics the
        evaluation uses (precise BN recomputed, or the workers' statistics averaged)."""
        self._settle_nonfinite()
        if self.cfg.train.bn_statistics == "precise":
            self._precise_bn()
        self._average_bn()

    def _record_val_target(self, val_top1: float) -> bool:
        """Record the first crossing of the validation target; True when the run should stop there."""
        t, st = self.cfg.train, self.state
        target = t.stop_at_val_top1 or t.val_target_top1
        if target and st.steps_to_val_target is None and val_top1 >= target:
            st.steps_to_val_target, st.images_to_val_target = st.step, st.images_seen
            log.info("validation top-1 %.2f%% reached the target %.2f%% at step %d (%d images)", val_top1, target,
                     st.step, st.images_seen)
        return bool(t.stop_at_val_top1) and st.steps_to_val_target is not None

    def _evaluate_val(self, wall_s) -> bool:
        """Evaluate the validation split only (train.val_every_steps); True when the run should stop
        at the validation target."""
        t0 = time.perf_counter()
        self._settle_bn_for_eval()
        v = evaluate(self.model, self.data, self.env, split="val", channels_last=self.channels_last,
                     batch_size=self.cfg.train.eval_batch_size, autocast_dtype=self.autocast_dtype)
        st = self.state
        st.val_top1 = v["top1"]
        st.best_val_top1 = max(st.best_val_top1 or 0.0, v["top1"])
        self.metrics.write("eval", step=st.step, epoch=self.epoch_position(st.step), lr=self.lr_at(max(st.step - 1, 0)),
                           val_top1=v["top1"], val_loss=v["loss"], wall_s=wall_s())
        log.info("eval step %d: validation top-1 %.2f%%, loss %.4f", st.step, v["top1"], v["loss"])
        st.eval_s += time.perf_counter() - t0
        return self._record_val_target(v["top1"])

    def _evaluate_and_log(self, wall_s) -> None:
        """Settle the BN statistics (precise BN recomputes them; otherwise they are averaged across
        ranks), evaluate, log; ``wall_s()`` gives the run's elapsed seconds."""
        t0 = time.perf_counter()
        self._settle_bn_for_eval()
        kwargs = dict(channels_last=self.channels_last, batch_size=self.cfg.train.eval_batch_size,
                      autocast_dtype=self.autocast_dtype)
        result = evaluate(self.model, self.data, self.env, **kwargs)
        st = self.state
        val = {}
        if self.data.num_val:
            v = evaluate(self.model, self.data, self.env, split="val", **kwargs)
            st.val_top1 = v["top1"]
            st.best_val_top1 = max(st.best_val_top1 or 0.0, v["top1"])
            val = {"val_top1": v["top1"], "val_loss": v["loss"]}
            self._record_val_target(v["top1"])
        st.top1 = result["top1"]
        st.best_top1 = max(st.best_top1, result["top1"])
        wall = wall_s()
        target = self.cfg.train.target_top1
        if target and st.time_to_target_s is None and result["top1"] >= target:
            st.time_to_target_s = wall
        self.metrics.write("eval", step=st.step, epoch=self.epoch_position(st.step), lr=self.lr_at(max(st.step - 1, 0)),
                           loss=result["loss"], top1=result["top1"], top5=result.get("top5"), wall_s=wall, **val)
        log.info("eval epoch %d step %d: top-1 %.2f%%%s, loss %.4f (%d images)%s", st.epoch, st.step, result["top1"],
                 f", top-5 {result['top5']:.2f}%" if "top5" in result else "", result["loss"], result["count"],
                 f"; validation top-1 {val['val_top1']:.2f}%" if val else "")
        st.eval_s += time.perf_counter() - t0

    def _precise_bn(self) -> None:
        """Population BN statistics over train.precise_bn_batches global batches of the current epoch's
        stage (at most one epoch), drawn with their own shuffle and augmentation seed."""
        k = min(self.cfg.train.precise_bn_batches, self.sampler.steps_per_epoch)
        sampler = GlobalBatchSampler(self.data.num_train, self.plan.global_batch_size, world_size=self.env.world_size,
                                     rank=self.env.rank, seed=derive_seed(self.cfg.train.seed, "precise_bn"))
        sampler.set_epoch(self.state.epoch)
        seed = derive_seed(self.cfg.train.seed, "precise_bn_augment")

        def micro_batches():
            for step, (images, _labels) in enumerate(self.data.train_batches(sampler, seed=seed)):
                if step >= k:
                    break
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                yield from images.chunk(self.plan.accumulation_steps)

        with torch.no_grad(), torch.autocast(self.env.device.type, dtype=self.autocast_dtype,
                                             enabled=self.autocast_dtype is not None):
            recompute_bn_statistics(self.model, micro_batches())

    def fit(self) -> TrainState:
        t = self.cfg.train
        st = self.state
        bar = None
        if self.env.is_main:
            from tqdm import tqdm

            # A live bar on a terminal; in a log file (not a TTY) a log line per interval instead.
            bar = tqdm(total=self.total_steps, initial=st.step, unit="step", dynamic_ncols=True, leave=False,
                       disable=not sys.stderr.isatty())
        wall_start = time.perf_counter()
        self.fit_started_unix_s = time.time()
        wall_before = st.train_wall_s

        def wall_s() -> float:
            return wall_before + time.perf_counter() - wall_start
        try:
            while st.epoch < t.epochs and not (st.stopped_at_target or st.stopped_at_budget):
                epoch = st.epoch
                stage = self._stage_of(epoch)
                if stage.index != self.stage.index:
                    self._enter_stage(stage)
                start_in_epoch = st.step - self.epoch_start[epoch]
                self.sampler.set_epoch(epoch, start_in_epoch)
                interval_loss = torch.zeros((), device=self.env.device)
                interval_steps, interval_counted, interval_t0 = 0, 0, time.perf_counter()
                stop_after_epoch = due_after_epoch = False
                gbs = self.plan.global_batch_size
                for images, labels in self.data.train_batches(self.sampler, seed=t.seed):
                    lr = self.lr_at(st.step)
                    self._set_lr(lr)
                    if self.batch_schedule and hasattr(self.optimizer, "epoch_position"):
                        self.optimizer.epoch_position = self.epoch_position(st.step)  # RMSpropWarmup's alpha_SGD
                    t0 = time.perf_counter()
                    step_loss = self._train_step(images, labels)
                    ok = self._last_step_ok  # a skipped step's loss is NaN or Inf: not averaged
                    if isinstance(ok, torch.Tensor):  # device check: no sync here
                        interval_loss += torch.where(ok, step_loss, torch.zeros_like(step_loss))
                        interval_counted = interval_counted + ok.to(torch.int64)
                    elif ok:
                        interval_loss += step_loss
                        interval_counted += 1
                    st.step_time_s += time.perf_counter() - t0
                    st.step += 1
                    st.images_seen += gbs
                    interval_steps += 1
                    if bar is not None:
                        bar.update(1)
                    stop, due = self._control_flags()
                    if st.step < self.epoch_start[epoch + 1]:  # at the epoch's end the save below does it
                        if stop or due:
                            st.train_wall_s = wall_s()
                            self.save()
                        if stop:
                            self._preempted()
                    else:  # the epoch's last step: the epoch-end code below saves if either is set
                        stop_after_epoch, due_after_epoch = stop_after_epoch or stop, due
                    epoch_end = st.step == self.epoch_start[epoch + 1]
                    will_eval = epoch_end and ((epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs)
                    if (t.val_every_steps and st.step % t.val_every_steps == 0 and not will_eval
                            and self._evaluate_val(wall_s)):
                        st.stopped_at_target = True
                        break
                    if t.stop_after_images and st.images_seen >= t.stop_after_images and not epoch_end:
                        st.stopped_at_budget = True
                        break
                    if st.step % t.log_every_steps == 0 or epoch_end:
                        # The one host sync of the interval: reduce the summed loss across ranks.
                        self._settle_nonfinite()
                        loss = all_reduce_sum(interval_loss.detach().clone()).item() / (max(int(interval_counted), 1) * self.env.world_size)
                        if not math.isfinite(loss):
                            raise FloatingPointError(
                                f"training loss is {loss} at step {st.step} (epoch {epoch}, LR {lr:g}); lower "
                                f"optim.base_lr or lengthen schedule.warmup_epochs")
                        now = time.perf_counter()
                        ips = interval_steps * gbs / (now - interval_t0)
                        noise = self._noise_scale_values()
                        self.metrics.write("train", step=st.step, epoch=self.epoch_position(st.step), lr=lr, loss=loss,
                                           images_per_s=ips, wall_s=wall_s(), **noise)
                        if bar is not None and not bar.disable:
                            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.4g}", img_s=f"{ips:.0f}")
                        else:
                            log.info("step %d/%d epoch %d: loss %.4f, lr %.4g, %.0f images/s", st.step,
                                     self.total_steps, epoch, loss, lr, ips)
                        interval_loss.zero_()
                        interval_steps, interval_counted, interval_t0 = 0, 0, now
                if st.stopped_at_target or st.stopped_at_budget:  # mid-epoch: the run's final evaluation and checkpoint
                    self._evaluate_and_log(wall_s)
                    st.train_wall_s = wall_s()
                    self.save()
                    break
                st.epoch += 1
                last = st.epoch == t.epochs
                evaluated = last or st.epoch % t.eval_every_epochs == 0
                if evaluated:
                    self._evaluate_and_log(wall_s)
                    if t.stop_at_val_top1 and st.steps_to_val_target is not None and not last:
                        st.stopped_at_target = True
                        log.info("stopping at the validation target (train.stop_at_val_top1=%g)", t.stop_at_val_top1)
                        last = True
                if t.stop_after_images and st.images_seen >= t.stop_after_images and not last:
                    st.stopped_at_budget = True
                    last = True
                    if not evaluated:
                        self._evaluate_and_log(wall_s)
                if last or st.epoch % t.checkpoint_every_epochs == 0 or stop_after_epoch or due_after_epoch:
                    st.train_wall_s = wall_s()
                    self.save()
                if stop_after_epoch and not last:
                    self._preempted()
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        st.train_wall_s = wall_s()
        return st
