"""Topology-aware all-reduce on spawned gloo ranks: hierarchical (both forms) and 2D-torus equal the
default all-reduce on 4 ranks (2 x 2) and 6 ranks (2 x 3 and 3 x 2), odd lengths included; the DDP
hooks built on them (and with fp16/bf16 compression) give DDP's own gradients."""

import pytest
import torch
from gloo import run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

pytestmark = pytest.mark.dist

SIZES = (1, 2, 7, 1000, 1001)


def rank_tensor(rank, n, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 * n + rank)
    return torch.randn(n, generator=g, dtype=dtype)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 9), nn.Tanh(), nn.Linear(9, 5))


def _ddp_grads(rank, hook_pair, register=None):
    model = DDP(_model(), bucket_cap_mb=0.0001)  # several buckets
    if hook_pair is not None:
        model.register_comm_hook(*hook_pair)
    if register is not None:
        register(model)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(6, 13, generator=g), torch.randn(6, 5, generator=g)
    ((model(x) - y) ** 2).mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def collectives_on_ranks(rank, world, shapes):
    import torch.distributed as dist

    from largebatch.dist.collectives import hierarchical_all_reduce, torus2d_all_reduce
    from largebatch.dist.hooks import HookState, make_comm_hook
    from largebatch.dist.topology import build_groups, make_topology

    out = {}
    reference = {n: rank_tensor(rank, n) for n in SIZES}
    for t in reference.values():
        dist.all_reduce(t)
    plain = _ddp_grads(rank, None)
    for wpn, x in shapes:
        groups = build_groups(make_topology(world, workers_per_node=wpn, torus_x=x))
        for n in SIZES:
            for name, fn in (
                ("hier_scatter", lambda t, g=groups: hierarchical_all_reduce(t, g, mode="scatter")),
                ("hier_reduce", lambda t, g=groups: hierarchical_all_reduce(t, g, mode="reduce")),
                ("torus", lambda t, g=groups: torus2d_all_reduce(t, g)),
            ):
                t = rank_tensor(rank, n)
                fn(t)
                out[(wpn, x, name, n)] = (t, reference[n])
        state = HookState(groups=groups)
        for algorithm in ("hierarchical", "torus2d", "allreduce"):
            for compression in ("none", "fp16", "bf16"):
                pair = make_comm_hook(algorithm, compression, state)
                out[(wpn, x, "ddp", algorithm, compression)] = (_ddp_grads(rank, pair), plain)
    # the public one-call registration, as a user's own DDP script calls it
    from largebatch.dist import register_comm_hook

    for wpn, x in shapes:
        for algorithm in ("hierarchical", "torus2d"):
            kw = dict(workers_per_node=wpn, torus_x=x)
            out[(wpn, x, "ddp", "public-" + algorithm, "none")] = (
                _ddp_grads(rank, None, lambda m, a=algorithm, kw=kw: register_comm_hook(m, a, **kw)),
                plain,
            )
    out[(0, 0, "ddp", "public-default", "bf16")] = (  # workers_per_node from LOCAL_WORLD_SIZE
        _ddp_grads(rank, None, lambda m: register_comm_hook(m, compression="bf16")),
        plain,
    )
    return out


def check(results):
    for result in results:
        for key, (got, want) in result.items():
            if key[2] == "ddp":
                tol = {"none": 1e-6, "fp16": 2e-3, "bf16": 2e-2}[key[4]]
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=str(key))
            else:
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=str(key))
    # every rank holds the same result
    for key in results[0]:
        if key[2] != "ddp":
            assert all(torch.equal(r[key][0], results[0][key][0]) for r in results), key


def test_four_ranks_two_by_two():
    check(run_ranks(collectives_on_ranks, 4, [(2, 2)]))


def test_six_ranks_two_by_three_and_three_by_two():
    check(run_ranks(collectives_on_ranks, 6, [(3, 3), (2, 2), (3, 2)]))
