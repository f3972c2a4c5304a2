"""``--set KEY=VALUE`` overrides and the keys of older configs.

:func:`merge_overrides` parses overrides (values are YAML) and merges them into the typed tree with
OmegaConf, so an unknown key or a value of the wrong type is rejected by the library rather than by
hand-written parsing; :func:`apply_overrides` adds the one step of loading a recipe that depends on
what the overrides changed, the optimizer switch's reference LR
(:func:`largebatch.config.reference_lr.with_reference_lr`). :data:`LEGACY_KEYS` and :func:`migrate`
keep the flat keys of configs written before sections were nested working, in ``--set`` lines,
checkpoints and run directories alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from largebatch.config.fields import hints
from largebatch.config.keys import _field_type_name, all_keys
from largebatch.config.reference_lr import with_reference_lr
from largebatch.config.schema import Config
from largebatch.errors import ConfigError

LEGACY_KEYS = {
    "optim.trust_coefficient": "optim.lars.trust_coefficient",
    "optim.lars_eps": "optim.lars.eps",
    "optim.lars_clip": "optim.lars.clip",
    "optim.lamb_beta1": "optim.lamb.beta1",
    "optim.lamb_beta2": "optim.lamb.beta2",
    "optim.lamb_eps": "optim.lamb.eps",
    "optim.rmsprop_lr": "optim.rmsprop_warmup.lr",
    "optim.rmsprop_alpha": "optim.rmsprop_warmup.alpha",
    "optim.rmsprop_eps": "optim.rmsprop_warmup.eps",
    "optim.alpha_sgd_center_epochs": "optim.rmsprop_warmup.center_epochs",
    "optim.alpha_sgd_period_epochs": "optim.rmsprop_warmup.period_epochs",
    "optim.alpha_sgd_variant": "optim.rmsprop_warmup.variant",
    "schedule.poly_power": "schedule.poly.power",
    "schedule.slow_start_epochs": "schedule.slow_start.epochs",
    "schedule.slow_start_factors": "schedule.slow_start.factors",
    "data.synthetic_train_samples": "data.synthetic.train_samples",
    "data.synthetic_test_samples": "data.synthetic.test_samples",
    "data.synthetic_classes": "data.synthetic.classes",
    "data.synthetic_channels": "data.synthetic.channels",
    "data.loader_workers": "data.imagefolder.loader_workers",
    "data.decoder": "data.imagefolder.decoder",
    "data.decode_on": "data.imagefolder.decode_on",
    "data.val_labels": "data.imagefolder.val_labels",
    "data.bad_file_policy": "data.imagefolder.bad_file_policy",
    "train.bn_batch_size": "train.bn.batch_size",
    "train.bn_statistics": "train.bn.statistics",
    "train.bn_variance_averaging": "train.bn.variance_averaging",
    "train.precise_bn_batches": "train.bn.precise_batches",
    "train.bn_sync_ranks": "train.bn.sync_ranks",
}
"""Flat keys of configs written before the optimizer, schedule, data-source and BN settings were
nested (``optim.lars_eps`` is now ``optim.lars.eps``, ``train.bn_batch_size`` ``train.bn.batch_size``): :func:`migrate` moves them, so old checkpoints, run
directories and ``--set`` lines keep working."""

MAX_NESTING = 32
"""Deepest nesting of mappings and lists a config file or ``--set`` value may hold (the config tree
itself is 4 deep)."""
MAX_NODES = 10_000
"""Most mappings and lists a config may expand to (a config has a few hundred; YAML aliases of
aliases can expand a small file into billions)."""


def migrate_key(key: str) -> str:
    """The current name of a config key (a legacy flat key is renamed; others are returned as given,
    stripped). Raises nothing."""
    return LEGACY_KEYS.get(key.strip(), key.strip())


def migrate(data: dict) -> dict:
    """A copy of a config dict (``to_dict`` output, a checkpoint's or a run's ``config.json``) with
    every legacy flat key moved to its nested place. Raises nothing."""
    out = {sec: dict(val) if isinstance(val, dict) else val for sec, val in data.items()}
    for old, new in LEGACY_KEYS.items():
        section, name = old.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            value = out[section].pop(name)
            _, sub, leaf = new.split(".")
            out[section].setdefault(sub, {})
            out[section][sub] = {**out[section][sub], leaf: value}
    return out


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``KEY=VALUE`` overrides applied (values parsed as YAML), as
    ``--set`` applies them to a recipe: :func:`merge_overrides`, then, when ``optim.name`` changed
    and no LR key was given, the new optimizer's reference LR
    (:func:`~largebatch.config.reference_lr.with_reference_lr`).

    Raises:
        ConfigError: an override without ``=``, an unknown key (the message lists the keys of that
            section), a value that cannot be converted to the key's type, or a value that is a
            recursive YAML alias or nested too deeply (see :func:`check_yaml_tree`).
    """
    overrides = list(overrides)
    return with_reference_lr(cfg, merge_overrides(cfg, overrides), overrides)


def merge_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``KEY=VALUE`` overrides merged into the typed tree (values parsed
    as YAML; a legacy flat key names its nested place), nothing else changed.

    Raises:
        ConfigError: as :func:`apply_overrides` says.
    """
    overrides = list(overrides)
    keys = all_keys(cfg)
    base = OmegaConf.structured(cfg)
    for item in overrides:
        base = _merge_one(base, item, keys)
    try:
        result = OmegaConf.to_object(base)
    except OmegaConfBaseException as err:  # e.g. a required list entry left incomplete
        raise ConfigError(
            f"the overrides {overrides!r} do not give a complete config: {str(err).splitlines()[0]}"
        ) from None
    _check_list_items(result, "")
    return result


def _unknown_key(key: str, raw: str, keys: list[str]) -> ConfigError:
    """The error for a key that is not in the tree: the keys of its section, or the sections, and the
    nearest key when one is close."""
    section = key.rsplit(".", 1)[0] if "." in key else ""
    near = [k for k in keys if k.startswith(section + ".")] if section else []
    accepted = near or sorted({k.split(".")[0] for k in keys})
    guess = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.75)
    return ConfigError(
        f"unknown config key {key!r} (value {raw!r}); {f'did you mean {guess[0]!r}? ' if guess else ''}"
        f"accepted keys{' in ' + repr(section) if near else ''}: {', '.join(accepted)}"
    )


def _merge_one(base: DictConfig, item: str, keys: list[str]) -> DictConfig:
    """``base`` with one ``KEY=VALUE`` override merged.

    Raises:
        ConfigError: as :func:`apply_overrides` says.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE; example: --set train.epochs=10")
    key, raw = item.split("=", 1)
    key = migrate_key(key)  # a legacy flat key (optim.lars_eps) names its nested place (optim.lars.eps)
    if key not in keys:
        raise _unknown_key(key, raw, keys)
    shown = raw if len(raw) <= 100 else f"{raw[:100]}... ({len(raw)} characters)"
    try:
        parsed = yaml.safe_load(raw)
    except Exception:  # not YAML, too deep, a bad date (ValueError): omegaconf reports it
        parsed = None
    check_yaml_tree(parsed, f"config key {key!r}")  # recursive aliases, deep nesting: before omegaconf recurses
    try:
        patch = OmegaConf.from_dotlist([f"{key}={raw}"])
        return OmegaConf.merge(base, patch)
    except RecursionError:
        raise ConfigError(
            f"config key {key!r} got value {shown!r}, which is nested too deeply for a {_field_type_name(key)}"
        ) from None
    except (ConfigKeyError, ConfigAttributeError) as err:  # pragma: no cover - caught above
        raise ConfigError(f"unknown config key {key!r}: {err}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"config key {key!r} got value {shown!r}, which is not a valid "
            f"{_field_type_name(key)}: {str(err).splitlines()[0]}"
        ) from None
    except (TypeError, ValueError) as err:  # e.g. a mapping given for a list key: omegaconf cannot merge them
        raise ConfigError(
            f"config key {key!r} got value {shown!r}, which is not a valid {_field_type_name(key)}: {err}"
        ) from None
    except yaml.YAMLError as err:  # the value is not YAML at all (e.g. an unclosed "[")
        raise ConfigError(
            f"config key {key!r} got value {shown!r}, which is not valid YAML for a "
            f"{_field_type_name(key)} ({str(err).splitlines()[0]}); quote strings, write lists as [a, b]"
        ) from None


def _check_list_items(section: Any, prefix: str) -> None:
    """omegaconf does not type the items of a ``list[float]`` node on merge (``[{a: 1}]`` passes):
    check every list field's items against the declared item type.

    Raises:
        ConfigError: naming the key, the bad item and the type expected.
    """
    types = hints(type(section))
    for f in dataclasses.fields(section):
        value, hint, key = getattr(section, f.name), types[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_list_items(value, key + ".")
        elif typing.get_origin(hint) is list and isinstance(value, list):
            (item_type,) = typing.get_args(hint)
            accepted = (int, float) if item_type is float else item_type  # an int is a valid float
            for i, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, accepted):
                    raise ConfigError(
                        f"config key {key!r}: item {i} is {item!r}, expected a {item_type.__name__}"
                        + (f"; example: {key}=[30, 60, 80]" if item_type in (int, float) else " mapping")
                    )
                if dataclasses.is_dataclass(item):
                    _check_list_items(item, f"{key}[{i}].")


def check_yaml_tree(data: Any, where: str) -> None:
    """Refuse what YAML can build but a config never is: a recursive alias (``a: &a [*a]``, a
    structure inside itself), nesting deeper than :data:`MAX_NESTING` and aliases expanding to more
    than :data:`MAX_NODES` nodes, which would otherwise end in a RecursionError or fill the memory.
    Iterative, so a deep tree cannot overflow the stack here.

    Raises:
        ConfigError: naming ``where`` and the path of the offending node.
    """
    stack: list[tuple[Any, str, int, bool]] = [(data, "", 0, False)]
    on_path: set[int] = set()
    nodes = 0
    while stack:
        node, path, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if not isinstance(node, dict | list):
            continue
        if id(node) in on_path:
            raise ConfigError(
                f"{where}: {path[:80] or 'the top level'} is a recursive YAML alias (an anchor used inside "
                f"itself), which no config holds; write the values out"
            )
        nodes += 1
        if depth > MAX_NESTING or nodes > MAX_NODES:
            what = f"nested more than {MAX_NESTING} levels deep" if depth > MAX_NESTING else "too large"
            raise ConfigError(
                f"{where}: {what} (at {path[:80]}); a config is a mapping of sections of settings "
                f"(`largebatch recipes NAME` prints one)"
            )
        on_path.add(id(node))
        stack.append((node, path, depth, True))
        children = list(node.items() if isinstance(node, dict) else enumerate(node))
        for k, child in reversed(children):  # popped in the file's order: the first offender is named
            sub = (f"{path}.{k}" if path else str(k)) if isinstance(node, dict) else f"{path}[{k}]"
            stack.append((child, sub, depth + 1, False))
