"""Validation of a config: every rule that does not depend on the number of processes.

:func:`validate` runs, in this order: the names that may be user factories (:func:`_check_names`),
the finiteness of every float (:func:`_check_finite`), the generic check of every field against the
choices and the range its schema field carries (:func:`check_fields`, driven by
:func:`largebatch.config.fields.setting`'s metadata), the bounds of the machine, and the rules
that relate two or more keys, written out below by subject, the batch schedule's among them
(:func:`check_batch_schedule`). The split of each batch over processes is the planner's
(:func:`largebatch.plan.resolve_stages`, which calls :func:`validate` first).

Where a new field's rule goes: a closed set of values or a numeric range of the field alone goes on
the field (``setting(..., choices=...)``, ``ge=``/``gt=``/``le=``/``lt=``, ``accepted=`` for the
message); a rule that reads another key goes into the function of its subject here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from largebatch.config.fields import accepted_text, leaves
from largebatch.config.schema import DATA_NAMES, MODEL_NAMES, Config
from largebatch.errors import ConfigError
from largebatch.registry import DATASET_GROUP, MODEL_GROUP, check_plugin, is_plugin

MAX_EPOCHS = 10**6
"""Largest ``train.epochs``: a run lays out the steps of every epoch before it starts."""
THREADS_PER_CORE = 4
"""Most ``train.threads_per_worker`` per CPU core of the machine: a little oversubscription is legal,
thousands of threads per worker exhaust the process limit."""

RANGE_KEYS = ("ge", "gt", "le", "lt", "integer", "increasing")
"""The metadata keys of a range rule (see :mod:`largebatch.config.fields`)."""


def require(cond: bool, key: str, value: Any, accepted: str) -> None:
    """Raise ConfigError('KEY=VALUE is invalid: ACCEPTED') unless ``cond``.

    Raises:
        ConfigError: ``cond`` is false.
    """
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: {accepted}")


def validate(cfg: Config) -> None:
    """Check every key of ``cfg`` that does not depend on the number of processes: names, ranges,
    contradictions between keys, the stages of the batch schedule, user factories that cannot be
    imported or called as their contract says (:func:`largebatch.registry.check_plugin`), bounds of
    the machine (threads per core). The batch split over processes is checked by
    :func:`largebatch.plan.resolve_stages`, which calls this first.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    _check_names(cfg)
    _check_finite(cfg, "")  # inf and nan are no hyperparameter (an inf weight decay passed the range checks below)
    check_fields(cfg)
    _check_machine_bounds(cfg)
    _check_optim_and_schedule(cfg)
    _check_evaluation(cfg)
    _check_data(cfg)
    _check_bn_and_comm(cfg)
    check_batch_schedule(cfg)


def _accepts(meta: Any, value: Any) -> bool:
    """Whether ``value`` is in the field's choices and range (every item of a list; ``None``, an unset
    optional setting, passes a range)."""
    if "choices" in meta:
        return value in meta["choices"]
    if value is None:
        return True
    for item in value if isinstance(value, list) else [value]:
        if meta.get("integer") and (not isinstance(item, int) or isinstance(item, bool)):
            return False
        if not (
            ("ge" not in meta or item >= meta["ge"])
            and ("gt" not in meta or item > meta["gt"])
            and ("le" not in meta or item <= meta["le"])
            and ("lt" not in meta or item < meta["lt"])
        ):
            return False
    return not meta.get("increasing") or list(value) == sorted(value)


def check_fields(cfg: Config) -> None:
    """Check every field that carries closed choices or a range in its metadata, in field order
    (batch and resize stages included, named ``train.batch_schedule[1].lr_scaling``); the names that
    may be user factories are :func:`_check_names`'s.

    Raises:
        ConfigError: ``KEY=VALUE is invalid: ACCEPTED`` for the first field that fails.
    """
    for leaf in leaves(cfg):
        meta = leaf.meta
        if meta.get("plugins") or not ("choices" in meta or any(k in meta for k in RANGE_KEYS)):
            continue
        require(_accepts(meta, leaf.value), leaf.key, leaf.value, accepted_text(meta, leaf.hint))


def _check_names(cfg: Config) -> None:
    """``data.name`` and ``model.name``: a built-in name, a torchvision model or a user factory that
    can be imported and called as its contract says.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    for name, group, key in ((cfg.data.name, DATASET_GROUP, "data.name"), (cfg.model.name, MODEL_GROUP, "model.name")):
        if name not in DATA_NAMES + MODEL_NAMES and is_plugin(name, group):
            check_plugin(name, group, key)  # a factory that cannot be imported or called as its contract says

    require(
        cfg.data.name in DATA_NAMES or is_plugin(cfg.data.name, DATASET_GROUP),
        "data.name",
        cfg.data.name,
        f"one of {', '.join(DATA_NAMES)}, or a user factory package.module:callable (docs/api.md)",
    )
    if cfg.model.name not in MODEL_NAMES and not is_plugin(cfg.model.name, MODEL_GROUP):
        from largebatch.nn.models import torchvision_classifiers  # torch: only for a name not built in

        require(
            cfg.model.name in torchvision_classifiers(),
            "model.name",
            cfg.model.name,
            "resnet_fmnist, a torchvision classification model (e.g. resnet18, resnet50, efficientnet_b0) or a "
            "user factory package.module:callable (docs/api.md)",
        )


def _check_finite(section: Any, prefix: str) -> None:
    """Refuse inf and nan in every float of the config tree (list items and batch stages included).

    Raises:
        ConfigError: naming the key and the value.
    """
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{prefix}{f.name}"
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            where = key if i is None else f"{key}[{i}]"
            if dataclasses.is_dataclass(item):
                _check_finite(item, where + ".")
            elif isinstance(item, float) and not math.isfinite(item):
                what = "a finite number" if i is None else f"finite numbers ({where} is {item!r})"
                raise ConfigError(f"{key}={value!r} is invalid: {what}, not inf or nan")


def _check_machine_bounds(cfg: Config) -> None:
    """The most epochs a run lays out, the most threads per CPU core of this machine.

    Raises:
        ConfigError: naming the key, the value and the bound.
    """
    require(
        cfg.train.epochs <= MAX_EPOCHS,
        "train.epochs",
        cfg.train.epochs,
        f"a positive integer up to {MAX_EPOCHS:,} (the run lays out every epoch's steps before it starts; "
        f"ImageNet runs take 90)",
    )
    cores = os.cpu_count() or 1
    require(
        cfg.train.threads_per_worker <= THREADS_PER_CORE * cores,
        "train.threads_per_worker",
        cfg.train.threads_per_worker,
        f"an integer in [0, {THREADS_PER_CORE * cores}]: at most {THREADS_PER_CORE} threads per CPU core of this "
        f"machine ({cores} cores; more only slow the run down, and thousands exhaust the process limit); 0: the "
        f"cores divided among the local workers",
    )


def _check_optim_and_schedule(cfg: Config) -> None:
    """Slow-start boundaries against their factors; Nesterov against the momentum.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    slow = list(cfg.schedule.slow_start.epochs)
    require(
        slow == sorted(slow) and len(cfg.schedule.slow_start.factors) == len(slow) + 1,
        "schedule.slow_start.factors",
        cfg.schedule.slow_start.factors,
        f"one more factor than schedule.slow_start.epochs ({len(slow)} boundaries, increasing)",
    )
    require(
        not (cfg.optim.nesterov and cfg.optim.momentum == 0),
        "optim.nesterov",
        cfg.optim.nesterov,
        "false when optim.momentum is 0 (Nesterov needs momentum)",
    )


def _check_evaluation(cfg: Config) -> None:
    """The validation targets and evaluation steps need a validation split; ``train.init_from`` must
    exist.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    t = cfg.train
    for key in ("stop_at_val_top1", "val_target_top1"):
        value = getattr(t, key)
        require(
            value == 0 or cfg.data.val_size > 0,
            f"train.{key}",
            value,
            "0 unless data.val_size > 0 (the target is on the validation split; set data.val_size=5000)",
        )
    require(
        not t.val_at_steps or cfg.data.val_size > 0,
        "train.val_at_steps",
        t.val_at_steps,
        "[] unless data.val_size > 0 (set data.val_size=5000)",
    )
    require(
        t.val_every_steps == 0 or cfg.data.val_size > 0,
        "train.val_every_steps",
        t.val_every_steps,
        "0 unless data.val_size > 0 (set data.val_size=5000)",
    )
    require(
        not t.init_from or os.path.isfile(t.init_from),
        "train.init_from",
        t.init_from,
        "an existing checkpoint file (e.g. RUN/checkpoints/step_00001000.pt), or empty",
    )


def _check_data(cfg: Config) -> None:
    """What imagefolder needs and refuses; the resize stages' epochs; the decoder's place.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    d, imagefolder = cfg.data, cfg.data.name == "imagefolder"
    if imagefolder:
        require(
            bool(d.root),
            "data.root",
            d.root,
            "an ImageNet-layout folder with train/<class>/ and val/<class>/ is required for imagefolder",
        )
    require(
        d.imagefolder.decode_on == "workers" or d.imagefolder.decoder == "torchvision",
        "data.imagefolder.decode_on",
        d.imagefolder.decode_on,
        "workers unless data.imagefolder.decoder=torchvision (dali always decodes on the device)",
    )
    require(
        not d.resize_stages or not imagefolder,
        "data.resize_stages",
        d.resize_stages,
        "empty for imagefolder (progressive resizing is built for in-memory data: fashion_mnist, "
        "synthetic, user data sets; set data.image_size_px per run instead)",
    )
    previous_start = -1
    for i, stage in enumerate(d.resize_stages):
        require(
            previous_start < stage.start_epoch < cfg.train.epochs,
            f"data.resize_stages[{i}].start_epoch",
            stage.start_epoch,
            f"an epoch after the previous stage's and before train.epochs={cfg.train.epochs}",
        )
        previous_start = stage.start_epoch
    require(
        d.val_size == 0 or not imagefolder,
        "data.val_size",
        d.val_size,
        "0 for imagefolder (a held-out split is built for fashion_mnist and synthetic; on "
        "ImageNet keep the official val/ as the test split and hold out a train/ subset by hand)",
    )


def _check_bn_and_comm(cfg: Config) -> None:
    """Pooled BN variances need last-batch statistics; the topology's sizes are >= 0.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    require(
        cfg.train.bn.variance_averaging == "mean" or cfg.train.bn.statistics == "last_batch",
        "train.bn.variance_averaging",
        cfg.train.bn.variance_averaging,
        "'mean' unless train.bn.statistics=last_batch (pooling applies to last-batch statistics)",
    )
    c = cfg.comm
    require(
        c.workers_per_node >= 0 and c.torus_x >= 0,
        "comm.workers_per_node/torus_x",
        (c.workers_per_node, c.torus_x),
        "integers >= 0 (0: automatic)",
    )


def check_batch_schedule(cfg: Config) -> None:
    """The rules of ``train.batch_schedule`` that relate its stages to each other and to the run (each
    stage's own fields, its batch, LR rule, peak LR and BN batch, are checked on their fields by
    :func:`check_fields`): the first stage starts the run at epoch 0 with ``train.global_batch_size``,
    and every later one starts after the previous one and before ``train.epochs``.

    Raises:
        ConfigError: naming the stage's key (``train.batch_schedule[1].start_epoch``), the value and
            what is accepted.
    """
    t = cfg.train
    for i, st in enumerate(t.batch_schedule):
        key = f"train.batch_schedule[{i}]"
        if i == 0:
            require(st.start_epoch == 0, f"{key}.start_epoch", st.start_epoch, "0 (the first stage starts the run)")
            require(
                st.global_batch_size == t.global_batch_size,
                f"{key}.global_batch_size",
                st.global_batch_size,
                f"equal to train.global_batch_size={t.global_batch_size} (the first stage's batch); set both",
            )
        else:
            prev = t.batch_schedule[i - 1].start_epoch
            require(
                prev < st.start_epoch < t.epochs,
                f"{key}.start_epoch",
                st.start_epoch,
                f"an epoch after the previous stage's ({prev}) and before train.epochs={t.epochs}",
            )


def schedule_warnings(cfg: Config) -> list[str]:
    """One line per schedule point that falls at or after the end of training, where it never
    applies (a step decay at epoch 30 of a 9-epoch run, a warmup as long as the run, a poly or cosine
    decay that ends after it); empty when there is none. Raises nothing."""
    epochs, s = cfg.train.epochs, cfg.schedule
    out = []
    late = [e for e in s.decay_epochs if e >= epochs] if s.name == "step" else []
    if late:
        out.append(
            f"schedule.decay_epochs {', '.join(f'{e:g}' for e in late)} fall at or after the end of training "
            f"(train.epochs={epochs:g}): those decays never apply"
        )
    if s.warmup_epochs >= epochs:
        out.append(
            f"schedule.warmup_epochs={s.warmup_epochs:g} >= train.epochs={epochs:g}: the run ends inside the warmup"
        )
    if s.name in ("poly", "cosine") and s.decay_end_epochs is not None and s.decay_end_epochs > epochs:
        out.append(
            f"schedule.decay_end_epochs={s.decay_end_epochs:g} > train.epochs={epochs:g}: the LR never reaches "
            f"schedule.end_lr={s.end_lr:g}"
        )
    return out
