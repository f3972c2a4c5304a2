"""Recipes: one function per published run, each returning a complete :class:`~largebatch.config.Config`.

This is a leaf layer: it imports ``largebatch.config`` and nothing imports it but the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from largebatch.config import Config

_REGISTRY: dict[str, Callable[[], Config]] = {}

DEFAULT_RECIPE = "goyal2017_fashion_mnist"


def register(fn: Callable[[], Config]) -> Callable[[], Config]:
    """Register a recipe function under its name (the function's name)."""
    _REGISTRY[fn.__name__] = fn
    return fn


def recipe_names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_recipe(name: str) -> Config:
    """The config of recipe ``name``.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    _load()
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown recipe {name!r}; known recipes: {', '.join(sorted(_REGISTRY))} (see `largebatch recipes`)"
        )
    cfg = _REGISTRY[name]()
    if cfg.recipe != name:
        raise AssertionError(f"recipe function {name} returned config named {cfg.recipe!r}")
    return cfg


def _load() -> None:
    from largebatch.recipes import (  # noqa: F401
        akiba2017,
        fashion_mnist,
        goyal2017,
        lamb,
        mikami2018,
        mlperf,
        you2018_lars,
    )
