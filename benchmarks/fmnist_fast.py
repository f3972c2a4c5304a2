"""Faster networks for the Fashion-MNIST main job, as user model factories (docs/api.md), for the
schedule studies of ``benchmarks/retune_main_job.py`` (run with ``PYTHONPATH=benchmarks`` and
``--set model.name=fmnist_fast:s2``).

``s2``: the recipe's ResNet-8 (:class:`largebatch.nn.models.SmallResNet`, widths 16/32/64) with a
stride-2 stem, so its three stages run at 14, 7 and 4 px instead of 28, 14 and 7: 2.55 M
multiply-accumulates per 28x28 image against 9.35 M (``largebatch.nn.models.count_macs``). The
factory returns plain ``BatchNorm2d`` layers; the trainer turns them into ghost BN and applies
Goyal et al.'s initialization, as for the built-in model.
"""

from __future__ import annotations

from torch import nn

from largebatch.nn.models import SmallResNet


def s2(num_classes: int, in_channels: int) -> nn.Module:
    """The ResNet-8 with a 3x3 stride-2 stem. Shapes: (N, in_channels, 28, 28) -> (N, num_classes)."""
    model = SmallResNet(in_channels=in_channels, num_classes=num_classes, width=16)
    model.conv1 = nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
