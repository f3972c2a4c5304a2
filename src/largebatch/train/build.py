"""Building a run's model and its gradient all-reduce from the config (the trainer's construction
steps that are not the loop's). ``check_resumable`` lives in :mod:`largebatch.train.checkpoint_manager`
and is importable from here as before."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from largebatch.config import Config, ConfigError
from largebatch.data import GlobalBatchSampler
from largebatch.dist import DistEnv, consecutive_groups
from largebatch.dist.hooks import HookState, make_comm_hook
from largebatch.dist.topology import build_groups, make_topology
from largebatch.nn import build_model, channels_last_unsafe_convs, configure_bn
from largebatch.plan import Plan
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.checkpoint_manager import check_resumable  # noqa: F401  (its old home)
from largebatch.train.noise_scale import wrap_hook

log = logging.getLogger(__name__)


def build_run_model(cfg: Config, plan: Plan, env: DistEnv, data) -> tuple[nn.Module, bool]:
    """The model of the run on its device, with identical initial weights on every rank (seeded by
    ``train.seed``; DDP also broadcasts them), ``train.init_from``'s weights if given, and the memory
    format, and its BN layers configured (``train.bn.statistics``, the BN sync group); returns
    (model, channels_last). Leaves the torch RNG seeded per rank (``seed + rank``) for anything
    random beyond data and init.

    Raises:
        ConfigError: ``train.init_from``'s model does not fit this one.
    """
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        bn_batch_size=plan.bn_local_batch_size,
        width=cfg.model.width,
        blocks_per_stage=cfg.model.blocks_per_stage,
        stem_stride=cfg.model.stem_stride,
        zero_init_residual=cfg.model.zero_init_residual,
        fc_init_std=cfg.model.fc_init_std,
    ).to(env.device)
    if t.init_from:
        init_from(model, t.init_from)
    channels_last = cfg.model.channels_last
    unsafe = channels_last_unsafe_convs(model, env.device) if channels_last else []
    if unsafe:
        channels_last = False
        log.warning(
            "model.channels_last=true ignored: channels_last weight gradients of %s (1x1, stride 2, fewer "
            "than 8 input channels) corrupt memory on this CPU with torch %s; the model stays contiguous "
            "(use model.width >= 8 for channels_last)",
            ", ".join(unsafe),
            torch.__version__,
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(t.seed + env.rank)
    sync_group = consecutive_groups(plan.bn_sync_ranks) if env.distributed and plan.bn_sync_ranks > 1 else None
    configure_bn(
        model,
        statistics=t.bn.statistics,
        variance_averaging=t.bn.variance_averaging,
        sync_group=sync_group,
        sync_ranks=plan.bn_sync_ranks,
    )
    return model, channels_last


def model_of(cfg: Config, data) -> nn.Module:
    """The run's architecture for ``data`` (classes, channels), untrained, on the CPU, with plain BN:
    the model a saved state dict of the run loads into (``largebatch eval``, the Hessian probe)."""
    return build_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        width=cfg.model.width,
        blocks_per_stage=cfg.model.blocks_per_stage,
        stem_stride=cfg.model.stem_stride,
    )


def wrap_ddp(model: nn.Module, cfg: Config, env: DistEnv) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` on a distributed run (the model itself otherwise).
    BN buffers stay per worker (Goyal et al. 2017 sec. 2.3): no broadcast from rank 0 at every forward."""
    if not env.distributed:
        return model
    return DDP(
        model,
        forward_sync_buffers=False,
        bucket_cap_mb=cfg.comm.bucket_cap_mb,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
    )


def check_batches_fit(num_train: int, stages, env: DistEnv, seed: int) -> None:
    """Raises the sampler's clear ValueError when a stage's global batch exceeds the training set."""
    if any(num_train < st.plan.global_batch_size for st in stages):
        GlobalBatchSampler(
            num_train,
            max(st.plan.global_batch_size for st in stages),
            world_size=env.world_size,
            rank=env.rank,
            seed=seed,
        )


def init_from(model: nn.Module, path: str) -> None:
    """Model weights and BN buffers from the checkpoint ``path`` (train.init_from).

    Raises:
        ConfigError: if the checkpoint's model does not have this model's tensors and shapes.
    """
    state = ckpt_io.load_checkpoint(Path(path))["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ConfigError(
            f"train.init_from={path}: its model does not fit this one "
            f"({first[1].strip() if len(first) > 1 else first[0]}); "
            "use the model.* settings of the run that wrote it"
        ) from None
    log.info("model weights and BN buffers from %s (train.init_from); optimizer, schedule and steps start fresh", path)


def register_comm_hook(ddp, cfg: Config, plan: Plan, env: DistEnv, *, noise_scale: bool | None = None):
    """``comm.algorithm`` / ``comm.compression`` as a DDP communication hook (none: DDP's own), wrapped
    by the noise-scale measurement when ``noise_scale`` (default ``train.noise_scale``) is on; returns
    the noise hook's state (None when not measured)."""
    noise_scale = cfg.train.noise_scale if noise_scale is None else noise_scale
    c = cfg.comm
    state = None
    if c.algorithm != "allreduce":
        topology = make_topology(
            env.world_size, workers_per_node=c.workers_per_node or env.local_world_size, torus_x=c.torus_x
        )
        state = HookState(groups=build_groups(topology), hierarchical_mode=c.hierarchical_mode)
        log.info(
            "gradient all-reduce: %s%s over %s, %s backend",
            c.algorithm,
            f" ({c.hierarchical_mode})" if c.algorithm == "hierarchical" else "",
            topology.describe(),
            env.backend,
        )
    pair = make_comm_hook(c.algorithm, c.compression, state)
    noise_hook = None
    if noise_scale:  # wraps the chosen all-reduce (or DDP's own): norms before and after
        noise_hook, hook = wrap_hook(pair)
        ddp.register_comm_hook(noise_hook, hook)
        log.info(
            "gradient noise scale (McCandlish et al. 2018): worker batch %d against global batch %d",
            plan.per_worker_batch_size,
            plan.global_batch_size,
        )
    elif pair is not None:
        ddp.register_comm_hook(*pair)
    if pair is not None:
        log.info(
            "DDP communication hook: %s, compression %s, buckets of %g MiB", c.algorithm, c.compression, c.bucket_cap_mb
        )
    return noise_hook


def log_setup(cfg: Config, plan: Plan, precision, position) -> None:
    """The run's plan, precision, BN statistics and step accounting, in the log."""
    t = cfg.train
    log.info("%s", plan.describe())
    log.info("precision %s (train.precision=%s): %s", precision.precision, t.precision, precision.reason)
    log.info(
        "BN: %s statistics%s",
        t.bn.statistics,
        f" ({t.bn.variance_averaging} variance)"
        if t.bn.statistics == "last_batch"
        else f" over {t.bn.precise_batches} batches before each evaluation"
        if t.bn.statistics == "precise"
        else "",
    )
    for line in position.describe(plan.global_batch_size):
        log.info("%s", line)
