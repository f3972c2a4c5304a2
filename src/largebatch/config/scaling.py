"""Stretching a config in time: every epoch-valued setting (schema fields with ``unit=EPOCHS``)
scaled by one factor, so a schedule keeps its shape over another number of epochs."""

from __future__ import annotations

import dataclasses
from typing import Any

from largebatch.config.fields import EPOCHS, hints, leaves, list_item_type, scalar_type
from largebatch.config.schema import Config


def epoch_keys(cfg: Config | None = None) -> list[str]:
    """The dotted keys of every epoch-valued setting of ``cfg`` (default: a default config, which has
    no batch or resize stages), e.g. ``schedule.warmup_epochs``, ``train.batch_schedule[1].start_epoch``.
    Raises nothing."""
    return [leaf.key for leaf in leaves(cfg if cfg is not None else Config()) if leaf.meta.get("unit") == EPOCHS]


def _scale(value: Any, factor: float, hint: Any, meta: Any) -> Any:
    """One epoch value (or list of them) times ``factor``: floats exactly, ints rounded to the nearest
    whole epoch and kept at or above the field's lower bound ``ge``; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_scale(v, factor, hint, meta) for v in value]
    if scalar_type(hint) is int:
        return max(meta.get("ge", -float("inf")), round(value * factor))
    return value * factor


def scale_epochs(cfg: Any, factor: float) -> Any:
    """A copy of ``cfg`` (a :class:`~largebatch.config.schema.Config` or one of its sections) with every
    epoch-valued setting multiplied by ``factor``: ``train.epochs``, the evaluation and checkpoint
    intervals, the warmup, the step decays and the poly/cosine decay end, the slow-start boundaries,
    RMSprop warm-up's alpha_SGD centre and period, and the start epochs of the batch and resize
    stages. Float settings are scaled exactly; int settings (epochs, intervals, start epochs) are
    rounded to the nearest whole epoch (Python's ``round``) and kept at or above their lower bound
    (an interval of 1 epoch stays 1). Unset optional settings (``schedule.decay_end_epochs=None``)
    stay unset. Nothing is validated here.

    Raises:
        TypeError: an epoch-valued setting that is not a number (the Python API can set any type).
    """
    types = hints(type(cfg))
    changes = {}
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), types[f.name]
        if dataclasses.is_dataclass(value):
            changes[f.name] = scale_epochs(value, factor)
        elif dataclasses.is_dataclass(list_item_type(hint)):
            changes[f.name] = [scale_epochs(item, factor) for item in value]
        elif f.metadata.get("unit") == EPOCHS:
            changes[f.name] = _scale(value, factor, hint, f.metadata)
    return dataclasses.replace(cfg, **changes)
