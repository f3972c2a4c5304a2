"""One shuffle per epoch divided among workers (Goyal Remark 4), independent of the world size."""

import pytest
import torch

from largebatch.data import GlobalBatchSampler, eval_shard


def rank_batches(n, gbs, world, epoch, seed=0):
    out = []
    for r in range(world):
        s = GlobalBatchSampler(n, gbs, world_size=world, rank=r, seed=seed)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_epoch_partition(world):
    n, gbs = 1000, 64
    per_rank = rank_batches(n, gbs, world, epoch=3)
    steps = n // gbs
    assert all(len(b) == steps for b in per_rank)
    everything = torch.cat([torch.cat(b) for b in per_rank])
    assert everything.numel() == steps * gbs
    assert everything.unique().numel() == everything.numel()  # disjoint, nothing seen twice
    assert everything.min() >= 0 and everything.max() < n
    assert all(x.numel() == gbs // world for b in per_rank for x in b)


def test_global_batch_independent_of_world_size():
    n, gbs = 1000, 64
    one = rank_batches(n, gbs, 1, epoch=2)[0]
    for world in (2, 4, 8):
        per_rank = rank_batches(n, gbs, world, epoch=2)
        for step in range(len(one)):
            assert torch.equal(torch.cat([per_rank[r][step] for r in range(world)]), one[step])


def test_epochs_reshuffle_and_seed_matters():
    a = torch.cat(rank_batches(1000, 64, 1, epoch=0)[0])
    b = torch.cat(rank_batches(1000, 64, 1, epoch=1)[0])
    c = torch.cat(rank_batches(1000, 64, 1, epoch=0, seed=1)[0])
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, torch.cat(rank_batches(1000, 64, 1, epoch=0)[0]))  # deterministic


def test_start_step_resumes_mid_epoch():
    s = GlobalBatchSampler(1000, 64, world_size=2, rank=1, seed=0)
    s.set_epoch(5)
    full = list(s)
    s.set_epoch(5, start_step=6)
    assert len(s) == len(full) - 6
    assert all(torch.equal(x, y) for x, y in zip(list(s), full[6:]))


def test_errors():
    with pytest.raises(ValueError, match="fewer than train.global_batch_size"):
        GlobalBatchSampler(100, 128, world_size=1, rank=0, seed=0)
    with pytest.raises(ValueError, match="does not split"):
        GlobalBatchSampler(100, 30, world_size=4, rank=0, seed=0)


@pytest.mark.parametrize("world", [1, 3, 7])
def test_eval_shards_cover_each_sample_once(world):
    shards = [eval_shard(1003, world_size=world, rank=r) for r in range(world)]
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(1003))
