"""What each setting of the config tree accepts, carried on the field itself: a dataclass field made by
:func:`setting` holds its closed choices, its numeric range, its unit and the message text of its
rule in ``field.metadata``, and the helpers here read it back. The generic validator
(:func:`largebatch.config.validation.check_fields`) and :func:`largebatch.config.scaling.scale_epochs`
walk the tree with :func:`leaves`; nothing here knows a particular key.

Metadata keys (all optional):

``choices``
    the closed set of accepted values (``plugins=True``: the set is open to user factories, and the
    rule is written out in :mod:`largebatch.config.validation`);
``ge``, ``gt``, ``le``, ``lt``
    numeric bounds, applied to the value or to every item of a list (``None`` passes: an optional
    setting left unset);
``integer``
    the value (or every item) must be an ``int`` and not a ``bool`` (the Python API can set any type);
``increasing``
    a list must be in non-decreasing order;
``accepted``
    the text of the error message after ``is invalid:``; derived from the rest when absent;
``unit``
    the unit of the value (``"epochs"``, ``"px"``, ``"samples"``, ...); ``"epochs"`` marks the
    epoch-valued settings that :func:`~largebatch.config.scaling.scale_epochs` scales;
``read_by``
    the values of the section's ``name`` that read this setting (``optim.lars`` only by
    ``optim.name=lars``); others keep it at its default and :func:`~largebatch.config.convert.active_dict`
    leaves it out.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator
from dataclasses import MISSING, field
from typing import Any

EPOCHS = "epochs"
"""The ``unit`` of every epoch-valued setting."""


def setting(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    choices: tuple | None = None,
    plugins: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
    increasing: bool = False,
    accepted: str | None = None,
    unit: str | None = None,
    read_by: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with ``default`` (or ``factory`` for a list) whose metadata holds the rest
    (the keys the module docstring lists); unset options are left out of the metadata.

    Raises:
        TypeError: both or neither of ``default`` and ``factory`` given.
    """
    if (default is MISSING) == (factory is MISSING):
        raise TypeError("setting() takes a default or a factory, exactly one")
    given = {
        "choices": choices,
        "plugins": plugins,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "integer": integer,
        "increasing": increasing,
        "accepted": accepted,
        "unit": unit,
        "read_by": read_by,
    }
    metadata = {key: value for key, value in given.items() if value is not None and value is not False}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a config dataclass (``list[float]``, ``float | None``, ...), cached.

    Raises:
        NameError: an annotation names a type the schema does not define.
    """
    return typing.get_type_hints(cls)


def list_item_type(hint: Any) -> Any:
    """The item type of a ``list[X]`` hint, else None. Raises nothing."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return item
    return None


def scalar_type(hint: Any) -> Any:
    """``int``, ``float``, ``str`` or ``bool`` for a hint of that type, of a list of it or of an optional
    one (``float | None``); the hint itself otherwise. Raises nothing."""
    item = list_item_type(hint)
    if item is not None:
        return item
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting of a config tree, as :func:`leaves` finds it."""

    key: str
    """Dotted key, with the index of a list of sections: ``train.batch_schedule[1].lr_scaling``."""
    value: Any
    field: dataclasses.Field
    hint: Any
    """The resolved type hint of the field."""

    @property
    def meta(self) -> typing.Mapping[str, Any]:
        return self.field.metadata


def leaves(section: Any, prefix: str = "") -> Iterator[Leaf]:
    """Every setting of ``section`` (a config dataclass) in field order, depth first: nested sections
    and the items of lists of sections (batch and resize stages) are entered, not yielded. Raises nothing."""
    types = hints(type(section))
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from leaves(value, key + ".")
        elif dataclasses.is_dataclass(list_item_type(types[f.name])):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from leaves(item, f"{key}[{i}].")
        else:
            yield Leaf(key, value, f, types[f.name])


def section_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a config dataclass by name. Raises nothing."""
    return {f.name: f for f in dataclasses.fields(cls)}


def choices_of(cls: type, name: str) -> tuple:
    """The closed choices of field ``name`` of ``cls`` (``choices_of(OptimConfig, "name")``).

    Raises:
        KeyError: the field has no choices.
    """
    return section_fields(cls)[name].metadata["choices"]


def _bound(value: float) -> str:
    return f"{value:g}"


def accepted_text(meta: typing.Mapping[str, Any], hint: Any) -> str:
    """What a setting accepts, as its error message says it: ``meta["accepted"]`` when given, else
    ``one of a, b`` for choices, ``a positive integer``, ``an integer >= 0``, ``a float > 0``,
    ``a float in [0, 1)``, ... from the bounds and the type.

    Raises:
        ValueError: the metadata has neither choices nor bounds nor a text.
    """
    if "accepted" in meta:
        return meta["accepted"]
    if "choices" in meta:
        return f"one of {', '.join(str(c) for c in meta['choices'])}"
    kind = "integer" if scalar_type(hint) is int else "float"
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"a {kind} in {low[0]}{_bound(low[1])}, {_bound(high[1])}{high[0]}"
    if low and kind == "integer" and low == ("[", 1):
        return "a positive integer"
    if low:
        article = "an" if kind == "integer" else "a"
        return f"{article} {kind} {'>=' if low[0] == '[' else '>'} {_bound(low[1])}"
    raise ValueError(f"no accepted text for a setting with metadata {dict(meta)}")
