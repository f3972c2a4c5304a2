"""The batch planner: how a global batch splits over processes, accumulation steps and BN groups, for
every stage of a batch schedule, and the LR scaling rules (Goyal et al. 2017 sec. 2.1-2.3; Mikami et
al. 2018 sec. 3.1 for the stages). Computed once per run from a validated config into
:class:`Plan`s; derived values are never written back into the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from largebatch.config import LR_SCALINGS, BatchStage, Config, require, validate
from largebatch.errors import ConfigError

FASHION_MNIST_TRAIN_SAMPLES = 60_000
"""Fashion-MNIST's training images (Xiao, Rasul, Vollgraf 2017)."""
ASSUMED_TRAIN_IMAGES = 1_281_167
"""The training images assumed for a data set whose size is not known without reading it (``imagefolder``,
a user's data set): ImageNet-1k's training set."""


def train_set_images(cfg: Config) -> int | None:
    """The data set's whole training set, before ``data.train_subset`` and the validation hold-out,
    where it is known without reading the data (Fashion-MNIST, the synthetic set); else None."""
    d = cfg.data
    return {"fashion_mnist": FASHION_MNIST_TRAIN_SAMPLES, "synthetic": d.synthetic.train_samples}.get(d.name)


def train_images(cfg: Config, *, val_size: int | None = None) -> int:
    """The training images of one epoch of ``cfg``, without loading the data: the data set's training
    set (:func:`train_set_images`, else :data:`ASSUMED_TRAIN_IMAGES`) cut to ``data.train_subset``,
    less the ``data.val_size`` images held out for validation (``val_size`` instead, where given), as
    :func:`largebatch.data.build_data` splits them; at least 1. Raises nothing."""
    d, known = cfg.data, train_set_images(cfg)
    n = ASSUMED_TRAIN_IMAGES if known is None else known
    if d.train_subset:
        n = min(n, d.train_subset)
    return max(1, n - (d.val_size if val_size is None else val_size))


def linear_scaled_lr(base_lr: float, *, base_batch_size: int, global_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017, sec. 2.1): lr = base_lr * global_batch / base_batch."""
    return base_lr * global_batch_size / base_batch_size


def scaled_lr(rule: str, base_lr: float, *, base_batch_size: int, global_batch_size: int) -> float:
    """The LR for ``global_batch_size`` under ``rule``: ``linear`` (Goyal sec. 2.1), ``sqrt``
    (base_lr * sqrt(B / base_batch), used with adaptive optimizers, e.g. LAMB) or ``none``.

    Raises:
        ValueError: for an unknown rule.
    """
    if rule == "linear":
        return linear_scaled_lr(base_lr, base_batch_size=base_batch_size, global_batch_size=global_batch_size)
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch_size / base_batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"optim.lr_scaling={rule!r} is unknown; accepted: {', '.join(LR_SCALINGS)}")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Values derived from a config and the number of processes; computed once by :func:`resolve`.

    A process may stand in for several of the paper's workers: it splits each micro-batch into
    ``bn_groups_per_micro_batch`` BN groups of ``bn_batch_size`` samples and runs
    ``accumulation_steps`` micro-batches per step.
    """

    world_size: int
    """Number of processes (torch.distributed ranks)."""
    global_batch_size: int
    per_worker_batch_size: int
    """Samples per step on one process = global_batch_size / world_size."""
    micro_batch_size: int
    """Samples per forward pass = per_worker_batch_size / accumulation_steps."""
    accumulation_steps: int
    bn_batch_size: int
    """Samples per BN statistic, the BN span (micro_batch_size x bn_sync_ranks when
    train.bn.batch_size is 0)."""
    bn_sync_ranks: int
    """Processes sharing each BN group (group-synchronized BN; 1: none)."""
    bn_local_batch_size: int
    """Samples of each BN group held by one process = bn_batch_size / bn_sync_ranks."""
    bn_groups_per_micro_batch: int
    simulated_workers: int
    """The paper's k: global_batch_size / bn_batch_size."""
    peak_lr: float
    """LR after warmup: optim.lr_scaling (linear by default) applied to optim.base_lr."""

    def describe(self) -> str:
        sync = (
            f" (each BN group spans {self.bn_sync_ranks} processes: BN batch {self.bn_batch_size})"
            if self.bn_sync_ranks > 1
            else ""
        )
        return (
            f"global batch {self.global_batch_size} = {self.world_size} process(es) x "
            f"{self.accumulation_steps} accumulation step(s) x {self.bn_groups_per_micro_batch} "
            f"BN group(s) x {self.bn_local_batch_size} samples{sync} (k = {self.simulated_workers} simulated "
            f"workers); peak LR {self.peak_lr:g}"
        )


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A stage of the batch schedule with its plan (a run without a schedule has one stage)."""

    index: int
    start_epoch: int
    plan: Plan


def resolve(cfg: Config, world_size: int, *, local_world_size: int | None = None) -> Plan:
    """Validate ``cfg`` (every stage of its batch schedule) for ``world_size`` processes and return
    the :class:`Plan` of the first stage.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    return resolve_stages(cfg, world_size, local_world_size=local_world_size)[0].plan


def _stages(cfg: Config) -> list[tuple[BatchStage, str]]:
    """The batch schedule as (stage, key prefix for messages); one stage without a schedule. The
    schedule's rules (first stage, order of the start epochs, each stage's fields) are the config's
    (:func:`largebatch.config.validation.check_batch_schedule`), checked by :func:`validate`."""
    t = cfg.train
    if not t.batch_schedule:
        return [
            (BatchStage(start_epoch=0, global_batch_size=t.global_batch_size, lr_scaling=cfg.optim.lr_scaling), "train")
        ]
    return [(st, f"train.batch_schedule[{i}]") for i, st in enumerate(t.batch_schedule)]


def _accumulation_steps(
    cfg: Config, per_worker: int, local: int, *, gkey: str, gbs: int, world_size: int, bkey: str, bn_req: int
) -> int:
    """Forward/backward passes per step for a per-worker batch of ``per_worker`` samples in BN groups of
    ``local`` samples per process (0: one group per micro-batch): ``train.accumulation_steps``, or when
    it is 0 one BN group per micro-batch (``micro_batch`` noise scale) or the fewest micro-batches
    within ``train.max_micro_batch_size``. The other arguments name the batch in messages.

    Raises:
        ConfigError: no number of micro-batches fits, or the given one does not divide the batch.
    """
    accum = cfg.train.accumulation_steps
    micro_noise = cfg.train.noise_scale and cfg.train.noise_scale_small_batch == "micro_batch"
    if accum == 0 and micro_noise:
        if not local:
            raise ConfigError(
                "train.noise_scale_small_batch=micro_batch with BN over the whole micro-batch "
                "(train.bn.batch_size=0): set train.accumulation_steps to 2 or more micro-batches per step"
            )
        accum = per_worker // local  # one BN group per micro-batch: the small batch is the BN batch
    if accum == 0:
        # Fewest micro-batches that divide the per-worker batch into whole BN groups within the bound.
        fits = [
            a
            for a in range(1, per_worker + 1)
            if per_worker % a == 0
            and (local == 0 or (per_worker // a) % local == 0)
            and per_worker // a <= cfg.train.max_micro_batch_size
        ]
        if not fits:
            raise ConfigError(
                f"train.max_micro_batch_size={cfg.train.max_micro_batch_size}: no number of accumulation steps "
                f"splits the per-worker batch of {per_worker} ({gkey}={gbs} / {world_size} workers) "
                f"into micro-batches of at most that many samples made of whole BN groups of "
                f"{bkey}={bn_req}; raise max_micro_batch_size or set train.accumulation_steps"
            )
        accum = fits[0]
    if per_worker % accum:
        raise ConfigError(
            f"train.accumulation_steps={accum} does not divide the per-worker batch {per_worker} "
            f"({gkey}={gbs} / {world_size} workers); choose a divisor of {per_worker} or 0 (auto)"
        )
    if micro_noise and accum < 2:
        raise ConfigError(
            f"train.noise_scale_small_batch=micro_batch needs 2 or more micro-batches per step, but "
            f"train.accumulation_steps={accum} (per-worker batch {per_worker}); set train.accumulation_steps=0 "
            f"(one BN group per micro-batch) or a divisor of {per_worker} of 2 or more"
        )
    return accum


def _plan(cfg: Config, world_size: int, *, gbs: int, bn_req: int, peak_lr: float, where: str) -> Plan:
    """The split of one global batch over processes, micro-batches and BN groups. ``where`` names the
    config entry the batch comes from (``train`` or ``train.batch_schedule[i]``) for messages."""
    sync = cfg.train.bn.sync_ranks
    gkey = f"{where}.global_batch_size"
    bkey = f"{where}.bn_batch_size" if where != "train" and bn_req != cfg.train.bn.batch_size else "train.bn.batch_size"
    if gbs % world_size:
        raise ConfigError(
            f"{gkey}={gbs} does not split evenly over {world_size} workers; "
            f"choose a multiple of {world_size} (e.g. {world_size * max(1, round(gbs / world_size))}) "
            f"or another number of workers"
        )
    per_worker = gbs // world_size
    if bn_req and bn_req % sync:
        raise ConfigError(
            f"{bkey}={bn_req} does not split over train.bn.sync_ranks={sync} processes; "
            f"choose a BN batch that is a multiple of {sync}"
        )
    local = bn_req // sync  # samples of each BN group on one process (0: the whole micro-batch)
    if local and per_worker % local:
        raise ConfigError(
            f"{gkey}={gbs} does not split into {world_size} workers x BN groups of "
            f"{bkey}={bn_req} (per-worker batch {per_worker}"
            f"{f', {local} samples of each group per process' if sync > 1 else ''}); use a global batch that is a "
            f"multiple of {world_size * local}, or a train.bn.batch_size that divides {per_worker * sync}"
        )
    accum = _accumulation_steps(
        cfg, per_worker, local, gkey=gkey, gbs=gbs, world_size=world_size, bkey=bkey, bn_req=bn_req
    )
    micro = per_worker // accum
    local = local or micro
    if micro % local:
        raise ConfigError(
            f"{bkey}={bn_req} does not divide the micro-batch of {micro} samples "
            f"({gkey}={gbs} = {world_size} workers x {accum} accumulation steps x {micro}); "
            f"the global batch must split into workers x BN groups: choose a train.bn.batch_size that divides {micro}, "
            f"or a global batch that is a multiple of {world_size * accum * local}"
        )
    return Plan(
        world_size=world_size,
        global_batch_size=gbs,
        per_worker_batch_size=per_worker,
        micro_batch_size=micro,
        accumulation_steps=accum,
        bn_batch_size=local * sync,
        bn_sync_ranks=sync,
        bn_local_batch_size=local,
        bn_groups_per_micro_batch=micro // local,
        simulated_workers=gbs // (local * sync),
        peak_lr=peak_lr,
    )


def resolve_stages(cfg: Config, world_size: int, *, local_world_size: int | None = None) -> list[Stage]:
    """Validate ``cfg`` for ``world_size`` processes and derive the :class:`Plan` of every stage of
    its batch schedule (one stage without a schedule). ``local_world_size`` (workers on this node;
    default: all of them) checks the communication topology.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    validate(cfg)
    require(world_size >= 1, "world size", world_size, "at least 1 process")
    g = cfg.train.bn.sync_ranks
    if g > 1 and world_size % g:
        raise ConfigError(
            f"train.bn.sync_ranks={g} does not divide the {world_size} processes; use a divisor of "
            f"{world_size} or another number of processes"
        )
    c = cfg.comm
    if c.algorithm != "allreduce":
        from largebatch.dist.topology import make_topology  # no torch.distributed call at import

        try:
            make_topology(
                world_size, workers_per_node=c.workers_per_node or local_world_size or world_size, torus_x=c.torus_x
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
    stages = _stages(cfg)
    plans = [
        _plan(
            cfg,
            world_size,
            gbs=stage.global_batch_size,
            bn_req=stage.bn_batch_size or cfg.train.bn.batch_size,
            where=where,
            peak_lr=stage.peak_lr
            or scaled_lr(
                stage.lr_scaling,
                cfg.optim.base_lr,
                base_batch_size=cfg.optim.base_batch_size,
                global_batch_size=stage.global_batch_size,
            ),
        )
        for stage, where in stages
    ]
    return [
        Stage(index=i, start_epoch=stage.start_epoch, plan=p) for i, ((stage, _), p) in enumerate(zip(stages, plans))
    ]
