"""BN variants across spawned gloo ranks: Akiba's last-batch statistics averaged over workers,
precise BN identical on every rank and equal to the population statistics, and group-synchronized BN
equal to BN over the concatenated group batch (forward and backward)."""

import pytest
import torch
import torch.nn.functional as F
from gloo import run_ranks
from torch import nn

from largebatch.dist import consecutive_groups
from largebatch.nn import GhostBatchNorm2d, average_bn_statistics, configure_bn, recompute_bn_statistics, start_bn_step

F64 = torch.float64
pytestmark = pytest.mark.dist


def rank_data(rank, shape, seed=0):
    g = torch.Generator().manual_seed(seed * 100 + rank)
    return torch.randn(*shape, generator=g, dtype=F64) * (1 + rank) + rank


def _last_batch(rank, world, variance):
    bn = GhostBatchNorm2d(3, bn_batch_size=4).double()
    configure_bn(bn, statistics="last_batch", variance_averaging=variance)
    start_bn_step(bn)
    bn(rank_data(rank, (8, 3, 2, 2), seed=9))  # an earlier step, forgotten
    start_bn_step(bn)
    micro = [rank_data(rank, (8, 3, 2, 2), seed=s) for s in (1, 2)]  # 2 micro-batches x 2 groups of 4
    for x in micro:
        bn(x)
    average_bn_statistics(bn, samples_per_step=16 * world)
    return bn.running_mean.clone(), bn.running_var.clone()


def test_last_batch_statistics_are_the_average_over_all_workers():
    world = 2
    mean_res = run_ranks(_last_batch, world, "mean")
    pooled_res = run_ranks(_last_batch, world, "pooled")
    all_x = torch.cat([torch.cat([rank_data(r, (8, 3, 2, 2), seed=s) for s in (1, 2)]) for r in range(world)])
    groups = all_x.split(4)  # the 8 simulated workers' last batches
    means = torch.stack([g.mean(dim=(0, 2, 3)) for g in groups])
    vars_ = torch.stack([g.transpose(0, 1).reshape(3, -1).var(1) for g in groups])
    union = all_x.transpose(0, 1).reshape(3, -1)
    for (m, v), (pm, pv) in zip(mean_res, pooled_res):
        torch.testing.assert_close(m, means.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, vars_.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pm, union.mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pv, union.var(1), rtol=1e-12, atol=1e-12)
    assert torch.equal(mean_res[0][1], mean_res[1][1]) and torch.equal(pooled_res[0][1], pooled_res[1][1])


def _precise(rank, world):
    model = nn.Sequential(GhostBatchNorm2d(3, bn_batch_size=2), nn.Conv2d(3, 2, 1), GhostBatchNorm2d(2)).double()
    torch.manual_seed(0)
    model[1].reset_parameters()
    data = rank_data(rank, (6 + 4 * rank, 3, 3, 3))  # uneven shares: counts must be all-reduced too
    recompute_bn_statistics(model, data.split(2))
    return [b.clone() for b in model.buffers()]


def test_precise_bn_is_the_population_statistic_and_identical_on_every_rank():
    results = run_ranks(_precise, 2)
    for a, b in zip(results[0], results[1]):
        assert torch.equal(a, b)
    union = torch.cat([rank_data(r, (6 + 4 * r, 3, 3, 3)) for r in range(2)]).transpose(0, 1).reshape(3, -1)
    mean, var = results[0][0], results[0][1]
    torch.testing.assert_close(mean, union.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, union.var(1), rtol=1e-12, atol=1e-12)


CASES = ((1, 3), (2, 3))  # (BN groups per forward on a rank, samples of each group on a rank)


def _group_sync(rank, world):
    group = consecutive_groups(2)
    return [_group_sync_case(rank, group, local_groups, n_local) for local_groups, n_local in CASES]


def _group_sync_case(rank, group, local_groups, n_local):
    torch.manual_seed(0)
    bn = GhostBatchNorm2d(3, bn_batch_size=n_local).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    configure_bn(bn, sync_group=group, sync_ranks=2)
    x = rank_data(rank, (local_groups * n_local, 3, 4, 4)).requires_grad_(True)
    y = bn(x)
    w = rank_data(rank, tuple(y.shape), seed=5)
    (y * w).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean.clone(), bn.running_var.clone()


def reference(ranks, local_groups, n_local):
    """Plain BN over each BN group's concatenated samples (one chunk from each rank of the group)."""
    torch.manual_seed(0)
    weight = torch.empty(3, dtype=F64).uniform_(0.5, 1.5).requires_grad_(True)
    bias = torch.empty(3, dtype=F64).uniform_(-0.5, 0.5).requires_grad_(True)
    xs = [rank_data(r, (local_groups * n_local, 3, 4, 4)).requires_grad_(True) for r in ranks]
    ys = [[None] * local_groups for _ in ranks]
    loss = 0
    means, vars_ = [], []
    for g in range(local_groups):
        parts = [x[g * n_local : (g + 1) * n_local] for x in xs]
        joined = torch.cat(parts)
        rm, rv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
        out = F.batch_norm(joined, rm, rv, weight, bias, True, 0.1, 1e-5)
        means.append(rm)
        vars_.append(rv)
        for i, part in enumerate(out.split(n_local)):
            ys[i][g] = part
    ys = [torch.cat(y) for y in ys]
    for r, y in zip(ranks, ys):
        loss = loss + (y * rank_data(r, tuple(y.shape), seed=5)).sum()
    loss.backward()
    return ys, [x.grad for x in xs], weight.grad, bias.grad, torch.stack(means).mean(0), torch.stack(vars_).mean(0)


def test_group_synchronized_bn_equals_bn_over_the_group_batch():
    all_results = run_ranks(_group_sync, 4)
    for case, (local_groups, n_local) in enumerate(CASES):
        results = [r[case] for r in all_results]
        for ranks in ((0, 1), (2, 3)):
            ys, dxs, dw, db, rm, rv = reference(ranks, local_groups, n_local)
            for i, r in enumerate(ranks):
                y, dx, _, _, mean, var = results[r]
                torch.testing.assert_close(y, ys[i], rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(dx, dxs[i], rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(mean, rm, rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(var, rv, rtol=1e-10, atol=1e-10)
            # Weight and bias gradients stay per rank; their sum over the group is the group's (DDP sums).
            torch.testing.assert_close(results[ranks[0]][2] + results[ranks[1]][2], dw, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(results[ranks[0]][3] + results[ranks[1]][3], db, rtol=1e-10, atol=1e-10)
