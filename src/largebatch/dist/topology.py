"""Where the workers sit: nodes x workers per node, and the 2D-torus grid X x Y laid over the ranks.

Rank r lives on node ``r // workers_per_node`` with local rank ``r % workers_per_node`` (torchrun's
numbering). The torus puts X consecutive ranks in a row: rank r is at row ``r // X``, column ``r % X``.
With X = workers_per_node (the default) a row is a node, so the row phases of Mikami et al.'s 2D-torus
all-reduce run over the fast intra-node links and the column phase crosses nodes, X column rings in
parallel, each on 1/X of the data (Mikami et al. 2018; Horovod's torus all-reduce
has the same structure with the node as the row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


def factor_pairs(n: int) -> list[tuple[int, int]]:
    """Every (X, Y) with X * Y = n, X ascending."""
    return [(x, n // x) for x in range(1, n + 1) if n % x == 0]


@dataclass(frozen=True)
class Topology:
    """Nodes x workers per node, and the torus shape X x Y, for ``world_size`` ranks.

    Build it with :func:`make_topology`, which validates it.
    """

    world_size: int
    workers_per_node: int
    """Ranks per node (torchrun's LOCAL_WORLD_SIZE, or configured to simulate several nodes)."""
    torus_x: int
    """Ranks per torus row X (the horizontal ring); the torus has Y = world_size / X rows."""

    @property
    def nodes(self) -> int:
        return self.world_size // self.workers_per_node

    @property
    def torus_y(self) -> int:
        return self.world_size // self.torus_x

    def node_ranks(self, node: int) -> list[int]:
        w = self.workers_per_node
        return list(range(node * w, (node + 1) * w))

    def local_peers(self, local_rank: int) -> list[int]:
        """The ranks with this local rank on every node (one inter-node ring)."""
        return [node * self.workers_per_node + local_rank for node in range(self.nodes)]

    def row_ranks(self, row: int) -> list[int]:
        return list(range(row * self.torus_x, (row + 1) * self.torus_x))

    def column_ranks(self, column: int) -> list[int]:
        return [row * self.torus_x + column for row in range(self.torus_y)]

    def describe(self) -> str:
        return (
            f"{self.nodes} node(s) x {self.workers_per_node} worker(s); 2D torus {self.torus_x} x {self.torus_y} "
            f"(rows of {self.torus_x} consecutive ranks)"
        )


def make_topology(world_size: int, *, workers_per_node: int, torus_x: int = 0) -> Topology:
    """A validated :class:`Topology`.

    Args:
        world_size: number of ranks.
        workers_per_node: ranks per node; must divide world_size.
        torus_x: torus row length X; 0 takes workers_per_node. X * Y must equal world_size.

    Raises:
        ValueError: naming the value, the world size and every accepted choice.
    """
    if world_size < 1:
        raise ValueError(f"world size {world_size} is invalid: at least 1 rank")
    if workers_per_node < 1 or world_size % workers_per_node:
        divisors = [x for x, _ in factor_pairs(world_size)]
        raise ValueError(
            f"comm.workers_per_node={workers_per_node} does not divide the {world_size} workers; "
            f"accepted: one of {divisors} (nodes x workers per node = {world_size})"
        )
    x = torus_x or workers_per_node
    if x < 1 or world_size % x:
        shapes = ", ".join(f"{a}x{b}" for a, b in factor_pairs(world_size))
        raise ValueError(
            f"comm.torus_x={torus_x}: a {x} x {world_size / x:g} torus does not hold {world_size} "
            f"workers (X * Y must equal the world size); accepted shapes X x Y: {shapes}"
        )
    return Topology(world_size=world_size, workers_per_node=workers_per_node, torus_x=x)


@dataclass(frozen=True)
class TopologyGroups:
    """This rank's process groups: its node, its inter-node ring (same local rank on every node), its
    torus row and column. ``leaders`` is the inter-node group of local rank 0 (used by the
    reduce/broadcast form of the hierarchical all-reduce)."""

    topology: Topology
    rank: int
    intra: object
    inter: object
    row: object
    column: object

    @property
    def local_rank(self) -> int:
        return self.rank % self.topology.workers_per_node

    @property
    def node_leader(self) -> int:
        """Global rank of local rank 0 on this rank's node."""
        return self.rank - self.local_rank


def build_groups(topology: Topology) -> TopologyGroups:
    """Create every intra-node, inter-node, row and column group (``new_group`` must be called by all
    ranks for every group, in the same order) and return this rank's.

    Raises:
        ValueError: if the process group's world size is not the topology's.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != topology.world_size:
        raise ValueError(f"the topology is for {topology.world_size} ranks, the process group has {world}")
    t = topology
    mine = {}
    for kind, lists in (
        ("intra", [t.node_ranks(n) for n in range(t.nodes)]),
        ("inter", [t.local_peers(lr) for lr in range(t.workers_per_node)]),
        ("row", [t.row_ranks(r) for r in range(t.torus_y)]),
        ("column", [t.column_ranks(c) for c in range(t.torus_x)]),
    ):
        for ranks in lists:
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[kind] = group
    return TopologyGroups(topology=t, rank=rank, **mine)
