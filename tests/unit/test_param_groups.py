"""The param-group policy on torchvision resnet50 names and on the small ResNet."""

import pytest

from largebatch.nn import build_model
from largebatch.optim import build_optimizer, param_groups
from largebatch.recipes import DEFAULT_RECIPE, get_recipe


@pytest.fixture(scope="module")
def resnet50():
    return build_model("resnet50", num_classes=1000, bn_batch_size=32)


def by_name(groups):
    return {n: g["group_name"] for g in groups for n in g["param_names"]}


def test_every_trainable_param_in_exactly_one_group(resnet50):
    groups = param_groups(resnet50, weight_decay=1e-4)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, p in resnet50.named_parameters() if p.requires_grad)
    assert len(names) == len(set(names))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))


def test_bn_including_downsample_and_fc_bias_get_no_decay(resnet50):
    groups = param_groups(resnet50, weight_decay=1e-4)
    where = by_name(groups)
    assert where["layer1.0.downsample.1.weight"] == "no_decay/no_adapt"
    assert where["layer1.0.downsample.1.bias"] == "no_decay/no_adapt"
    assert where["layer4.2.bn3.weight"] == "no_decay/no_adapt" and where["bn1.bias"] == "no_decay/no_adapt"
    assert where["fc.bias"] == "no_decay/no_adapt"
    assert where["fc.weight"] == "decay/adapt" and where["layer1.0.downsample.0.weight"] == "decay/adapt"
    assert where["conv1.weight"] == "decay/adapt"
    # 53 BN layers x 2 tensors + fc.bias; 53 convs + fc.weight.
    assert sum(v == "no_decay/no_adapt" for v in where.values()) == 107
    assert sum(v == "decay/adapt" for v in where.values()) == 54
    wd = {g["group_name"]: (g["weight_decay"], g["layer_adaptation"]) for g in groups}
    assert wd == {"decay/adapt": (1e-4, True), "no_decay/no_adapt": (0.0, False)}


def test_options_move_bias_and_norm(resnet50):
    where = by_name(param_groups(resnet50, weight_decay=1e-4, bias_weight_decay=True))
    assert where["fc.bias"] == "decay/no_adapt" and where["bn1.weight"] == "no_decay/no_adapt"
    where = by_name(param_groups(resnet50, weight_decay=1e-4, norm_weight_decay=True))
    assert where["bn1.weight"] == "decay/no_adapt" and where["fc.bias"] == "no_decay/no_adapt"
    where = by_name(param_groups(resnet50, weight_decay=1e-4, norm_adaptation=True, bias_adaptation=True))
    assert where["bn1.weight"] == "no_decay/adapt" and where["fc.bias"] == "no_decay/adapt"


def test_nvidia_mlperf_fc_bias_exception(resnet50):
    """NVIDIA's MLPerf LARS: weight decay on the classifier bias only, no adaptation on it."""
    where = by_name(param_groups(resnet50, weight_decay=1e-4, fc_bias_weight_decay=True))
    assert where["fc.bias"] == "decay/no_adapt"
    assert where["layer1.0.downsample.1.bias"] == "no_decay/no_adapt"


def test_frozen_params_are_left_out(resnet50):
    resnet50.conv1.weight.requires_grad_(False)
    try:
        names = [n for g in param_groups(resnet50, weight_decay=1e-4) for n in g["param_names"]]
        assert "conv1.weight" not in names
    finally:
        resnet50.conv1.weight.requires_grad_(True)


def test_optimizer_is_nesterov_sgd_with_groups():
    cfg = get_recipe(DEFAULT_RECIPE)
    model = build_model("resnet_fmnist", num_classes=10, in_channels=1)
    opt = build_optimizer(model, cfg.optim, lr=0.1)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    assert {g["group_name"]: g["weight_decay"] for g in opt.param_groups} == {
        "decay/adapt": 1e-4,
        "no_decay/no_adapt": 0.0,
    }
