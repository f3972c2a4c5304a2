"""Alpha-beta (Hockney) cost model of all-reduce algorithms on a cluster of nodes.

A step that sends ``m`` bytes over a link costs ``alpha + m / bandwidth``; steps of one algorithm
run one after the other, and the slowest link a step uses sets its time. Ranks are numbered node
by node (rank r on node ``r // gpus_per_node``, torchrun's order). Closed forms: Mikami et al. 2018
(the table this module reproduces), Goyal et al. 2017 sec. 4 (halving/doubling, binary blocks),
Jia et al. 2018 (reduce to a master), Mikami et al. 2018 (2D torus).

Shared NICs ("divided accordingly"): the rings or exchanges that cross a node boundary at the same
time share the node's NICs equally, and one of them uses at most one NIC per member GPU it has in
the node (NCCL-style channels stripe a ring over the NICs its GPUs sit next to). So a flat ring
gets the whole node bandwidth, the X column rings of a 2D torus get 1/X of it each, and the single
master of the reduce-to-master scheme gets one NIC.
"""

from __future__ import annotations

import math
from dataclasses import replace

from largebatch.sim.nccl import NCCL_ALGORITHMS, nccl_allreduce
from largebatch.sim.network import AllReduceCost, Network, contention_factor

CLASSIC_ALGORITHMS = ("ring", "halving_doubling", "hierarchical", "torus2d")
"""Alpha-beta models of the algorithms the papers implemented themselves."""
ALGORITHMS = ("auto", *CLASSIC_ALGORITHMS, *NCCL_ALGORITHMS)
"""``auto``: what NCCL would run (its fastest algorithm/protocol pair); then the classic ones; then
each of NCCL's algorithms with NCCL's fastest protocol for it."""

__all__ = ["ALGORITHMS", "CLASSIC_ALGORITHMS", "AllReduceCost", "Network", "allreduce_cost", "contention_factor"]


_ZERO = AllReduceCost("", 0, 0.0, 0.0, 0.0)


def _ring_phase(
    net: Network,
    *,
    size: int,
    per_node: int,
    flows: int,
    nbytes: float,
    passes: int,
    share: float = 1.0,
    node_stride: int = 1,
) -> AllReduceCost:
    """``passes`` passes of a ring of ``size`` GPUs (1: reduce-scatter or all-gather, 2: all-reduce)
    on a vector of ``nbytes``, ``per_node`` members in each node, ``flows`` such rings crossing each
    node at once; ``share`` is the fraction of all GPUs that are members (for the means).
    ``node_stride``: nodes between consecutive members' nodes (for the fabric's leaves)."""
    if size <= 1:
        return _ZERO
    steps = passes * (size - 1)
    sent = steps * nbytes / size  # per member: each step moves one chunk of nbytes / size
    if size <= per_node:
        t = steps * net.intra_node_latency_s + sent / net.intra_node_bandwidth_bytes_per_s
        return AllReduceCost("", steps, sent * share, 0.0, t)
    crossing = math.ceil(size / per_node) / size  # fraction of hops that leave a node
    nodes = math.ceil(size / per_node) * node_stride
    bw = net.crossing_bandwidth_bytes_per_s(flows, per_node) / contention_factor(net, nodes, "ring")
    if per_node > 1:  # the ring also has intra-node hops; the slowest hop sets the step time
        bw = min(bw, net.intra_node_bandwidth_bytes_per_s)
    t = steps * net.inter_node_latency_s + sent / bw
    return AllReduceCost("", steps, sent * (1 - crossing) * share, sent * crossing * share, t)


def _halving_doubling_phase(
    net: Network, *, size: int, per_node: int, flows: int, nbytes: float, share: float = 1.0, node_stride: int = 1
) -> AllReduceCost:
    """Recursive halving (reduce-scatter, distance 1, 2, 4, ..., data halving) then doubling
    (all-gather) over ``size`` GPUs. Non-power-of-two: binary blocks as two extra steps (the
    ``size - P`` extra GPUs send their vector to a partner first and get the sum back last; Goyal
    sec. 4). The exchange at distance 2^k stays in a node iff 2^(k+1) divides ``per_node``; one at a
    distance of a leaf switch's nodes or more runs at the NIC bandwidth over the fabric's
    oversubscription (every node sends off its leaf at once)."""
    if size <= 1:
        return _ZERO
    levels = size.bit_length() - 1
    p, extra = 1 << levels, size - (1 << levels)
    local = levels if size <= per_node else min(levels, (per_node & -per_node).bit_length() - 1)
    intra = 2 * nbytes * (1 - 2.0**-local)  # per member of the power-of-two group
    inter = 2 * nbytes * (2.0**-local - 1 / p)
    t = 2 * local * net.intra_node_latency_s + intra / net.intra_node_bandwidth_bytes_per_s
    if inter:
        bw = net.crossing_bandwidth_bytes_per_s(flows * per_node, 1)
        t += 2 * (levels - local) * net.inter_node_latency_s
        leaf, spanned = net.nodes_per_leaf_switch, math.ceil(size / per_node) * node_stride
        for k in range(local, levels):  # the exchange at distance 2^k moves nbytes / 2^(k+1) each way
            far = 0 < leaf < spanned and (1 << k) / per_node * node_stride >= leaf
            t += 2 * nbytes / 2 ** (k + 1) * (net.fabric_oversubscription if far else 1.0) / bw
    cost = AllReduceCost("", 2 * levels, intra * p / size * share, inter * p / size * share, t)
    if extra:
        within = size <= per_node
        bw = (
            net.intra_node_bandwidth_bytes_per_s
            if within
            else net.crossing_bandwidth_bytes_per_s(flows * min(per_node, extra), 1)
        )
        alpha = net.intra_node_latency_s if within else net.inter_node_latency_s
        moved = 2 * extra * nbytes / size * share  # extra GPUs send nbytes in, partners send it back
        cost += AllReduceCost("", 2, moved if within else 0.0, 0.0 if within else moved, 2 * (alpha + nbytes / bw))
    return cost


def ring(net: Network, gpus: int, nbytes: float) -> AllReduceCost:
    """Flat ring over all GPUs: 2(N-1) steps of nbytes/N, 2(N-1)/N * nbytes sent per GPU. With
    N > gpus_per_node every step runs at the inter-node alpha and the slower of the intra-node link
    and the node's NICs (a flat ring crosses each node boundary once, striped over the NICs)."""
    _check_gpus(gpus)
    cost = _ring_phase(net, size=gpus, per_node=min(gpus, net.gpus_per_node), flows=1, nbytes=nbytes, passes=2)
    return replace(cost, algorithm="ring")


def halving_doubling(net: Network, gpus: int, nbytes: float) -> AllReduceCost:
    """Recursive halving/doubling over all GPUs (Goyal et al. 2017 sec. 4; Thakur et al. 2005):
    2 log2(N) steps and 2(N-1)/N * nbytes per GPU for N a power of two; otherwise binary blocks,
    2 floor(log2 N) + 2 steps. The first log2(gpus_per_node) exchanges stay inside a node; in the
    others all GPUs of a node send across at once and share its NICs."""
    _check_gpus(gpus)
    cost = _halving_doubling_phase(net, size=gpus, per_node=min(gpus, net.gpus_per_node), flows=1, nbytes=nbytes)
    return replace(cost, algorithm="halving_doubling")


def hierarchical(
    net: Network, gpus: int, nbytes: float, *, mode: str = "scatter", inter: str = "ring"
) -> AllReduceCost:
    """Intra-node, inter-node, intra-node (G = gpus_per_node, Y = N / G nodes).

    ``mode="scatter"``: ring reduce-scatter in the node, G concurrent all-reduces of nbytes/G across
    nodes (one per local rank, sharing the NICs), ring all-gather in the node: the 2D torus with
    X = G. ``mode="reduce"`` (Goyal et al. 2017 sec. 4; Jia et al. 2018): reduce to one master per
    node, all-reduce of the whole vector among the Y masters (one NIC each), broadcast; the
    reduce and the broadcast are pipelined chains, (G-1) alpha + nbytes / bandwidth each.
    ``inter``: ``ring`` (2(Y-1) steps) or ``halving_doubling`` (Goyal's choice).

    Raises:
        ValueError: mode or inter unknown, or N > G not a multiple of G.
    """
    _check_gpus(gpus)
    if mode not in ("scatter", "reduce"):
        raise ValueError(f"hierarchical mode={mode!r} is unknown; accepted: 'scatter', 'reduce'")
    if inter not in ("ring", "halving_doubling"):
        raise ValueError(f"hierarchical inter={inter!r} is unknown; accepted: 'ring', 'halving_doubling'")
    g = net.gpus_per_node
    if gpus <= g:
        return replace(ring(net, gpus, nbytes), algorithm="hierarchical")
    if gpus % g:
        raise ValueError(
            f"hierarchical all-reduce needs gpus={gpus} to be a multiple of "
            f"gpus_per_node={g}; accepted: {g * (gpus // g)} or {g * (gpus // g + 1)}"
        )
    across = _ring_phase if inter == "ring" else _halving_doubling_phase
    extra = {"passes": 2} if inter == "ring" else {}
    if mode == "scatter":
        local = _ring_phase(net, size=g, per_node=g, flows=1, nbytes=nbytes, passes=1)
        cost = local + across(net, size=gpus // g, per_node=1, flows=g, nbytes=nbytes / g, **extra) + local
    else:
        chain = AllReduceCost(
            "",
            g - 1,
            (g - 1) / g * nbytes,
            0.0,
            (g - 1) * net.intra_node_latency_s + nbytes / net.intra_node_bandwidth_bytes_per_s,
        )
        masters = across(net, size=gpus // g, per_node=1, flows=1, nbytes=nbytes, share=1 / g, **extra)
        cost = chain + masters + chain
    return replace(cost, algorithm="hierarchical")


def torus2d(net: Network, gpus: int, nbytes: float, *, x: int | None = None) -> AllReduceCost:
    """2D-torus all-reduce on an X x Y grid of consecutive rows (Mikami et al. 2018):
    ring reduce-scatter along each row of X, ring all-reduce of the nbytes/X shards along each
    of the X columns of Y (concurrently, sharing the NICs), ring all-gather along each row.
    Steps 2(X-1) + 2(Y-1); bytes per GPU 2(X-1)/X * nbytes in rows + 2(Y-1)/(XY) * nbytes in columns.
    ``x`` defaults to gpus_per_node (a row is a node).

    Raises:
        ValueError: x does not divide N, or x is neither a multiple nor a divisor of gpus_per_node.
    """
    _check_gpus(gpus)
    g = net.gpus_per_node
    x = x if x is not None else (g if gpus >= g else gpus)
    if x < 1 or gpus % x:
        divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
        raise ValueError(f"torus2d x={x} does not divide gpus={gpus}; accepted: one of {divisors}")
    if gpus > g and x % g and g % x:
        raise ValueError(
            f"torus2d x={x} splits nodes of gpus_per_node={g} unevenly; accepted: a multiple or a divisor of {g}"
        )
    y = gpus // x
    row = _ring_phase(net, size=x, per_node=min(x, g), flows=1, nbytes=nbytes, passes=1)
    column = _ring_phase(
        net, size=y, per_node=max(1, g // x), flows=min(x, g), nbytes=nbytes / x, passes=2, node_stride=max(1, x // g)
    )
    return replace(row + column + row, algorithm="torus2d")


def allreduce_cost(algorithm: str, net: Network, gpus: int, nbytes: float, **options) -> AllReduceCost:
    """Dispatch by name (one of :data:`ALGORITHMS`); ``options`` go to hierarchical/torus2d, or
    ``protocol`` (``LL``, ``LL128``, ``Simple``, default ``auto``) to ``auto`` and NCCL's algorithms
    (:func:`largebatch.sim.nccl.nccl_allreduce`).

    Raises:
        ValueError: unknown algorithm or invalid options.
    """
    funcs = {"ring": ring, "halving_doubling": halving_doubling, "hierarchical": hierarchical, "torus2d": torus2d}
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is unknown; accepted: {', '.join(ALGORITHMS)}")
    if algorithm in funcs:
        return funcs[algorithm](net, gpus, nbytes, **options)
    _check_gpus(gpus)
    return nccl_allreduce(net, gpus, nbytes, algorithm=algorithm, protocol=options.get("protocol", "auto"))


def _check_gpus(gpus: int) -> None:
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"gpus={gpus} is invalid; accepted: an integer >= 1")
