"""The reference learning rate of each optimizer, and the step of loading a config that applies it:
``--set optim.name=NAME`` on a recipe whose optimizer is another one takes NAME's reference LR
(docs/optimizers.md), because the LR of one optimizer means nothing to another.

This is a step of loading a recipe (or a stored config) with overrides, after the overrides are
merged (:func:`largebatch.config.overrides.merge_overrides`), not of parsing them:
:func:`largebatch.config.overrides.apply_overrides` runs both steps, and the places that load a
recipe (``largebatch.api.load_config``, ``largebatch.study.sweep.run_config``, ``largebatch eval``)
call them one after the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from largebatch.config.schema import Config


@dataclass(frozen=True)
class ReferenceLR:
    """An optimizer's reference learning rate: ``base_lr`` at ``base_batch_size`` images, carried to
    other global batch sizes by ``lr_scaling`` (Goyal et al. 2017 sec. 2.1 for the linear rule;
    Krizhevsky 2014 and You et al. 2019 sec. 4 for the square-root rule)."""

    base_lr: float
    base_batch_size: int
    lr_scaling: str
    source: str


REFERENCE_LRS: dict[str, ReferenceLR] = {
    # The Fashion-MNIST ResNet-8 of the CPU recipes; docs/optimizers.md says where each was chosen.
    "sgd": ReferenceLR(0.4, 256, "linear", "goyal2017_fashion_mnist_28px: tuned at 512 (docs/recipes.md)"),
    "lars": ReferenceLR(
        2.5,
        256,
        "linear",
        "you2018_lars_fashion_mnist untuned (trust coefficient 0.001); "
        "its 2048 tuning (3.8) fits that batch and schedule only",
    ),
    "lamb": ReferenceLR(
        0.01,
        256,
        "linear",
        "chosen at 512 on the default recipe in 2 epochs: 0.005-0.0075 per 256 "
        "trained slower, 0.015 diverged (docs/optimizers.md)",
    ),
    "rmsprop_warmup": ReferenceLR(
        0.4,
        256,
        "linear",
        "the default recipe's LR as eta_base of the SGD phase (akiba2017_fashion_mnist untuned); "
        "its 2048 tuning (0.0916) fits that batch and schedule only",
    ),
}
"""The LR each optimizer takes when ``--set optim.name=NAME`` switches a recipe's optimizer and no
``optim.base_lr``, ``optim.base_batch_size`` or ``optim.lr_scaling`` is given: the LR of one
optimizer means nothing to another (LARS multiplies it by a trust ratio of about 0.001)."""

LR_KEYS = frozenset({"optim.base_lr", "optim.base_batch_size", "optim.lr_scaling"})
"""The keys of an LR: when the overrides set any of them, all three stay as the overrides left them."""


def with_reference_lr(base: Config, cfg: Config, overrides: Iterable[str]) -> Config:
    """``cfg`` (``base`` with ``overrides`` merged) with the reference LR of its optimizer
    (:data:`REFERENCE_LRS`: ``optim.base_lr``, ``optim.base_batch_size`` and ``optim.lr_scaling``)
    when its ``optim.name`` differs from ``base``'s and none of :data:`LR_KEYS` is among the keys
    the ``KEY=VALUE`` overrides set; otherwise ``cfg`` itself. Raises nothing."""
    given = {item.split("=", 1)[0].strip() for item in overrides}
    if cfg.optim.name == base.optim.name or cfg.optim.name not in REFERENCE_LRS or given & LR_KEYS:
        return cfg
    ref = REFERENCE_LRS[cfg.optim.name]
    optim = dataclasses.replace(
        cfg.optim, base_lr=ref.base_lr, base_batch_size=ref.base_batch_size, lr_scaling=ref.lr_scaling
    )
    return dataclasses.replace(cfg, optim=optim)
