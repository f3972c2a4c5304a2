"""Dotted keys of the config tree (``optim.lars.eps``): every key, the value of one, its declared type."""

from __future__ import annotations

import dataclasses
from typing import Any

from largebatch.config.fields import section_fields
from largebatch.config.schema import Config


def section_type(key: str) -> type:
    """The dataclass of the section that a dotted key names (``optim.lars``: ``LarsConfig``);
    ``""``: :class:`~largebatch.config.schema.Config`.

    Raises:
        KeyError: a part of the key is not a section.
    """
    section: Any = Config
    for part in key.split(".") if key else []:
        factory = section_fields(section)[part].default_factory
        section = factory if isinstance(factory, type) else type(factory())  # a class or a lambda building one
    return section


def _section_keys(section: Any, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_section_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def all_keys(cfg: Config | None = None) -> list[str]:
    """Every settable dotted key of the config tree, e.g. ``train.global_batch_size`` (the stages of a
    list of sections are one key: ``train.batch_schedule``). Raises nothing."""
    return _section_keys(cfg if cfg is not None else Config(), "")


def get_key(cfg, key: str):
    """The value of a dotted key (``optim.lars.eps``) of a config.

    Raises:
        AttributeError: a part of the key is not in the config.
    """
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _field_type_name(key: str) -> str:
    """The declared type of a dotted key as written in the schema (``float``, ``list[float]``,
    ``float | None``), for messages.

    Raises:
        KeyError: the key is not in the config tree.
    """
    parent, _, leaf = key.rpartition(".")
    return str(section_fields(section_type(parent))[leaf].type)
