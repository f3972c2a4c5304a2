"""Optimizers for large-batch training and the param-group policy."""

from __future__ import annotations

import torch
from torch import nn

from largebatch.optim.param_groups import param_groups

__all__ = ["build_optimizer", "param_groups"]


def build_optimizer(model: nn.Module, optim_cfg, *, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.name`` over :func:`param_groups` of ``model``.

    ``sgd`` is ``torch.optim.SGD``, which keeps the LR outside the momentum buffer (Goyal et al.
    2017, eq. 9: ``u = m u + g; w -= lr u``), so changing the LR needs no momentum correction
    (Remark 2 applies only to form (10)). Weight decay is added to the aggregated gradient
    (eq. 8), once per step, after the all-reduce.

    Raises:
        ValueError: for an unknown optimizer name.
    """
    groups = param_groups(
        model,
        weight_decay=optim_cfg.weight_decay,
        norm_weight_decay=optim_cfg.norm_weight_decay,
        bias_weight_decay=optim_cfg.bias_weight_decay,
    )
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)
    raise ValueError(f"optim.name={optim_cfg.name!r} is unknown; accepted: sgd")
