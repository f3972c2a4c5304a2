"""Optimizers for large-batch training and the param-group policy.

Use them from any training script::

    from largebatch.optim import Lars, param_groups
    opt = Lars(param_groups(model, weight_decay=5e-5, norm_adaptation=False, bias_adaptation=False),
               lr=9.0, momentum=0.9, trust_coefficient=0.001)

:class:`Lars` (You, Gitman, Ginsburg 2017), :class:`Lamb` (You et al. 2019) and :class:`RMSpropWarmup`
(Akiba et al. 2017) are ``torch.optim.Optimizer`` subclasses: any ``torch.optim.lr_scheduler`` (or
:class:`largebatch.schedules.LRSchedule`) drives their ``lr``; they survive ``copy.deepcopy``, ``pickle``
and ``state_dict`` round trips.
"""

from __future__ import annotations

import torch
from torch import nn

from largebatch.config import OPTIM_NAMES
from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.param_groups import param_groups
from largebatch.optim.rmsprop_warmup import RMSpropWarmup, akiba_alpha_sgd

__all__ = ["Lamb", "Lars", "RMSpropWarmup", "akiba_alpha_sgd", "build_optimizer", "param_groups"]


def build_optimizer(
    model: nn.Module, optim_cfg, *, lr: float, steps_per_epoch: int = 1, skip_nonfinite: bool = True
) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.name`` over :func:`param_groups` of ``model``.

    * ``sgd``: ``torch.optim.SGD``, which keeps the LR outside the momentum buffer (Goyal et al.
      2017, eq. 9: ``u = m u + g; w -= lr u``), so changing the LR needs no momentum correction
      (Remark 2 applies only to form (10)). Weight decay is added to the aggregated gradient (eq. 8).
    * ``lars``: :class:`~largebatch.optim.lars.Lars` (You, Gitman, Ginsburg 2017).
    * ``lamb``: :class:`~largebatch.optim.lamb.Lamb` (You et al. 2019).
    * ``rmsprop_warmup``: :class:`~largebatch.optim.rmsprop_warmup.RMSpropWarmup` (Akiba et al. 2017);
      its alpha_SGD schedule counts epochs in steps of ``steps_per_epoch``.

    ``skip_nonfinite`` is passed to the three large-batch optimizers (SGD has no check of its own):
    the trainer passes False because it guards every step itself.

    Raises:
        ValueError: for an unknown optimizer name.
    """
    o = optim_cfg
    groups = param_groups(
        model,
        weight_decay=o.weight_decay,
        norm_weight_decay=o.norm_weight_decay,
        bias_weight_decay=o.bias_weight_decay,
        fc_bias_weight_decay=o.fc_bias_weight_decay,
        norm_adaptation=o.norm_adaptation,
        bias_adaptation=o.bias_adaptation,
    )
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "lars":
        return Lars(
            groups,
            lr=lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            trust_coefficient=o.lars.trust_coefficient,
            eps=o.lars.eps,
            clip=o.lars.clip,
            skip_nonfinite=skip_nonfinite,
        )
    if o.name == "lamb":
        return Lamb(groups, lr=lr, betas=(o.lamb.beta1, o.lamb.beta2), eps=o.lamb.eps, skip_nonfinite=skip_nonfinite)
    if o.name == "rmsprop_warmup":
        r = o.rmsprop_warmup
        return RMSpropWarmup(
            groups,
            lr=lr,
            momentum=o.momentum,
            alpha=r.alpha,
            eps=r.eps,
            rmsprop_lr=r.lr,
            steps_per_epoch=steps_per_epoch,
            center_epochs=r.center_epochs,
            period_epochs=r.period_epochs,
            variant=r.variant,
            skip_nonfinite=skip_nonfinite,
        )
    raise ValueError(f"optim.name={o.name!r} is unknown; accepted: {', '.join(OPTIM_NAMES)}")
