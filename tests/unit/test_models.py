"""Model construction: Goyal's init, ghost BN everywhere, the small ResNet's size."""

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from largebatch.nn import GhostBatchNorm2d, build_model, count_macs


def test_resnet50_zero_gamma_and_fc_init():
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000, bn_batch_size=32)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for b in blocks:
        assert torch.count_nonzero(b.bn3.weight) == 0
        assert torch.all(b.bn1.weight == 1) and torch.all(b.bn2.weight == 1)
    assert torch.all(model.bn1.weight == 1)
    std = model.fc.weight.std().item()
    assert abs(std - 0.01) < 0.0002, std  # 2,048,000 draws: the sample std is within 0.1% of 0.01
    assert abs(model.fc.weight.mean().item()) < 1e-4
    assert torch.count_nonzero(model.fc.bias) == 0
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 53 and all(isinstance(m, GhostBatchNorm2d) and m.bn_batch_size == 32 for m in bns)


def test_small_resnet_zero_gamma_size_and_shape():
    model = build_model("resnet_fmnist", num_classes=10, in_channels=1, bn_batch_size=32)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    assert sum(p.numel() for p in model.parameters()) == 77_754
    assert count_macs(model, (1, 28, 28)) == 9_345_920
    assert model(torch.randn(64, 1, 28, 28)).shape == (64, 10)


def test_options_off_keep_torchvision_init():
    model = build_model("resnet18", num_classes=10, zero_init_residual=False, fc_init_std=0)
    assert all(torch.all(b.bn2.weight == 1) for b in model.modules() if isinstance(b, BasicBlock))
    assert model.fc.bias.abs().sum() > 0  # torchvision's uniform init, untouched


def test_any_torchvision_classifier_gets_ghost_bn():
    import torch
    from torch import nn

    from largebatch.config import ConfigError, apply_overrides
    from largebatch.nn import GhostBatchNorm2d, build_model
    from largebatch.plan import resolve
    from largebatch.recipes import DEFAULT_RECIPE, get_recipe

    model = build_model("mobilenet_v3_small", num_classes=5, bn_batch_size=2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, GhostBatchNorm2d) and m.bn_batch_size == 2 for m in bns)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 5)
    resolve(
        apply_overrides(
            get_recipe(DEFAULT_RECIPE),
            ["model.name=efficientnet_b0", "data.name=synthetic", "data.synthetic.channels=3"],
        ),
        2,
    )
    import pytest

    with pytest.raises(ConfigError, match="torchvision classification model"):
        resolve(apply_overrides(get_recipe(DEFAULT_RECIPE), ["model.name=resnet51"]), 2)
    with pytest.raises(ValueError, match="is unknown"):
        build_model("resnet51", num_classes=5)


def test_channels_last_guard_names_the_narrow_strided_1x1_convs():
    from largebatch.nn import build_model, channels_last_unsafe_convs

    cpu = torch.device("cpu")
    narrow = build_model("resnet_fmnist", num_classes=10, in_channels=1, width=4)
    assert channels_last_unsafe_convs(narrow, cpu) == ["layer2.0.downsample.0"]  # 4 -> 8 channels, stride 2
    assert channels_last_unsafe_convs(narrow, torch.device("cuda", 0)) == []
    for width in (8, 16):
        assert (
            channels_last_unsafe_convs(build_model("resnet_fmnist", num_classes=10, in_channels=1, width=width), cpu)
            == []
        )


def test_stride_two_stem_quarters_the_work_with_the_same_parameters():
    full = build_model("resnet_fmnist", num_classes=10, in_channels=1, bn_batch_size=32)
    fast = build_model("resnet_fmnist", num_classes=10, in_channels=1, bn_batch_size=32, stem_stride=2)
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in full.parameters()) == 77_754
    # stages at 14, 7 and 4 px: stem 14*14*16*9, layer1 2*14*14*16*16*9, layer2 7*7*(32*16*9 + 32*32*9
    # + 32*16), layer3 4*4*(64*32*9 + 64*64*9 + 64*32), fc 64*10
    expected = 14 * 14 * 16 * 9 + 2 * 14 * 14 * 16 * 16 * 9
    expected += 7 * 7 * (32 * 16 * 9 + 32 * 32 * 9 + 32 * 16) + 4 * 4 * (64 * 32 * 9 + 64 * 64 * 9 + 64 * 32) + 640
    assert count_macs(fast, (1, 28, 28)) == expected == 2_552_000
    assert fast.conv1.stride == (2, 2) and fast(torch.randn(32, 1, 28, 28)).shape == (32, 10)
    # fully convolutional: a lower training resolution gives the same output shape
    assert fast(torch.randn(32, 1, 20, 20)).shape == (32, 10)
    import pytest

    with pytest.raises(ValueError, match="model.stem_stride=3 must be 1 or 2"):
        build_model("resnet_fmnist", num_classes=10, in_channels=1, stem_stride=3)
