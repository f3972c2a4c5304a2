"""The cluster a cost model runs on (:class:`Network`), the result of one all-reduce
(:class:`AllReduceCost`) and the fabric's contention (:func:`contention_factor`).

Shared by the alpha-beta algorithms of :mod:`largebatch.sim.allreduce` and NCCL's model in
:mod:`largebatch.sim.nccl`. See docs/comm.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Network:
    """Nodes of ``gpus_per_node`` GPUs: one link type inside a node, NICs between nodes.

    Bandwidths are bytes/s in one direction; latencies are the per-step alpha in seconds.

    Raises:
        ValueError: for a non-positive field.
    """

    gpus_per_node: int
    intra_node_latency_s: float
    intra_node_bandwidth_bytes_per_s: float
    """Bandwidth of one ring hop between two GPUs of a node (NVLink, PCIe)."""
    inter_node_latency_s: float
    nic_bandwidth_bytes_per_s: float
    """One NIC, one direction."""
    nics_per_node: int = 1
    fabric_oversubscription: float = 1.0
    """Oversubscription of the links above a leaf switch (3.0: a leaf's uplinks carry a third of
    what its nodes' NICs can send). 1.0: non-blocking fabric."""
    nodes_per_leaf_switch: int = 0
    """Nodes under one leaf switch (or rack) with full bisection among them; 0: all nodes."""
    # NCCL's cost model (largebatch.sim.nccl)
    intra_link: str = "nvlink"
    """``nvlink`` (NVLink / NVSwitch) or ``pci``: which of NCCL's latency rows applies in a node."""
    compute_capability: int = 70
    """CUDA compute capability x 10 (60 P100, 70 V100, 80 A100, 90 H100 / H200, 100 B200)."""
    nccl_channels: int = 8
    """Channels of NCCL's ring / tree graphs (the topology search's result; an input here)."""
    nvls: bool = False
    """NVSwitch with NVLink SHARP (multicast and in-switch reduction): NCCL's NVLS algorithms."""
    collnet: bool = False
    """In-network reduction on the fabric (SHARP on InfiniBand): NCCL's CollNet algorithms."""
    cpu_vendor: str = "intel"
    """``intel`` or ``amd``: NCCL's per-step network overhead (1 or 2 us) and LL bandwidth row."""
    nccl_net_latency_us: float = 0.0
    """The network plugin's extra latency (NCCL's ``graph.latencyInter``; 0 for InfiniBand verbs)."""

    def __post_init__(self):
        positive = (
            "gpus_per_node",
            "intra_node_latency_s",
            "intra_node_bandwidth_bytes_per_s",
            "inter_node_latency_s",
            "nic_bandwidth_bytes_per_s",
            "nics_per_node",
            "nccl_channels",
            "compute_capability",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Network.{name}={value} is invalid; accepted: > 0")
        checks = {
            "fabric_oversubscription": (self.fabric_oversubscription >= 1, ">= 1 (1: non-blocking)"),
            "nodes_per_leaf_switch": (self.nodes_per_leaf_switch >= 0, ">= 0 (0: one switch for all nodes)"),
            "intra_link": (self.intra_link in ("nvlink", "pci"), "'nvlink' or 'pci'"),
            "cpu_vendor": (self.cpu_vendor in ("intel", "amd"), "'intel' or 'amd'"),
            "nccl_net_latency_us": (self.nccl_net_latency_us >= 0, ">= 0"),
        }
        for name, (ok, accepted) in checks.items():
            if not ok:
                raise ValueError(f"Network.{name}={getattr(self, name)!r} is invalid; accepted: {accepted}")

    def crossing_bandwidth_bytes_per_s(self, flows_per_node: int, members_per_node: int) -> float:
        """Bandwidth of one of ``flows_per_node`` rings or exchanges leaving a node at once, each
        with ``members_per_node`` GPUs in the node (at most one NIC per member)."""
        nic = self.nic_bandwidth_bytes_per_s
        return min(self.nics_per_node * nic / flows_per_node, members_per_node * nic)


def contention_factor(net: Network, nodes: int, pattern: str) -> float:
    """How much slower the network links of one step are than the NICs alone make them, for a step
    over ``nodes`` nodes (a fat tree whose uplinks above each leaf of ``nodes_per_leaf_switch``
    nodes are ``fabric_oversubscription`` times thinner than its nodes' NICs).

    ``pattern="ring"``: neighbours exchange (rings, trees, the columns of a 2D torus): one node per
    leaf sends off the leaf, so the factor is ``max(1, oversubscription / nodes_per_leaf)``.
    ``pattern="all"``: every node's partner is under another leaf (the exchanges of halving /
    doubling at a distance of at least one leaf): the factor is the oversubscription.

    Raises:
        ValueError: unknown pattern.
    """
    if pattern not in ("ring", "all"):
        raise ValueError(f"contention pattern={pattern!r} is unknown; accepted: 'ring', 'all'")
    leaf = net.nodes_per_leaf_switch
    if leaf == 0 or nodes <= leaf:
        return 1.0
    over = net.fabric_oversubscription
    return over if pattern == "all" else max(1.0, over / leaf)


@dataclass(frozen=True)
class AllReduceCost:
    """Cost of one all-reduce of ``nbytes`` per GPU.

    ``steps``: sequential communication steps (each pays one alpha). ``*_bytes_per_gpu``: bytes a
    GPU sends over that link type, averaged over all GPUs (the node's NICs carry gpus_per_node times
    ``inter_node_bytes_per_gpu``). ``time_s``: the model time in seconds.
    """

    algorithm: str
    steps: int
    intra_node_bytes_per_gpu: float
    inter_node_bytes_per_gpu: float
    time_s: float

    @property
    def bytes_per_gpu(self) -> float:
        return self.intra_node_bytes_per_gpu + self.inter_node_bytes_per_gpu

    def __add__(self, other: AllReduceCost) -> AllReduceCost:
        return AllReduceCost(
            self.algorithm,
            self.steps + other.steps,
            self.intra_node_bytes_per_gpu + other.intra_node_bytes_per_gpu,
            self.inter_node_bytes_per_gpu + other.inter_node_bytes_per_gpu,
            self.time_s + other.time_s,
        )
