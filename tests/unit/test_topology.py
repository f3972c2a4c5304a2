"""Topology validation (nodes x workers per node, torus X x Y) and the rank layout, without processes."""

import pytest

from largebatch.config import ConfigError, apply_overrides
from largebatch.dist.hooks import make_comm_hook
from largebatch.dist.topology import factor_pairs, make_topology
from largebatch.plan import resolve
from largebatch.recipes import DEFAULT_RECIPE, get_recipe


def test_layout_of_a_2x3_machine():
    t = make_topology(6, workers_per_node=3)
    assert (t.nodes, t.torus_x, t.torus_y) == (2, 3, 2)
    assert t.node_ranks(1) == [3, 4, 5] and t.local_peers(2) == [2, 5]
    assert t.row_ranks(1) == [3, 4, 5] and t.column_ranks(0) == [0, 3]
    t = make_topology(6, workers_per_node=3, torus_x=2)
    assert t.row_ranks(2) == [4, 5] and t.column_ranks(1) == [1, 3, 5]
    assert factor_pairs(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (
            dict(workers_per_node=4),
            "comm.workers_per_node=4 does not divide the 6 workers; accepted: one of [1, 2, 3, 6]",
        ),
        (dict(workers_per_node=3, torus_x=4), "accepted shapes X x Y: 1x6, 2x3, 3x2, 6x1"),
        (dict(workers_per_node=0), "comm.workers_per_node=0"),
    ],
)
def test_bad_topologies_name_every_accepted_choice(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        make_topology(6, **kwargs)


def test_config_checks_the_topology_before_workers_start():
    cfg = get_recipe(DEFAULT_RECIPE)
    with pytest.raises(ConfigError, match="accepted shapes X x Y: 1x2, 2x1"):
        resolve(apply_overrides(cfg, ["comm.algorithm=torus2d", "comm.torus_x=3"]), 2)
    with pytest.raises(ConfigError, match="comm.algorithm"):
        resolve(apply_overrides(cfg, ["comm.algorithm=ring"]), 2)
    with pytest.raises(ConfigError, match="comm.compression"):
        resolve(apply_overrides(cfg, ["comm.compression=int8"]), 2)
    resolve(apply_overrides(cfg, ["comm.algorithm=hierarchical", "comm.workers_per_node=1"]), 2)  # 2 nodes x 1


def test_hook_choice():
    assert make_comm_hook("allreduce", "none", None) is None
    state, hook = make_comm_hook("allreduce", "bf16", None)
    assert state is None and hook.__name__ == "bf16_compress_hook"
    with pytest.raises(ValueError, match="needs the topology"):
        make_comm_hook("torus2d", "none", None)
    with pytest.raises(ValueError, match="accepted: allreduce, hierarchical, torus2d"):
        make_comm_hook("ring", "none", None)
