"""BN variants on one process: last-batch statistics over the micro-batches of a step, the pooled
variance, precise BN against exact population statistics, and validation of the options."""

import pytest
import torch
from torch import nn

from largebatch.nn import GhostBatchNorm2d, average_bn_statistics, configure_bn, recompute_bn_statistics, start_bn_step

F64 = torch.float64


def group_stats(x, n):
    """(means, unbiased variances) of each group of n samples, per channel."""
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.split(n)])
    vars_ = torch.stack([c.transpose(0, 1).reshape(c.shape[1], -1).var(dim=1, unbiased=True) for c in x.split(n)])
    return means, vars_


def test_last_batch_statistics_are_the_mean_over_every_group_of_the_step():
    torch.manual_seed(0)
    bn = GhostBatchNorm2d(3, bn_batch_size=4).double()
    configure_bn(bn, statistics="last_batch")
    old = torch.randn(8, 3, 5, 5, dtype=F64) * 7  # a previous step: must leave no trace
    start_bn_step(bn)
    bn(old)
    micro = [torch.randn(8, 3, 5, 5, dtype=F64) * s + s for s in (1.0, 2.0, 3.0)]  # 3 micro-batches x 2 groups
    start_bn_step(bn)
    for x in micro:
        bn(x)
    means, vars_ = group_stats(torch.cat(micro), 4)
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, vars_.mean(0), rtol=1e-12, atol=1e-12)


def test_moving_average_is_unchanged_default():
    torch.manual_seed(0)
    bn, ref = GhostBatchNorm2d(3, bn_batch_size=4).double(), nn.BatchNorm2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=F64)
    bn(x), ref(x)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_pooled_variance_is_the_variance_of_the_union():
    torch.manual_seed(1)
    bn = GhostBatchNorm2d(2, bn_batch_size=4).double()
    configure_bn(bn, statistics="last_batch", variance_averaging="pooled")
    x = torch.cat([torch.randn(4, 2, 3, 3, dtype=F64) * s + 3 * s for s in (1.0, 2.0, 0.5)])
    start_bn_step(bn)
    bn(x)
    average_bn_statistics(bn, samples_per_step=12)
    union = x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(bn.running_mean, union.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, union.var(1, unbiased=True), rtol=1e-12, atol=1e-12)
    before = bn.running_var.clone()
    average_bn_statistics(bn, samples_per_step=12)  # idempotent
    assert torch.equal(bn.running_var, before)
    # ...and it really differs from the mean of the group variances:
    assert not torch.allclose(before, group_stats(x, 4)[1].mean(0), rtol=1e-3)


def test_precise_bn_equals_exact_population_statistics():
    torch.manual_seed(2)
    data = torch.randn(40, 3, 4, 4, dtype=F64) * torch.tensor([1.0, 5.0, 0.1], dtype=F64).view(1, 3, 1, 1) + 2
    model = nn.Sequential(
        GhostBatchNorm2d(3, bn_batch_size=5), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)
    ).double()
    model.eval()
    tracked = model[0].num_batches_tracked.clone()
    passes = recompute_bn_statistics(model, data.split(10))
    assert passes == 4 and not model.training and torch.equal(model[0].num_batches_tracked, tracked)
    flat = data.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(model[0].running_mean, flat.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[0].running_var, flat.var(1, unbiased=True), rtol=1e-12, atol=1e-12)
    # The second BN gets the statistics of its training-mode input (first layer normalized per group).
    model.train()
    with torch.no_grad():
        feats = torch.cat([model[2](model[1](model[0](c))) for c in data.split(10)])
    f2 = feats.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(model[3].running_mean, f2.mean(1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model[3].running_var, f2.var(1, unbiased=True), rtol=1e-10, atol=1e-10)


def test_precise_bn_without_data_raises():
    with pytest.raises(ValueError, match="train.bn.precise_batches"):
        recompute_bn_statistics(nn.Sequential(GhostBatchNorm2d(2)), [])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(statistics="ema"), "train.bn.statistics"),
        (dict(variance_averaging="median"), "train.bn.variance_averaging"),
        (dict(statistics="moving_average", variance_averaging="pooled"), "last_batch"),
    ],
)
def test_configure_bn_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        configure_bn(nn.Sequential(GhostBatchNorm2d(2)), **kwargs)


def test_pooled_buffer_is_not_saved():
    bn = GhostBatchNorm2d(2, bn_batch_size=2)
    configure_bn(bn, statistics="last_batch", variance_averaging="pooled")
    assert "running_mean_sq" not in bn.state_dict()
    nn.BatchNorm2d(2).load_state_dict(bn.state_dict())  # loads into plain torch BN
