"""The all-reduce model against published nccl-tests figures (``all_reduce_perf``), each recomputed
from the networks here, none of whose inputs was fitted to the figure it is compared with; and
the comparison type the run rows of :mod:`largebatch.sim.validation` share.

Target: within 25 % (:data:`COLLECTIVE_TARGET`); docs/comm.md ("Validation") holds
:func:`collectives_table`, which tests/unit/test_sim_nccl.py checks against this module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from largebatch.sim.nccl import select
from largebatch.sim.network import Network
from largebatch.sim.presets import gbit_s, get_preset

COLLECTIVE_TARGET = 0.25


class Compared:
    """A prediction against a published figure: ``error`` = predicted / published - 1."""

    target = 0.0

    @property
    def error(self) -> float:
        return self.predicted_s / self._published_s() - 1

    @property
    def met(self) -> bool:
        return abs(self.error) <= self.target


DGX_H100 = get_preset("h100_ndr").network
# NVIDIA/nccl#1244: 2 nodes x 8 H20 (NVLink 4 as the H100's), 16 ConnectX-7 NDR, NVLink SHARP, no CollNet
H20_2NODE = replace(DGX_H100, collnet=False, nodes_per_leaf_switch=0)
A100_HDR = Network(  # DGX A100-class nodes with 4 HDR 200 Gbit/s NICs (the systems of the issues below)
    gpus_per_node=8,
    intra_node_latency_s=3.4e-6,
    intra_node_bandwidth_bytes_per_s=12 * 20e9,  # topo.h SM80_NVLINK_BW 20 GB/s x 12 NVLink 3 links
    inter_node_latency_s=14e-6,
    nic_bandwidth_bytes_per_s=gbit_s(200),
    nics_per_node=4,
    compute_capability=80,
    nccl_channels=8,
)
A100_HDR_1GPU = Network(  # one A100 per node, one HDR NIC
    gpus_per_node=1,
    intra_node_latency_s=3.4e-6,
    intra_node_bandwidth_bytes_per_s=12 * 20e9,
    inter_node_latency_s=14e-6,
    nic_bandwidth_bytes_per_s=gbit_s(200),
    nics_per_node=1,
    compute_capability=80,
    nccl_channels=2,
)
NETWORKS = {"dgx_h100": DGX_H100, "h20_2node": H20_2NODE, "a100_4hdr": A100_HDR, "a100_1hdr": A100_HDR_1GPU}
GIB, MIB = 1 << 30, 1 << 20


@dataclass(frozen=True)
class Microbenchmark:
    """A published ``all_reduce_perf`` figure: ``published_us`` (time) or ``published_busbw_gbs``
    (bus bandwidth, converted to a time of ``nbytes``); ``algorithm``: what the run forced with
    ``NCCL_ALGO`` (``auto`` when it did not)."""

    name: str
    source: str
    network: str
    gpus: int
    nbytes: int
    algorithm: str = "auto"
    published_us: float | None = None
    published_busbw_gbs: float | None = None

    @property
    def published_s(self) -> float:
        if self.published_us is not None:
            return self.published_us * 1e-6
        return self.nbytes / (self.published_busbw_gbs * 1e9 * self.gpus / (2 * (self.gpus - 1)))


MICROBENCHMARKS = (
    Microbenchmark(
        "8 H100, NVSwitch, NCCL_ALGO=RING, large", "NVIDIA/nccl-tests#212 (sjeaugey): ~370 GB/s busBw",
        "dgx_h100", 8, 8 * GIB, "nccl_ring", published_busbw_gbs=370.0,
    ),
    Microbenchmark(
        "8 H100, NVSwitch, NVLS (default), peak", "NVIDIA/nccl-tests#212 (sjeaugey): peak busBw ~480 GB/s",
        "dgx_h100", 8, 8 * GIB, published_busbw_gbs=480.0,
    ),
    Microbenchmark(
        "2 x 8 H20, NDR, NVLS-tree forced, 8 B", "NVIDIA/nccl#1244 (haswelliris, NCCL 2.21.5): 47.60 us",
        "h20_2node", 16, 8, "nvls_tree", published_us=47.60,
    ),
    Microbenchmark(
        "2 x 8 H20, NDR, 64 MiB", "NVIDIA/nccl#1244 (vickkylu): 467.9 us", "h20_2node", 16, 64 * MIB,
        published_us=467.9,
    ),
    Microbenchmark(
        "2 x 8 H20, NDR, 512 MiB", "NVIDIA/nccl#1244 (vickkylu): 3218.6 us", "h20_2node", 16, 512 * MIB,
        published_us=3218.6,
    ),
    Microbenchmark(
        "32 x 8 A100, 4 HDR, 8 B", "NVIDIA/nccl#652 (manjunaths): 62.99 us", "a100_4hdr", 256, 8,
        published_us=62.99,
    ),
    Microbenchmark(
        "3 x 8 A100, 4 HDR, 128 MiB", "NVIDIA/nccl-tests#119 (Yujaeseo): peak busBw ~96 GB/s", "a100_4hdr", 24,
        128 * MIB, published_busbw_gbs=96.0,
    ),
    Microbenchmark(
        "2 x 8 A100, 4 HDR, 4 GiB", "NVIDIA/nccl-tests#175 (lcw2): 86 GB/s busBw", "a100_4hdr", 16, 4 * GIB,
        published_busbw_gbs=86.0,
    ),
    Microbenchmark(
        "2 x 1 A100, HDR, 8 B", "NVIDIA/nccl-tests#150 (scvance): 19.90 us", "a100_1hdr", 2, 8,
        published_us=19.90,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class CollectiveRow(Compared):
    bench: Microbenchmark
    choice: str
    predicted_s: float
    target = COLLECTIVE_TARGET

    def _published_s(self) -> float:
        return self.bench.published_s


def predict_collective(bench: Microbenchmark) -> CollectiveRow:
    choice = select(NETWORKS[bench.network], bench.gpus, bench.nbytes, bench.algorithm)
    return CollectiveRow(bench, f"{choice.algorithm}/{choice.protocol}", choice.time_s)


def format_time(seconds: float) -> str:
    """``seconds`` in the unit that reads best: min, s, ms or us."""
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def collectives_table() -> str:
    """The markdown table of :data:`MICROBENCHMARKS` (docs/comm.md)."""
    lines = [
        "| nccl-tests all_reduce_perf | Source | Published | Model's choice | Predicted | Error | Within 25 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in map(predict_collective, MICROBENCHMARKS):
        b = row.bench
        lines.append(
            f"| {b.name} | {b.source} | {format_time(b.published_s)} | {row.choice} | {format_time(row.predicted_s)} | "
            f"{100 * row.error:+.1f} % | {'yes' if row.met else '**no**'} |"
        )
    return "\n".join(lines)
