"""Models: torchvision's ResNets for ImageNet and a small ResNet for 28x28 inputs on CPUs.

Every BN layer is a :class:`~largebatch.nn.norm.GhostBatchNorm2d` (per-worker BN over
``bn_batch_size`` samples), and the two initialisation details of Goyal et al. 2017 (sec. 5.1) are
applied: the last BN gamma of each residual block is zero, and the final FC weight is drawn from
N(0, 0.01^2) with a zero bias.

``resnet_fmnist`` with the defaults (width 16, one BasicBlock per stage) is a ResNet-8:
3x3 stem (16 ch, 28x28) -> BasicBlock 16 @28x28 -> BasicBlock 32 @14x14 -> BasicBlock 64 @7x7 ->
global average pool -> FC. It has 77,754 parameters and 9.35 M multiply-accumulates (18.7 MFLOPs)
per 1x28x28 image in the forward pass (``count_macs`` below; a training step costs about 3x that).
It uses torchvision's ``BasicBlock`` so parameter names follow torchvision (``layer2.0.downsample.1``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from largebatch.nn.norm import GhostBatchNorm2d
from largebatch.registry import MODEL_GROUP, build_user_model, is_plugin


class SmallResNet(nn.Module):
    """A ResNet for small images: 3x3 stem, three stages of BasicBlocks (widths w, 2w, 4w, the last
    two with stride 2), global average pooling and a linear classifier.

    ``stem_stride=2`` makes the stem downsample: on 28x28 images the stages run at 14, 7 and 4 px
    instead of 28, 14 and 7, about a quarter of the multiply-accumulates (2.55 M per image against
    9.35 M at width 16), the same parameters.

    Shapes: input (N, in_channels, H, W) -> logits (N, num_classes).

    Raises:
        ValueError: ``stem_stride`` not 1 or 2.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        blocks_per_stage: int = 1,
        stem_stride: int = 1,
        norm_layer=nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"model.stem_stride={stem_stride!r} must be 1 or 2")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        inplanes = width
        for i, planes in enumerate((width, 2 * width, 4 * width), start=1):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (i > 1 and b == 0) else 1
                downsample = None
                if stride != 1 or inplanes != planes:
                    downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, planes, stride), norm_layer(planes))
                blocks.append(tv_resnet.BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer))
                inplanes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def goyal_init(model: nn.Module, *, zero_init_residual: bool, fc_init_std: float) -> None:
    """Goyal et al. 2017 sec. 5.1: gamma = 0 for the last BN of each residual block, FC ~ N(0, std^2).

    The last BN is ``bn2`` of a BasicBlock and ``bn3`` of a Bottleneck (torchvision names).
    """
    for m in model.modules():
        if zero_init_residual and isinstance(m, tv_resnet.Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif zero_init_residual and isinstance(m, tv_resnet.BasicBlock):
            nn.init.zeros_(m.bn2.weight)
    fc = getattr(model, "fc", None)
    if fc_init_std > 0 and isinstance(fc, nn.Linear):
        nn.init.normal_(fc.weight, mean=0.0, std=fc_init_std)
        nn.init.zeros_(fc.bias)


def convert_to_ghost_bn(model: nn.Module, bn_batch_size: int = 0) -> int:
    """Replace every ``nn.BatchNorm2d`` of ``model``, in place, by a :class:`GhostBatchNorm2d` with
    the same parameters, buffers and settings; returns how many were replaced.

    ``bn_batch_size`` is the number of samples each BN group normalizes over (Hoffer et al. 2017,
    ghost batch normalization; Goyal et al. 2017 sec. 5.1 use 32 per worker); 0 means the whole
    per-worker micro-batch, i.e. plain BN until :func:`largebatch.nn.set_bn_batch_size` sets it.
    Subclasses of ``BatchNorm2d`` (SyncBatchNorm, frozen BN) are left alone."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                ghost = GhostBatchNorm2d(
                    child.num_features,
                    bn_batch_size,
                    eps=child.eps,
                    momentum=child.momentum,
                    affine=child.affine,
                    track_running_stats=child.track_running_stats,
                )
                ghost.load_state_dict(child.state_dict())
                setattr(parent, name, ghost)
                count += 1
    return count


def channels_last_unsafe_convs(model: nn.Module, device: torch.device) -> list[str]:
    """Names of the convolutions of ``model`` whose channels_last weight gradient corrupts memory on
    the CPU: a 1x1 convolution with stride > 1 and fewer than 8 input channels (a ResNet
    ``downsample`` of ``model.width`` < 8). Seen with torch 2.14.1 on an AVX2 AMD EPYC: the backward
    pass aborts with 'corrupted double-linked list' or a segmentation fault for 2, 4 and 6 input
    channels, not for 8 or 12. Empty on other devices. The trainer then keeps the model contiguous.
    """
    if device.type != "cpu":
        return []
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
    ]


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    bn_batch_size: int = 0,
    width: int = 16,
    blocks_per_stage: int = 1,
    stem_stride: int = 1,
    zero_init_residual: bool = True,
    fc_init_std: float = 0.01,
) -> nn.Module:
    """``resnet_fmnist`` or any torchvision classification model (``resnet50``, ``resnet18``,
    ``efficientnet_b0``, ...; untrained), with ghost BN in every BatchNorm2d and Goyal's init where
    it applies (zero last-BN gamma of torchvision's residual blocks, N(0, std^2) classifier ``fc``).
    ``name`` may also be a user factory, ``package.module:callable`` or an entry point of the group
    ``largebatch.models`` (:mod:`largebatch.registry`).

    Raises:
        ValueError: for an unknown name, a torchvision model with in_channels != 3, or a
            ``stem_stride`` other than 1 or 2 (``width``, ``blocks_per_stage`` and ``stem_stride``
            apply to ``resnet_fmnist`` only).
    """
    if name == "resnet_fmnist":
        norm_layer = functools.partial(GhostBatchNorm2d, bn_batch_size=bn_batch_size)
        model: nn.Module = SmallResNet(
            in_channels=in_channels,
            num_classes=num_classes,
            width=width,
            blocks_per_stage=blocks_per_stage,
            stem_stride=stem_stride,
            norm_layer=norm_layer,
        )
    elif ":" not in name and name in torchvision_classifiers():
        if in_channels != 3:
            raise ValueError(f"model.name={name!r} expects 3-channel images, the data has {in_channels}")
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        convert_to_ghost_bn(model, bn_batch_size)
    elif is_plugin(name, MODEL_GROUP):
        model = build_user_model(name, num_classes=num_classes, in_channels=in_channels)
        convert_to_ghost_bn(model, bn_batch_size)
    else:
        raise ValueError(
            f"model.name={name!r} is unknown; accepted: resnet_fmnist, a torchvision classification "
            f'model (e.g. resnet18, resnet50; `python -c "import torchvision; '
            f'print(torchvision.models.list_models(module=torchvision.models))"`) or a user '
            f"factory package.module:callable (docs/api.md)"
        )
    goyal_init(model, zero_init_residual=zero_init_residual, fc_init_std=fc_init_std)
    return model


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of conv and linear layers for one input of
    ``input_shape`` (C, H, W), counted with forward hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() // out.shape[0] * k

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
