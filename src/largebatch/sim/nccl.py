"""NCCL's own cost model of all-reduce: ring, tree, NVLS, NVLS-tree and CollNet, with the LL, LL128
and Simple protocols, and NCCL's rule of running the pair with the smallest predicted time.

NCCL (NVIDIA Collective Communications Library) predicts, for every (algorithm, protocol) pair it
has enabled on a communicator, ``time = latency + bytes / bandwidth`` and runs the smallest
(``ncclTuningSelectBestTuning``). This module computes the same prediction from the cluster's
:class:`~largebatch.sim.allreduce.Network`, so ``algorithm="auto"`` answers "what would NCCL run,
and how long would it take". Every constant is NCCL's, from NVIDIA/nccl at commit
``1fc949c50bbd7e31fb27343def456d8d48993a90`` (2026, ``src/tuning/``):

* ``cost_model.cc``: ``baseLatencies``, ``hwLatencies``, ``llMaxBws``, ``perChMaxRingLL128Bws``,
  ``perChMaxTreeLL128Bws``, ``perChMaxTreeBws``, ``perChMaxNVLSTreeBws``, ``treeCorrectionFactor``;
* ``ring.cc``: ring bus bandwidth, LL (x 0.5) and LL128 (x 0.92) derates, per-step latency with the
  network overhead (1 us Intel, 2 us AMD, x 3 for Simple), the 1.9 / 1.4 ring "plateau" factor;
* ``tree.cc``: tree bandwidth (x 0.92, LL / 3.8, LL128 x 120/128), algorithm bandwidth = bus x 0.5,
  latency ``2 ((ppn - 1) intra + log2(nodes) inter)``;
* ``nvls.cc``: ``nvlsEfficiency`` (Hopper 0.85, Blackwell 0.74), NVLS and NVLS-tree bandwidth and
  latency; ``collnet.cc``: CollNet direct and chain latency (0.4 us arity serialization).

What the model cannot take from NCCL is the output of its topology search (the per-channel
bandwidths ``bwIntra`` / ``bwInter`` and the channel count). Here the search is replaced by the
hardware: a channel set whose bus bandwidth inside a node is the node's per-GPU NVLink / PCIe
bandwidth (``Network.intra_node_bandwidth_bytes_per_s``) and across nodes the NICs a node's GPUs
can use (``min(nics, ppn) x nic``), divided over ``Network.nccl_channels`` channels
(docs/comm.md, "NCCL's algorithms").

CollNet bandwidth: the commit above starts the CollNet all-reduce bus bandwidth at zero before
dividing it by the GPU/NIC factor; this model uses twice the ring bandwidth across nodes
(in-network reduction: each NIC carries the data once each way instead of ``2 (n-1)/n`` times)
divided by that factor and derated by 0.85 on Hopper and later, as ``collnet.cc`` does
[assumption: the starting value].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from largebatch.sim.network import AllReduceCost, Network, contention_factor

NCCL_COMMIT = "NVIDIA/nccl@1fc949c50bbd7e31fb27343def456d8d48993a90 src/tuning/"

PROTOCOLS = ("LL", "LL128", "Simple")
NCCL_ALGORITHMS = ("nccl_ring", "tree", "nvls", "nvls_tree", "collnet_direct", "collnet_chain")
"""NCCL's all-reduce algorithms (PAT does only all-gather / reduce-scatter)."""

_ALGO_KEY = {
    "nccl_ring": "ring",
    "tree": "tree",
    "nvls": "nvls",
    "nvls_tree": "nvls_tree",
    "collnet_direct": "collnet_direct",
    "collnet_chain": "collnet_chain",
}

# cost_model.cc, baseLatencies[algo][proto] in microseconds, protocols LL, LL128, Simple.
BASE_LATENCY_US = {
    "tree": (6.8, 14.0, 8.4),
    "ring": (6.6, 14.0, 8.4),
    "collnet_direct": (0.0, 0.0, 0.0),
    "collnet_chain": (0.0, 0.0, 0.0),
    "nvls": (0.0, 0.0, 0.0),
    "nvls_tree": (0.0, 0.0, 0.0),
}
# cost_model.cc, hwLatencies[hw][algo][proto] in microseconds; hw NVLINK, PCI, NET.
HW_LATENCY_US = {
    "nvlink": {
        "tree": (0.6, 1.25, 4.0),
        "ring": (0.6, 1.9, 3.4),
        "collnet_direct": (0.0, 0.0, 3.7),
        "collnet_chain": (0.0, 0.0, 2.8),
        "nvls": (0.0, 0.0, 25.0),
        "nvls_tree": (0.0, 0.0, 25.0),
    },
    "pci": {
        "tree": (1.0, 1.9, 4.0),
        "ring": (1.0, 2.5, 5.7),
        "collnet_direct": (0.0, 0.0, 3.7),
        "collnet_chain": (0.0, 0.0, 2.8),
        "nvls": (0.0, 0.0, 0.0),
        "nvls_tree": (0.0, 0.0, 0.0),
    },
    "net": {
        "tree": (5.0, 8.5, 14.0),
        "ring": (2.7, 4.0, 14.0),
        "collnet_direct": (0.0, 0.0, 31.0),
        "collnet_chain": (0.0, 0.0, 30.0),
        "nvls": (0.0, 0.0, 18.0),
        "nvls_tree": (0.0, 0.0, 20.9),
    },
}
# cost_model.cc, GB/s. Rows: compute-capability class (Volta and older, Ampere, Hopper, Blackwell);
# columns: 1 node, 2 nodes, 3+ nodes (index2). llMaxBws's rows are index1 (see _ll_row).
LL_MAX_BW = ((39.0, 39.0, 20.4), (87.7, 22.5, 19.0), (141.0, 45.0, 35.0), (282.0, 90.0, 70.0))
PER_CH_MAX_RING_LL128_BW = ((20.0, 20.0, 20.0), (20.0, 20.0, 20.0), (36.7, 36.7, 36.7), (40.0, 40.0, 40.0))
PER_CH_MAX_TREE_LL128_BW = ((20.0, 20.0, 20.0), (20.0, 20.0, 20.0), (36.7, 36.7, 29.0), (55.6, 31.67, 20.0))
PER_CH_MAX_TREE_BW = ((26.5, 18.5, 10.0), (24.0, 23.6, 17.8), (38.7, 41.4, 36.0), (70.0, 42.8, 24.0))
PER_CH_MAX_NVLS_TREE_BW = ((26.5, 18.5, 10.0), (24.0, 23.6, 17.8), (0.0, 57.7, 45.5), (0.0, 96.0, 80.0))
NVLS_EFFICIENCY = (0.0, 0.0, 0.85, 0.74)  # nvls.cc
# cost_model.cc treeCorrectionFactor[proto][log2(bytes / 64)], powers of two from 64 B.
TREE_CORRECTION = {
    "LL": (1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.5, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0),
    "LL128": (
        1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.8, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0,
    ),
    "Simple": (
        0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.7, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.7, 0.7, 0.8, 0.9, 0.9,
    ),
}  # fmt: skip
NET_OVERHEAD_US = {"intel": 1.0, "amd": 2.0}  # ring.cc getNetOverhead (x 3 for Simple)
MAX_DIRECT_ARITY_PLUS_1 = 8  # CollNet direct / chain: at most 8 local GPUs


@dataclass(frozen=True)
class NcclChoice:
    """One (algorithm, protocol) pair's prediction for an all-reduce of ``nbytes``.

    ``latency_s`` and ``bandwidth_bytes_per_s`` are NCCL's (algorithm bandwidth: ``time = latency
    + nbytes / bandwidth``); ``bus_bandwidth_bytes_per_s`` is nccl-tests' busBw of that time
    (``algbw * 2 (n-1) / n``), the figure nccl-tests prints.
    """

    algorithm: str
    protocol: str
    latency_s: float
    bandwidth_bytes_per_s: float
    time_s: float
    bus_bandwidth_bytes_per_s: float


def _cc_index(cc: int) -> int:
    return 3 if cc >= 100 else 2 if cc >= 90 else 1 if cc >= 80 else 0


def _log2i(x: int) -> int:
    return x.bit_length() - 1 if x > 0 else -1


def _shape(net: Network, gpus: int) -> tuple[int, int]:
    """(nodes, GPUs per node) of ``gpus`` ranks placed node by node."""
    ppn = min(gpus, net.gpus_per_node)
    return math.ceil(gpus / ppn), ppn


def enabled_pairs(net: Network, gpus: int) -> list[tuple[str, str]]:
    """The (algorithm, protocol) pairs NCCL would consider for an all-reduce on ``gpus`` ranks.

    LL and Simple always; LL128 only with NVLink inside the node and compute capability >= 7.0
    (NCCL's default ``NCCL_PROTO`` auto rule); tree always; NVLS (Simple) with NVLink SHARP
    (``net.nvls``, Hopper and later) on one node, or across nodes only with CollNet; NVLS-tree
    across nodes; CollNet direct / chain (Simple: NCCL has no LL / LL128 CollNet kernels) across
    nodes with in-network reduction (``net.collnet``) and at most 8 GPUs per node.
    """
    nodes, ppn = _shape(net, gpus)
    protos = ["LL", "Simple"] + (["LL128"] if net.intra_link == "nvlink" and net.compute_capability >= 70 else [])
    pairs = [(a, p) for a in ("nccl_ring", "tree") for p in protos]
    nvls_ok = net.nvls and net.compute_capability >= 90 and net.nccl_channels >= 2
    if nvls_ok and (nodes == 1 or net.collnet):
        pairs.append(("nvls", "Simple"))
    if nvls_ok and nodes > 1:
        pairs.append(("nvls_tree", "Simple"))
    if net.collnet and nodes > 1 and ppn <= MAX_DIRECT_ARITY_PLUS_1:
        pairs += [("collnet_direct", "Simple"), ("collnet_chain", "Simple")]
    return pairs


def predict(net: Network, gpus: int, nbytes: float, algorithm: str, protocol: str) -> NcclChoice:
    """NCCL's predicted time of one all-reduce of ``nbytes`` per rank on ``gpus`` ranks with one
    (algorithm, protocol) pair, whether or not NCCL would enable it (see :func:`enabled_pairs`).

    Raises:
        ValueError: unknown algorithm or protocol, or gpus < 1.
    """
    if algorithm not in NCCL_ALGORITHMS:
        raise ValueError(f"NCCL algorithm {algorithm!r} is unknown; accepted: {', '.join(NCCL_ALGORITHMS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"NCCL protocol {protocol!r} is unknown; accepted: {', '.join(PROTOCOLS)}")
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"gpus={gpus} is invalid; accepted: an integer >= 1")
    if gpus == 1:
        return NcclChoice(algorithm, protocol, 0.0, math.inf, 0.0, math.inf)
    c = _context(net, gpus, nbytes, algorithm, protocol)
    alg, lat = _BY_FAMILY[c.a](c)
    bandwidth = alg * 1e9
    time_s = lat * 1e-6 + nbytes / bandwidth if bandwidth > 0 else math.inf
    bus_bw = nbytes / time_s / c.to_alg if time_s > 0 else math.inf
    return NcclChoice(algorithm, protocol, lat * 1e-6, bandwidth, time_s, bus_bw)


@dataclasses.dataclass(frozen=True)
class _Tuning:
    """The quantities NCCL's tuning model (``src/graph/tuning.cc``) reads for one all-reduce: the
    algorithm family ``a`` and protocol index ``p``, the cluster's shape, bus bandwidths (GB/s) and
    per-hop latencies (microseconds)."""

    net: Network
    gpus: int
    nbytes: float
    protocol: str
    a: str
    p: int
    nodes: int
    ppn: int
    cc: int
    col: int
    channels: int
    intra_bus: float
    inter_bus: float
    ring_steps: int
    to_alg: float
    ll_max: float
    intra_lat: float
    inter_lat: float
    base: float


def _context(net: Network, gpus: int, nbytes: float, algorithm: str, protocol: str) -> _Tuning:
    """The tuning model's inputs for ``algorithm``/``protocol`` on ``gpus`` ranks of ``net``."""
    a, p = _ALGO_KEY[algorithm], PROTOCOLS.index(protocol)
    nodes, ppn = _shape(net, gpus)
    cc = _cc_index(net.compute_capability)
    col = min(nodes - 1, 2)
    # the topology search's result, replaced by the hardware: bus bandwidth in GB/s
    intra_bus = net.intra_node_bandwidth_bytes_per_s / 1e9 if ppn > 1 else math.inf
    inter_bus = (
        net.crossing_bandwidth_bytes_per_s(1, ppn) / 1e9 / contention_factor(net, nodes, "ring")
        if nodes > 1
        else intra_bus
    )
    ring_steps = 2 * (gpus - 1)
    ll_row = cc if nodes == 1 else (1 if net.cpu_vendor == "amd" else 0)
    intra_lat = HW_LATENCY_US["nvlink" if net.intra_link == "nvlink" else "pci"][a][p]
    inter_lat = intra_lat if nodes == 1 else HW_LATENCY_US["net"][a][p]
    inter_lat += net.nccl_net_latency_us * (2 if protocol == "Simple" else 1) if nodes > 1 else 0.0
    return _Tuning(
        net, gpus, nbytes, protocol, a, p, nodes, ppn, cc, col, net.nccl_channels, intra_bus, inter_bus,
        ring_steps, gpus / ring_steps, LL_MAX_BW[ll_row][col], intra_lat, inter_lat, BASE_LATENCY_US[a][p],
    )  # fmt: skip


def _ring(c: _Tuning) -> tuple[float, float]:
    """(algorithm bandwidth in GB/s, latency in microseconds) of the ring."""
    bus = min(c.inter_bus if c.nodes > 1 else c.intra_bus, c.intra_bus)
    if c.protocol == "LL":
        bus = min(c.ll_max, bus * 0.5)
    elif c.protocol == "LL128":
        bus = min(bus * 0.92, c.channels * PER_CH_MAX_RING_LL128_BW[c.cc][c.col])
    intra_lat = c.intra_lat
    if c.nodes > 1:
        intra_lat = max(intra_lat, NET_OVERHEAD_US[c.net.cpu_vendor] * (3 if c.protocol == "Simple" else 1))
    inter_steps = 0 if c.nodes == 1 else 2 * (c.nodes - 1)
    lat = c.base + (c.ring_steps - inter_steps) * intra_lat + inter_steps * c.inter_lat
    if c.protocol == "Simple" and c.nodes > 1 and c.nbytes / (c.channels * c.gpus) >= 64:
        lat *= 1.9 if c.net.compute_capability < 80 else 1.4  # ring.cc: plateau effect of ring
    return bus * c.to_alg, lat


def _tree(c: _Tuning) -> tuple[float, float]:
    """(algorithm bandwidth in GB/s, latency in microseconds) of the double binary tree."""
    bus = min(c.inter_bus, c.intra_bus)
    bus = min(bus * 0.92, c.channels * PER_CH_MAX_TREE_BW[c.cc][c.col])
    if c.protocol == "LL":
        bus = min(bus / 3.8, c.ll_max)
    elif c.protocol == "LL128":
        bus = min(bus * (7 / 9 if c.nodes == 1 else 120 / 128), c.channels * PER_CH_MAX_TREE_LL128_BW[c.cc][c.col])
    alg = bus * 0.5
    lat = c.base + 2 * ((c.gpus // c.nodes - 1) * c.intra_lat + _log2i(c.nodes) * c.inter_lat)
    log_size = _log2i(int(c.nbytes) >> 6)
    if 0 <= log_size < 23:
        alg *= TREE_CORRECTION[c.protocol][log_size]
    return alg, lat


def _nvls(c: _Tuning) -> tuple[float, float]:
    """(algorithm bandwidth in GB/s, latency in microseconds) of NVLink SHARP, alone or under a tree."""
    intra = c.intra_bus * NVLS_EFFICIENCY[c.cc] * (c.channels - 1) / c.channels * 2
    inter = math.inf if c.nodes == 1 else c.inter_bus * (2 if c.a == "nvls_tree" and c.nodes <= 2 else 1)
    cap = c.channels * PER_CH_MAX_NVLS_TREE_BW[c.cc][c.col] if c.a == "nvls_tree" else math.inf
    bus = min(intra, inter, cap)
    if c.a == "nvls":
        return bus * c.to_alg, c.intra_lat + (c.inter_lat if c.nodes > 1 else 0.0)
    return bus * c.to_alg, c.base + c.intra_lat + 2 * _log2i(c.nodes) * c.inter_lat


def _collnet(c: _Tuning) -> tuple[float, float]:
    """(algorithm bandwidth in GB/s, latency in microseconds) of CollNet: in-network reduction (SHARP)."""
    factor = c.ppn / c.channels
    factor -= (factor - 1) / 2
    bus = 2 * min(c.inter_bus, c.intra_bus) / factor * (0.85 if c.cc >= 2 else 1.0)
    if c.a == "collnet_direct":
        lat = c.base + 2 * (min(1, c.ppn - 1) * c.intra_lat + (c.ppn - 1) * 0.4) + c.inter_lat
    else:
        lat = c.base + 2 * (c.ppn - 1) * c.intra_lat + c.inter_lat
    return bus * 0.5, lat


_BY_FAMILY = {
    "ring": _ring,
    "tree": _tree,
    "nvls": _nvls,
    "nvls_tree": _nvls,
    "collnet_direct": _collnet,
    "collnet_chain": _collnet,
}


def select(net: Network, gpus: int, nbytes: float, algorithm: str = "auto", protocol: str = "auto") -> NcclChoice:
    """NCCL's choice: the enabled (algorithm, protocol) pair with the smallest predicted time.

    ``algorithm`` / ``protocol``: ``"auto"`` or a name, which restricts the choice as
    ``NCCL_ALGO`` / ``NCCL_PROTO`` do.

    Raises:
        ValueError: an unknown name, or a restriction that leaves no enabled pair (the message
            lists the enabled ones).
    """
    if algorithm != "auto" and algorithm not in NCCL_ALGORITHMS:
        raise ValueError(f"NCCL algorithm {algorithm!r} is unknown; accepted: auto, {', '.join(NCCL_ALGORITHMS)}")
    if protocol != "auto" and protocol not in PROTOCOLS:
        raise ValueError(f"NCCL protocol {protocol!r} is unknown; accepted: auto, {', '.join(PROTOCOLS)}")
    pairs = enabled_pairs(net, gpus)
    chosen = [(a, p) for a, p in pairs if algorithm in ("auto", a) and protocol in ("auto", p)]
    if not chosen:
        names = ", ".join(f"{a}/{p}" for a, p in pairs)
        raise ValueError(f"NCCL would not run {algorithm}/{protocol} on this network at {gpus} GPUs; accepted: {names}")
    return min((predict(net, gpus, nbytes, a, p) for a, p in chosen), key=lambda c: c.time_s)


def nccl_allreduce(
    net: Network, gpus: int, nbytes: float, *, algorithm: str = "auto", protocol: str = "auto"
) -> AllReduceCost:
    """The all-reduce NCCL would run, as an :class:`AllReduceCost` (``algorithm`` is
    ``"<algorithm>/<protocol>"`` of the choice; ``steps`` the latency terms of its formula; the
    bytes are those of a ring on the same GPUs, split by node crossings for the network share).

    Raises:
        ValueError: as :func:`select`.
    """
    choice = select(net, gpus, nbytes, algorithm, protocol)
    nodes, ppn = _shape(net, gpus)
    sent = 2 * (gpus - 1) / gpus * nbytes
    inter = 2 * nbytes / ppn if nodes > 1 else 0.0
    inter = min(inter, sent)
    if choice.algorithm in ("nccl_ring",):
        steps = 2 * (gpus - 1)
    elif choice.algorithm in ("tree",):
        steps = 2 * ((gpus // nodes - 1) + max(0, _log2i(nodes)))
    elif choice.algorithm == "nvls_tree":
        steps = 1 + 2 * max(0, _log2i(nodes))
    else:
        steps = 1 if nodes == 1 else 2
    return AllReduceCost(f"{choice.algorithm}/{choice.protocol}", steps, sent - inter, inter, choice.time_s)
