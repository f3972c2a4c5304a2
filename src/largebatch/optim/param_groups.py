"""The one param-group policy: which trainable tensors get weight decay.

Decided by module type and tensor shape, never by a substring of the name (a ``'bn' in name``
rule misses torchvision's ``downsample.1`` BN layers):

* parameters of normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm): no weight
  decay unless ``norm_weight_decay`` (Goyal et al. 2017, sec. 5.1: "not applied to BN gamma and beta");
* other 1-D parameters (biases, e.g. ``fc.bias``): no weight decay unless ``bias_weight_decay``.
  Goyal et al. do not address the FC bias; we treat it like the BN parameters, as MLPerf's reference
  does (techniques.md sec. 10.3 keeps decay on the FC bias: set bias_weight_decay=true for that);
* every other parameter (conv and linear weights): weight decay.

Every trainable parameter lands in exactly one group; frozen parameters in none.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

log = logging.getLogger(__name__)

NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    norm_weight_decay: bool = False,
    bias_weight_decay: bool = False,
) -> list[dict]:
    """Split ``model``'s trainable parameters into ``decay`` and ``no_decay`` groups.

    Returns:
        A list of param-group dicts for ``torch.optim`` with keys ``params``, ``weight_decay``,
        ``group_name`` and ``param_names`` (the dotted names, for logs and tests). Empty groups are
        left out.
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            if is_norm:
                target = decay if norm_weight_decay else no_decay
            elif p.ndim <= 1:
                target = decay if bias_weight_decay else no_decay
            else:
                target = decay
            target.append((full, p))
    groups = []
    for group_name, members, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
        if members:
            groups.append({
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "weight_decay": wd,
                "group_name": group_name,
            })
    log.info(
        "param groups: %s",
        ", ".join(f"{g['group_name']}: {len(g['params'])} tensors, "
                  f"{sum(p.numel() for p in g['params']):,} values, wd {g['weight_decay']:g}" for g in groups),
    )
    return groups
