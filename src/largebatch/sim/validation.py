"""The cost model against published figures: seven training runs (time to train) and nccl-tests
all-reduce measurements, each recomputed from the presets and networks here, none of whose inputs
was fitted to the figure it is compared with.

``python -m largebatch.sim.validation`` prints the two tables of docs/comm.md ("Validation");
tests/unit/test_sim_nccl.py checks that the file holds exactly what this module computes, so the
table cannot drift from the code. Targets: time to train within 15 %, all-reduce within 25 %
(:data:`RUN_TARGET`, :data:`COLLECTIVE_TARGET`); a row outside its target says so and
docs/comm.md says why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from largebatch.sim.nccl import select
from largebatch.sim.network import Network
from largebatch.sim.presets import gbit_s, get_preset
from largebatch.sim.step import simulate_step

RUN_TARGET = 0.15
COLLECTIVE_TARGET = 0.25
IMAGENET_VAL_IMAGES = 50_000


@dataclass(frozen=True)
class PublishedRun:
    """A published time to train. ``phases``: (per-GPU batch, epochs) in order. ``evals``: number
    of evaluations of the 50,000 validation images inside the timed interval (MLPerf counts them;
    one evaluation costs a third of a training pass over the same images [assumption: forward only])."""

    name: str
    source: str
    preset: str
    gpus: int
    phases: tuple[tuple[int, float], ...]
    published_s: float
    evals: int = 0


RUNS = (
    PublishedRun(
        "Goyal et al. 2017, 256 P100, 8k, 90 epochs",
        "Goyal et al. 2017 abstract and sec. 5 (~1 h)",
        "goyal2017",
        256,
        ((32, 90),),
        3600.0,
    ),
    PublishedRun(
        "Akiba et al. 2017, 1024 P100, 32k, 90 epochs",
        "Akiba et al. 2017 abstract (15 min)",
        "akiba2017",
        1024,
        ((32, 90),),
        900.0,
    ),
    PublishedRun(
        "Mikami et al. 2018 v1, 2176 V100, 34k -> 68k",
        "Mikami et al. 2018 v1 abstract (224 s); 16 per GPU for 5 epochs, then 32 [S]; 90 epochs [U]",
        "mikami2018",
        2176,
        ((16, 5), (32, 85)),
        224.0,
    ),
    PublishedRun(
        "Mikami et al. 2018 v2, 3456 V100",
        "Mikami et al. 2018 v2 abstract (122 s); batch schedule as v1 [assumption], 90 epochs [U]",
        "mikami2018",
        3456,
        ((16, 5), (32, 85)),
        122.0,
    ),
    PublishedRun(
        "You et al. 2018, 2048 KNL, 32k, 90 epochs",
        "You et al. 2018 (ICPP) abstract (20 min); 16 per KNL (32k / 2048)",
        "knl_opa",
        2048,
        ((16, 90),),
        1200.0,
    ),
    PublishedRun(
        "MLPerf v3.0 NVIDIA+CoreWeave, 3584 H100, 57,344, 77 epochs",
        "training_results_v4.0 coreweave_hgxh100_n448_ngc23.04_mxnet result_0.txt (run_start to run_stop)",
        "h100_ndr",
        3584,
        ((16, 77),),
        10.961,
        evals=4,
    ),
    PublishedRun(
        "MLPerf v3.0 NVIDIA, 64 H100, 3,200, 35 epochs",
        "training_results_v3.0 dgxh100_n8_ngc23.04_mxnet result_0.txt (run_start to run_stop)",
        "h100_ndr",
        64,
        ((50, 35),),
        159.917,
        evals=9,
    ),
    PublishedRun(
        "MLPerf v4.0 NVIDIA, 8 H200, 3,200, 35 epochs",
        "training_results_v4.0 h200_ngc24.04_mxnet result_0.txt (run_start to run_stop)",
        "h200_dgx",
        8,
        ((400, 35),),
        721.149,
        evals=9,
    ),
)


class _Compared:
    """A prediction against a published figure: ``error`` = predicted / published - 1."""

    target = 0.0

    @property
    def error(self) -> float:
        return self.predicted_s / self._published_s() - 1

    @property
    def met(self) -> bool:
        return abs(self.error) <= self.target


@dataclass(frozen=True)
class RunRow(_Compared):
    run: PublishedRun
    algorithm: str
    predicted_s: float
    target = RUN_TARGET

    def _published_s(self) -> float:
        return self.run.published_s


def predict_run(run: PublishedRun, algorithm: str | None = None, gpu_images_per_s: float | None = None) -> RunRow:
    """Predicted time to train of ``run`` with its preset (``algorithm``: the preset's own by default)."""
    preset = get_preset(run.preset)
    algorithm = algorithm or preset.algorithm
    options = dict(preset.hierarchical) if algorithm == "hierarchical" else {}
    rate = gpu_images_per_s or preset.gpu_images_per_s
    total, choice = 0.0, ""
    for batch, epochs in run.phases:
        work = preset.workload(batch, compute_s_per_image=1 / rate) if gpu_images_per_s else preset.workload(batch)
        step = simulate_step(preset.network, work, run.gpus, algorithm, **options)
        total += step.train_s(epochs)
        choice = choice or step.choice
    total += run.evals * IMAGENET_VAL_IMAGES / (run.gpus * rate * 3)
    return RunRow(run, f"{algorithm} ({choice})" if choice else algorithm, total)


# --- nccl-tests ---------------------------------------------------------------------------------

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
class CollectiveRow(_Compared):
    bench: Microbenchmark
    choice: str
    predicted_s: float
    target = COLLECTIVE_TARGET

    def _published_s(self) -> float:
        return self.bench.published_s


def predict_collective(bench: Microbenchmark) -> CollectiveRow:
    choice = select(NETWORKS[bench.network], bench.gpus, bench.nbytes, bench.algorithm)
    return CollectiveRow(bench, f"{choice.algorithm}/{choice.protocol}", choice.time_s)


def _time(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def runs_table() -> str:
    """The markdown table of :data:`RUNS` (docs/comm.md)."""
    lines = [
        "| Published run | Published | Algorithm (NCCL's choice) | Predicted | Error | Within 15 % |",
        "|---|---|---|---|---|---|",
    ]
    for row in map(predict_run, RUNS):
        lines.append(
            f"| {row.run.name} | {_time(row.run.published_s)} | {row.algorithm} | {_time(row.predicted_s)} | "
            f"{100 * row.error:+.1f} % | {'yes' if row.met else '**no**'} |"
        )
    return "\n".join(lines)


def collectives_table() -> str:
    """The markdown table of :data:`MICROBENCHMARKS` (docs/comm.md)."""
    lines = [
        "| nccl-tests all_reduce_perf | Source | Published | Model's choice | Predicted | Error | Within 25 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in map(predict_collective, MICROBENCHMARKS):
        b = row.bench
        lines.append(
            f"| {b.name} | {b.source} | {_time(b.published_s)} | {row.choice} | {_time(row.predicted_s)} | "
            f"{100 * row.error:+.1f} % | {'yes' if row.met else '**no**'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(runs_table())
    print()
    print(collectives_table())
