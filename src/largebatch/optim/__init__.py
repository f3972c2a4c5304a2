"""Optimizers for large-batch training and the param-group policy."""

from __future__ import annotations

import torch
from torch import nn

from largebatch.optim.param_groups import param_groups

__all__ = ["build_optimizer", "param_groups"]


def build_optimizer(model: nn.Module, optim_cfg, *, lr: float, steps_per_epoch: int = 1) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.name`` over :func:`param_groups` of ``model``.

    * ``sgd``: ``torch.optim.SGD``, which keeps the LR outside the momentum buffer (Goyal et al.
      2017, eq. 9: ``u = m u + g; w -= lr u``), so changing the LR needs no momentum correction
      (Remark 2 applies only to form (10)). Weight decay is added to the aggregated gradient (eq. 8).
    * ``lars``: :class:`~largebatch.optim.lars.Lars` (You, Gitman, Ginsburg 2017).
    * ``lamb``: :class:`~largebatch.optim.lamb.Lamb` (You et al. 2019).
    * ``rmsprop_warmup``: :class:`~largebatch.optim.rmsprop_warmup.RMSpropWarmup` (Akiba et al. 2017);
      its alpha_SGD schedule counts epochs in steps of ``steps_per_epoch``.

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
        from largebatch.optim.lars import Lars

        return Lars(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov, trust_coefficient=o.trust_coefficient,
                    eps=o.lars_eps, clip=o.lars_clip)
    if o.name == "lamb":
        from largebatch.optim.lamb import Lamb

        return Lamb(groups, lr=lr, betas=(o.lamb_beta1, o.lamb_beta2), eps=o.lamb_eps)
    if o.name == "rmsprop_warmup":
        from largebatch.optim.rmsprop_warmup import RMSpropWarmup

        return RMSpropWarmup(groups, lr=lr, momentum=o.momentum, alpha=o.rmsprop_alpha, eps=o.rmsprop_eps,
                             rmsprop_lr=o.rmsprop_lr, steps_per_epoch=steps_per_epoch,
                             center_epochs=o.alpha_sgd_center_epochs, period_epochs=o.alpha_sgd_period_epochs,
                             variant=o.alpha_sgd_variant)
    raise ValueError(f"optim.name={o.name!r} is unknown; accepted: sgd, lars, lamb, rmsprop_warmup")
