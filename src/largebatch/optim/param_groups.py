"""The one param-group policy: which trainable tensors get weight decay and which get layer-wise
adaptation (the LARS/LAMB trust ratio).

Decided by module type and tensor shape, never by a substring of the name (a ``'bn' in name``
rule misses torchvision's ``downsample.1`` BN layers):

* parameters of normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm): no weight
  decay unless ``norm_weight_decay`` (Goyal et al. 2017, sec. 5.1: "not applied to BN gamma and
  beta"), no layer adaptation unless ``norm_adaptation`` (MLPerf's LARS skip list);
* other 1-D parameters (biases, e.g. ``fc.bias``): no weight decay unless ``bias_weight_decay``, no
  adaptation unless ``bias_adaptation``. Goyal et al. do not address the FC bias; we treat it like
  the BN parameters, as MLPerf's reference does. NVIDIA's MLPerf LARS keeps weight decay on the
  classifier's bias only (the MLPerf Training ResNet-50 reference): ``fc_bias_weight_decay`` does that, where the
  classifier is the last ``nn.Linear`` of the model;
* every other parameter (conv and linear weights): weight decay and adaptation.

Every trainable parameter lands in exactly one group; frozen parameters in none. Each group dict
carries ``weight_decay`` (float) and ``layer_adaptation`` (bool), read by the optimizers; SGD
ignores ``layer_adaptation``.
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
    fc_bias_weight_decay: bool = False,
    norm_adaptation: bool = False,
    bias_adaptation: bool = False,
) -> list[dict]:
    """Split ``model``'s trainable parameters by (weight decay on/off, layer adaptation on/off).

    Returns:
        A list of param-group dicts for ``torch.optim`` with keys ``params``, ``weight_decay``,
        ``layer_adaptation``, ``group_name`` (``decay/adapt``, ``no_decay/no_adapt``, ...) and
        ``param_names`` (the dotted names, for logs and tests). Empty groups are left out.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None
    buckets: dict[tuple[bool, bool], list] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            if is_norm:
                decay, adapt = norm_weight_decay, norm_adaptation
            elif p.ndim <= 1:
                decay = bias_weight_decay or (fc_bias_weight_decay and module is classifier)
                adapt = bias_adaptation
            else:
                decay, adapt = True, True
            buckets.setdefault((decay, adapt), []).append((full, p))
    groups = []
    for decay, adapt in sorted(buckets, reverse=True):
        members = buckets[(decay, adapt)]
        groups.append(
            {
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "weight_decay": weight_decay if decay else 0.0,
                "layer_adaptation": adapt,
                "group_name": f"{'decay' if decay else 'no_decay'}/{'adapt' if adapt else 'no_adapt'}",
            }
        )
    log.info(
        "param groups: %s",
        "; ".join(
            f"{g['group_name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} "
            f"values, wd {g['weight_decay']:g}"
            for g in groups
        ),
    )
    return groups
