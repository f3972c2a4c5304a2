"""The forms of a config: the typed tree (:class:`~largebatch.config.schema.Config`) and plain dicts.

:func:`to_dict` is the form that travels (to the workers, into ``config.json`` and checkpoints) and
:func:`config_from_dict` reads it back through OmegaConf, which types every value (``30`` in a float
field becomes ``30.0``) and moves legacy flat keys. :func:`typed_dict` gives in one pass the dict
that ``to_dict(config_from_dict(to_dict(cfg)))`` gives, for the hash; :func:`active_dict` is the
dict that ``largebatch recipes NAME`` prints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from omegaconf import OmegaConf

from largebatch.config.fields import hints, section_fields
from largebatch.config.overrides import migrate
from largebatch.config.schema import Config


def to_dict(cfg: Config) -> dict:
    """The config as plain JSON-able dicts, values as they are (no typing). Raises nothing."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. a checkpoint or config.json).

    Raises:
        omegaconf.errors.OmegaConfBaseException: an unknown key or a value of the wrong type.
    """
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(migrate(data))))


class _NotPlain(Exception):
    """A value that only OmegaConf knows how to type (a string with an interpolation, a float in an
    int field, a tuple for a list, ...)."""


def _plain(value: Any, hint: Any) -> Any:
    """``value`` as OmegaConf types it for a field of type ``hint``, where that is plain: exact
    ``bool``, ``int``, ``str`` and ``float`` values, an ``int`` in a float field (made a float),
    ``None`` in an optional field, lists and sections of those.

    Raises:
        _NotPlain: anything else.
    """
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if type(value) is not hint:
            raise _NotPlain
        return _plain_section(value)
    if typing.get_origin(hint) is list:
        if type(value) is not list:
            raise _NotPlain
        (item,) = typing.get_args(hint)
        return [_plain(v, item) for v in value]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is float and type(value) is int and abs(value) < 2**53:  # exactly representable: float() is exact
        return float(value)
    if hint in (bool, int, float) and type(value) is hint:
        return value
    if hint is str and type(value) is str and "${" not in value and value != "???":  # no interpolation, not MISSING
        return value
    raise _NotPlain


def _plain_section(section: Any) -> dict:
    types_ = hints(type(section))
    return {f.name: _plain(getattr(section, f.name), types_[f.name]) for f in dataclasses.fields(section)}


def typed_dict(cfg: Config) -> dict:
    """``to_dict(config_from_dict(to_dict(cfg)))``: the config as dicts with every value typed as its
    field declares (``30`` in a float field is ``30.0``). One pass over the tree where every value is
    plain (see :func:`_plain`; a config built by a recipe, by the overrides or read from a dict is),
    else the round trip through OmegaConf.

    Raises:
        omegaconf.errors.OmegaConfBaseException: a value OmegaConf cannot type (the round trip's error).
    """
    try:
        return _plain_section(cfg)
    except _NotPlain:
        return to_dict(config_from_dict(to_dict(cfg)))


def choice_keys() -> dict[str, tuple[str, dict[str, tuple[str, ...]]]]:
    """Per section: the key that chooses (``name``), and {key: the choices that read it} for the keys
    only some choices read (``optim.lamb`` only by ``optim.name=lamb``), from each field's ``read_by``.
    Raises nothing."""
    out = {}
    for name, cls in hints(Config).items():
        if not dataclasses.is_dataclass(cls):
            continue
        readers = {key: f.metadata["read_by"] for key, f in section_fields(cls).items() if "read_by" in f.metadata}
        if readers:
            out[name] = ("name", readers)
    return out


CHOICE_KEYS = choice_keys()
"""Per section: the key that chooses, and {key: the choices that read it} for the keys only some
choices read (``optim.lamb`` only by ``optim.name=lamb``)."""


def active_dict(cfg: Config) -> dict:
    """:func:`to_dict` without the keys that the chosen optimizer, schedule and data source do not read
    (a LAMB config has no ``optim.lars``); reading it back gives the same config, since an omitted key
    keeps its default and nothing reads it. Raises nothing."""
    data = to_dict(cfg)
    for section, (chooser, keys) in CHOICE_KEYS.items():
        chosen = data[section][chooser]
        for key, readers in keys.items():
            if chosen not in readers:
                data[section].pop(key, None)
    return data
