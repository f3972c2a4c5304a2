"""User models and data sets, named in the config like the built-in ones.

``model.name`` and ``data.name`` take, besides the built-in names, either

* ``package.module:callable``: imported in every worker (the module must be importable there: on
  ``sys.path``, e.g. installed or on ``PYTHONPATH``), or
* the name of an entry point of the group ``largebatch.models`` or ``largebatch.datasets`` that an
  installed package declares (``[project.entry-points."largebatch.models"] mynet = "mypkg:build"``).

Contracts:

* a **model factory** is called as ``factory(num_classes=int, in_channels=int)`` and returns an
  ``nn.Module`` mapping a float (N, C, H, W) batch to (N, num_classes) logits. Every ``BatchNorm2d``
  in it becomes a ghost-BN layer (:func:`largebatch.nn.norm.convert_to_ghost_bn`), and Goyal et al.
  2017's initialization (sec. 5.1) is applied where it fits, as for the built-in models.
* a **data-set factory** is called as ``factory(root=str, seed=int)`` and returns a mapping with
  ``train_images`` and ``test_images`` (uint8 tensors (N, C, H, W)), ``train_labels`` and
  ``test_labels`` (int64 (N,) in [0, num_classes)) and ``num_classes`` (int). The images are held in
  memory like Fashion-MNIST's: ``data.val_size``, ``data.train_subset``, augmentation and the
  per-channel normalization apply to them the same way. A folder of JPEGs is ``data.name=imagefolder``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from largebatch.errors import ConfigError

MODEL_GROUP = "largebatch.models"
DATASET_GROUP = "largebatch.datasets"


class RegistryError(ConfigError):
    """A user model or data set that cannot be found, imported or used (one line, naming the key); a
    :class:`~largebatch.config.ConfigError`, so the CLI reports it before any worker starts (exit 2)."""


def is_plugin(name: str, group: str) -> bool:
    """True if ``name`` is a ``module:callable`` path or an entry point of ``group``."""
    return ":" in name or any(ep.name == name for ep in metadata.entry_points(group=group))


TRUST_FLAG = "--trust-plugins"
"""The option of the commands that read a run (``eval``, ``critical-batch``) that lets them load the
plugin model or data set the run's stored config names."""


def refuse_plugins_named_by_file(
    cfg: Any, source: str, *, named_on_command_line: Iterable[str] = (), trusted: bool = False
) -> None:
    """Refuse to import or call a plugin that only a file names.

    A checkpoint or a run's ``config.json`` is data: it may come from anyone (a colleague's run
    directory, a download), and its checksum only says the bytes are whole, not who wrote them. A
    ``module:callable`` or entry-point name in its ``model.name`` or ``data.name`` would run that code
    in this process. So a command that reads a stored config loads such a plugin only when the user
    names it (``--set model.name=...`` on the command line, which ``named_on_command_line`` lists
    by key) or opts in for the file (``trusted``, the ``--trust-plugins`` option). Built-in models
    and data sets need neither.

    Args:
        cfg: the config as it will be used (a :class:`largebatch.config.Config`).
        source: the file the stored config came from (named in the error).
        named_on_command_line: the keys the user's own ``--set`` items give.
        trusted: the user opted in for this file.

    Raises:
        ConfigError: a plugin named only by the file, without the opt-in (one line: the key, the
            name, the file and the two ways to go on). Nothing has been imported.
    """
    if trusted:
        return
    named = set(named_on_command_line)
    for key, name, group in (("model.name", cfg.model.name, MODEL_GROUP), ("data.name", cfg.data.name, DATASET_GROUP)):
        if key not in named and is_plugin(name, group):
            raise ConfigError(
                f"{source} names {key}={name!r}, code outside largebatch, and loading it would run that code; "
                f"nothing was imported. If you trust the file, pass {TRUST_FLAG}, or name the plugin yourself "
                f"with --set {key}={name}"
            )


def set_keys(overrides: Iterable[str]) -> set[str]:
    """The keys that ``KEY=VALUE`` items name (``["model.name=m:f"]`` -> ``{"model.name"}``)."""
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def load_plugin(name: str, group: str, key: str) -> Callable[..., Any]:
    """The callable that ``name`` (``module:callable`` or an entry-point name of ``group``) denotes.

    Raises:
        RegistryError: the module cannot be imported, the attribute is missing or not callable, or
            no entry point has that name; the message names ``key`` and how to fix it.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # any error of the user's module: report it in one line
            raise RegistryError(
                f"{key}={name!r}: cannot import {module_name!r} ({type(err).__name__}: {err}); "
                f"put the module on PYTHONPATH or install its package"
            ) from None
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise RegistryError(f"{key}={name!r}: module {module_name!r} has no attribute {attr!r}")
    else:
        found = [ep for ep in metadata.entry_points(group=group) if ep.name == name]
        if not found:
            raise RegistryError(
                f"{key}={name!r}: no built-in name and no entry point of group {group!r}; give package.module:callable"
            )
        try:
            target = found[0].load()
        except Exception as err:
            raise RegistryError(
                f"{key}={name!r}: entry point {found[0].value!r} failed to load ({type(err).__name__}: {err})"
            ) from None
    if not callable(target):
        raise RegistryError(f"{key}={name!r} is a {type(target).__name__}, not a callable")
    return target


FACTORY_KEYWORDS = {MODEL_GROUP: ("num_classes", "in_channels"), DATASET_GROUP: ("root", "seed")}
"""The keywords each group's factory is called with (the contracts above)."""


def check_plugin(name: str, group: str, key: str) -> Callable[..., Any]:
    """Load the factory ``name`` of ``group`` and check, without calling it, that it can be called
    with the group's keywords (:data:`FACTORY_KEYWORDS`): run before any worker starts, so that
    ``model.name=os:system`` is refused in one line instead of failing in every worker.

    Raises:
        RegistryError: the factory cannot be loaded (see :func:`load_plugin`), its signature cannot
            be read (a C built-in such as ``builtins:dict`` is no factory), or it does not take those
            keywords; the message names ``key``, the name and the call expected.
    """
    factory = load_plugin(name, group, key)
    keywords = FACTORY_KEYWORDS[group]
    call = f"factory({', '.join(f'{k}=...' for k in keywords)})"
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise RegistryError(
            f"{key}={name!r}: its signature cannot be read (a built-in, not a factory); the factory must be a "
            f"Python function or class called as {call} (docs/api.md)"
        ) from None
    try:
        signature.bind(**dict.fromkeys(keywords))
    except TypeError as err:
        raise RegistryError(
            f"{key}={name!r} cannot be called as {call}: its signature is {signature} ({err}); give a Python "
            f"function or class taking the keywords {', '.join(keywords)} (docs/api.md)"
        ) from None
    return factory


def _call(name: str, group: str, key: str, **kwargs):
    """The factory ``name`` of ``group`` called with ``kwargs``; any error it raises becomes one line."""
    factory = load_plugin(name, group, key)
    try:
        return factory(**kwargs)
    except Exception as err:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise RegistryError(
            f"{key}={name!r}: the factory failed with {type(err).__name__}: {err} (it is called as factory({args}))"
        ) from None


def build_user_model(name: str, *, num_classes: int, in_channels: int):
    """Call a user model factory and check that it returned an ``nn.Module``.

    Raises:
        RegistryError: the factory is missing, fails, or returns something else.
    """
    from torch import nn

    model = _call(name, MODEL_GROUP, "model.name", num_classes=num_classes, in_channels=in_channels)
    if not isinstance(model, nn.Module):
        raise RegistryError(f"model.name={name!r}: the factory returned a {type(model).__name__}, not an nn.Module")
    return model


DATASET_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "num_classes")


def load_user_dataset(name: str, *, root: str, seed: int) -> dict:
    """Call a user data-set factory and check its tensors (dtypes, shapes, label range).

    Raises:
        RegistryError: naming what is missing or wrong.
    """
    import torch

    data = _call(name, DATASET_GROUP, "data.name", root=root, seed=seed)
    missing = [k for k in DATASET_KEYS if not (hasattr(data, "keys") and k in data)]
    if missing:
        raise RegistryError(
            f"data.name={name!r}: the factory's result lacks {', '.join(missing)}; return a dict "
            f"with {', '.join(DATASET_KEYS)}"
        )
    k = int(data["num_classes"])
    for split in ("train", "test"):
        x, y = data[f"{split}_images"], data[f"{split}_labels"]
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4):
            raise RegistryError(
                f"data.name={name!r}: {split}_images must be a uint8 tensor (N, C, H, W), got "
                f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}"
            )
        if not (
            isinstance(y, torch.Tensor) and y.dim() == 1 and y.shape[0] == x.shape[0] and not y.is_floating_point()
        ):
            raise RegistryError(
                f"data.name={name!r}: {split}_labels must be an integer tensor (N,) with one label "
                f"per image ({x.shape[0]})"
            )
        if y.numel() and not (0 <= int(y.min()) and int(y.max()) < k):
            raise RegistryError(f"data.name={name!r}: {split}_labels outside [0, num_classes={k})")
    return {
        **data,
        "train_labels": data["train_labels"].long(),
        "test_labels": data["test_labels"].long(),
        "num_classes": k,
    }
