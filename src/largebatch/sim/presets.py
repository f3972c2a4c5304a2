"""Hardware presets of the published large-batch systems, every number with its source.

Single-GPU ResNet-50 throughput comes from a measurement published separately from the run a
preset is used to predict (docs/comm.md, "Validation"): another benchmark, another submission,
or, where none was found, a spec-sheet scaling marked [assumption]. Per-hop latencies are
NCCL's own cost-model constants (``hwLat`` of the ring/Simple protocol in NVIDIA/nccl
``src/graph/tuning.cc``: NVLink 3.4 us, PCIe 5.7 us, network 9.6 us in NCCL 2.7, 14 us in later
releases); intra-node bandwidths are NCCL's per-link constants (``src/graph/topo.h``:
SM60_NVLINK_BW 18, SM70 20, SM90 20.6, PCI_BW 12 GB/s); NIC bandwidths are line rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from largebatch.sim.allreduce import Network
from largebatch.sim.compute import ComputeModel, Throughput, fit_compute
from largebatch.sim.step import IMAGENET_TRAIN_IMAGES, RESNET50_PARAMETERS, Workload

NCCL_TUNING = "NVIDIA/nccl src/graph/tuning.cc, hwLat[...][RING][SIMPLE]"
NCCL_TOPO = "NVIDIA/nccl src/graph/topo.h"


def gbit_s(gbit: float) -> float:
    """Gbit/s -> bytes/s."""
    return gbit * 1e9 / 8


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A published system: its network, its measured single-GPU throughput and how it reduced."""

    name: str
    description: str
    network: Network
    compute: ComputeModel
    """Per-GPU ResNet-50 training step time against the per-GPU batch, t(b) = t0 + b / x_max,
    fitted on published measurements of the same GPU generation and software stack that are not
    among the runs docs/comm.md validates it on (:data:`COMPUTE_MODELS`)."""
    gradient_bytes_per_parameter: int
    per_gpu_batch: int
    bucket_cap_mb: float = 25.0
    overlap: bool = True
    algorithm: str = "ring"
    """The algorithm the paper used (``auto``: what NCCL's tuning model would pick)."""
    compute_spread: tuple[ComputeModel, ...] = ()
    """Other published stacks' t(b) of the same GPU generation: with :attr:`compute` they bound the
    compute side of the range ``advise`` prints (empty: no second stack found)."""
    hierarchical: dict = field(default_factory=dict)
    """Options of the hierarchical algorithm (mode, inter) for this system."""
    sources: dict = field(default_factory=dict)
    """Field -> source (paper section or URL); [assumption] marks numbers without one."""

    @property
    def gpu_images_per_s(self) -> float:
        """Images/s of one GPU alone at the preset's per-GPU batch (from :attr:`compute`)."""
        return self.compute.images_per_s(self.per_gpu_batch)

    def workload(self, per_gpu_batch: int | None = None, **changes) -> Workload:
        fields = dict(
            compute_s_per_image=1 / self.compute.x_max_images_per_s,
            compute_fixed_s_per_step=self.compute.t0_s,
            per_gpu_batch=per_gpu_batch or self.per_gpu_batch,
            gradient_bytes=RESNET50_PARAMETERS * self.gradient_bytes_per_parameter,
            bucket_cap_mb=self.bucket_cap_mb,
            overlap=self.overlap,
        )
        return Workload(**{**fields, **changes})


# Goyal et al. 2017 sec. 1: 90 epochs of the kn=256 baseline take 29 h on 8 P100 (one server). The
# paper's own figure: the calibrated-mode row of the validation, not used by a preset.
GOYAL_OWN_P100_IMAGES_PER_S = IMAGENET_TRAIN_IMAGES * 90 / (29 * 3600) / 8  # = 138.1
# TensorFlow's benchmark page (tensorflow/tensorflow tensorflow/docs_src/performance/benchmarks.md,
# May 2017): DGX-1 P100 SXM2, ResNet-50, fp32, batch 64, synthetic data, 1 GPU: 219 img/s (the KNL
# stand-in's rate per peak TFLOPS below).
P100_SXM2_IMAGES_PER_S = 219.0

# --- compute: t(b) = t0 + b / x_max per GPU generation and software stack (largebatch.sim.compute) --
# Every point is a published training throughput of ResNet-50 (ImageNet, 224 px) per GPU at a per-GPU
# batch, from a run or table that docs/comm.md does not validate against (MLPerf logs: the median of the
# result file's `tracked_stats` throughput over its epochs, divided by the GPUs); docs/comm.md ("Compute as a
# function of the per-GPU batch") lists them with the unfitted checks.
TF_BENCH = "tensorflow/tensorflow@5984ffef tensorflow/docs_src/performance/benchmarks.md"
MXNET_PERF = "apache/mxnet@076c2a0e docs/how_to/perf.md"
MLPERF_V06 = "mlcommons/training_results_v0.6@f312518c"
MLPERF_V07 = "mlcommons/training_results_v0.7@0a8a85a2"
MLPERF_V30 = "mlcommons/training_results_v3.0@63e326c4"
MLPERF_V40 = "mlcommons/training_results_v4.0@6fe95437"

COMPUTE_MODELS = {
    # DGX-1 P100 SXM2, TensorFlow 1.1 (May 2017), fp32, synthetic data, 1 GPU
    "p100_tensorflow": fit_compute(
        [
            Throughput(32, 195.0, f"{TF_BENCH}: DGX-1 P100, ResNet-50, batch 32, 1 GPU, synthetic"),
            Throughput(64, 219.0, f"{TF_BENCH}: DGX-1 P100, ResNet-50, batch 64, 1 GPU, synthetic"),
        ],
        "P100 SXM2, TensorFlow 1.1",
    ),
    # one P100, MXNet (the figures its performance page publishes), fp32
    "p100_mxnet": fit_compute(
        [
            Throughput(8, 122.45, f"{MXNET_PERF}: P100, ResNet-50 training, batch 8"),
            Throughput(16, 156.79, f"{MXNET_PERF}: P100, ResNet-50 training, batch 16"),
            Throughput(32, 181.53, f"{MXNET_PERF}: P100, ResNet-50 training, batch 32"),
        ],
        "P100, MXNet",
    ),
    # DGX-1 V100, MXNet, NGC 19.05 (MLPerf Training v0.6): one node, and 130 nodes at 52 per GPU
    "v100_mxnet_mlperf": fit_compute(
        [
            Throughput(208, 11220.3 / 8, f"{MLPERF_V06} NVIDIA/results/dgx1_ngc19.05_mxnet/resnet/result_0.txt"),
            Throughput(
                52, 1.14441e6 / 1040, f"{MLPERF_V06} NVIDIA/results/dgx1_n130_ngc19.05_mxnet/resnet/result_0.txt"
            ),
        ],
        "V100 SXM2, MXNet NGC 19.05",
    ),
    # DGX H100, MXNet, NGC 23.04 (MLPerf Training v3.0): one node at 400 per GPU, 96 nodes at 42
    "h100_mxnet_v30": fit_compute(
        [
            Throughput(400, 56056.4 / 8, f"{MLPERF_V30} NVIDIA/results/dgxh100_ngc23.04_mxnet/resnet/result_0.txt"),
            Throughput(
                42, 3.40566e6 / 768, f"{MLPERF_V30} NVIDIA/results/dgxh100_n96_ngc23.04_mxnet/resnet/result_0.txt"
            ),
        ],
        "H100 SXM, MXNet NGC 23.04",
    ),
    # DGX H100 on Eos, MXNet, NGC 24.04 (MLPerf Training v4.0): one node at 400, 316 nodes at 16
    "h100_mxnet_v40": fit_compute(
        [
            Throughput(400, 57277.0 / 8, f"{MLPERF_V40} NVIDIA/results/eos_ngc24.04_mxnet/resnet/result_0.txt"),
            Throughput(16, 6.8826e6 / 2528, f"{MLPERF_V40} NVIDIA/results/eos_n316_ngc24.04_mxnet/resnet/result_0.txt"),
        ],
        "H100 SXM, MXNet NGC 24.04",
    ),
}
"""The fitted t(b) of each GPU generation and stack with independent published points."""

P100_PCIE_FACTOR = 9.3 / 10.6
"""P100 PCIe over SXM2 compute rate: the fp32 peak ratio (NVIDIA P100 datasheet) [assumption]."""


def _slowed(model: ComputeModel, factor: float, name: str) -> ComputeModel:
    """``model`` on a GPU ``factor`` times as fast at everything (t0 and per-image cost alike)."""
    return replace(model, name=name, t0_s=model.t0_s / factor, x_max_images_per_s=model.x_max_images_per_s * factor)


GOYAL2017 = Preset(
    name="goyal2017",
    description="Big Basin: 8x P100 SXM2 + NVLink per server, 1x 50 GbE per server (Caffe2 + Gloo)",
    network=Network(
        gpus_per_node=8,
        intra_node_latency_s=3.4e-6,
        intra_node_bandwidth_bytes_per_s=18e9,
        inter_node_latency_s=9.6e-6,
        nic_bandwidth_bytes_per_s=gbit_s(50),
        nics_per_node=1,
        compute_capability=60,
        nccl_channels=4,
    ),
    compute=COMPUTE_MODELS["p100_tensorflow"],
    compute_spread=(COMPUTE_MODELS["p100_mxnet"],),
    gradient_bytes_per_parameter=4,
    per_gpu_batch=32,
    algorithm="hierarchical",
    hierarchical={"mode": "reduce", "inter": "halving_doubling"},
    sources={
        "gpus_per_node, NVLink, NIC": "Goyal et al. 2017 sec. 5 (Big Basin: 8 P100, NVLink, Mellanox "
        "ConnectX-4 50 Gbit Ethernet); Goyal et al. 2017",
        "intra_node_bandwidth": f"{NCCL_TOPO} SM60_NVLINK_BW = 18 GB/s, one NVLink per ring hop [assumption]",
        "intra_node_latency": f"{NCCL_TUNING}: NVLink 3.4 us",
        "inter_node_latency": f"{NCCL_TUNING}: network 9.6 us (NCCL 2.7) [assumption: Gloo over 50 GbE "
        "has no published per-hop figure]",
        "compute": "TensorFlow benchmarks, DGX-1 P100, ResNet-50 fp32, 1 GPU, synthetic data: 195 img/s at batch 32, "
        f"219 at 64 ({TF_BENCH}) [assumption: Caffe2 2017 as fast as TensorFlow 1.1]; the paper's own "
        "8-GPU baseline (29 h, 138.1 img/s/GPU at 32, sec. 1) is the calibrated-mode row of docs/comm.md",
        "nccl_channels": "[assumption] 4 rings over the P100's 4 NVLinks (only for algorithm=auto: Goyal used Gloo)",
        "algorithm": "Goyal et al. 2017 sec. 4: reduce in server, halving/doubling between servers, broadcast",
        "overlap, bucket_cap_mb": "Goyal sec. 4 reduces per layer during backprop; 25 MiB buckets [assumption]",
    },
)

AKIBA2017 = Preset(
    name="akiba2017",
    description="PFN MN-1: 8x P100 PCIe per node, 2x FDR InfiniBand per node (Chainer + ChainerMN, NCCL)",
    network=Network(
        gpus_per_node=8,
        intra_node_latency_s=5.7e-6,
        intra_node_bandwidth_bytes_per_s=12e9,
        inter_node_latency_s=9.6e-6,
        nic_bandwidth_bytes_per_s=gbit_s(56),
        nics_per_node=2,
        intra_link="pci",
        compute_capability=60,
        nccl_channels=2,
    ),
    compute=_slowed(COMPUTE_MODELS["p100_tensorflow"], P100_PCIE_FACTOR, "P100 PCIe, TensorFlow 1.1 x 9.3/10.6"),
    compute_spread=(_slowed(COMPUTE_MODELS["p100_mxnet"], P100_PCIE_FACTOR, "P100 PCIe, MXNet x 9.3/10.6"),),
    gradient_bytes_per_parameter=2,
    per_gpu_batch=32,
    bucket_cap_mb=0.0,
    overlap=False,
    algorithm="ring",
    hierarchical={"mode": "reduce", "inter": "ring"},
    sources={
        "gpus_per_node, NIC": "https://tech.preferred.jp/en/blog/mn-1-a-gpu-cluster-behind-15-min-imagenet "
        "(128 nodes x 8 P100, two FDR InfiniBand links 56 Gbps x 2, ring allreduce)",
        "intra_node_bandwidth": f"{NCCL_TOPO} PCI_BW = 12 GB/s (PCIe Gen3 x16)",
        "intra_node_latency": f"{NCCL_TUNING}: PCIe 5.7 us",
        "inter_node_latency": f"{NCCL_TUNING}: network 9.6 us (NCCL 2.7; the run used NCCL 2.0.5)",
        "gradient_bytes_per_parameter": "Akiba et al. 2017: fp16 gradients for the all-reduce [S]",
        "compute": "no published P100 PCIe ResNet-50 figure found: TensorFlow's P100 SXM2 t(b) (195 img/s at 32, "
        f"219 at 64, {TF_BENCH}) x the fp32 peak ratio 9.3/10.6 TFLOPS (NVIDIA P100 datasheet) [assumption]; "
        "[assumption: Chainer 2017 as fast as TensorFlow 1.1]",
        "nccl_channels": "[assumption] 2 (PCIe, 2 NICs)",
        "fabric": "MN-1 is a thin tree (8 groups of 16 nodes, aggregated links between groups; PFN blog above); "
        "its oversubscription is not published, so the model treats it as non-blocking [assumption]",
        "overlap, bucket_cap_mb": "ChainerMN packs all gradients in one buffer and added overlap (double "
        "buffering) only in v1.2, 2018: https://chainer.org/general/2018/05/25/chainermn-v1-3.html",
    },
)

MIKAMI2018 = Preset(
    name="mikami2018",
    description="ABCI: 4x V100 SXM2 + NVLink per node, 2x InfiniBand EDR per node (NNL, 2D torus)",
    network=Network(
        gpus_per_node=4,
        intra_node_latency_s=3.4e-6,
        intra_node_bandwidth_bytes_per_s=40e9,
        inter_node_latency_s=9.6e-6,
        nic_bandwidth_bytes_per_s=gbit_s(100),
        nics_per_node=2,
        fabric_oversubscription=3.0,
        nodes_per_leaf_switch=34,
        compute_capability=70,
        nccl_channels=4,
    ),
    # sony/nnabla-examples image-classification/imagenet/README.md: ResNet-50, 4 x V100, mixed
    # precision, 192 per GPU, Step90 in 7.29 h -> 1,281,167 * 90 / 26,244 s / 4 = 1098 img/s/GPU.
    compute=COMPUTE_MODELS["v100_mxnet_mlperf"],
    gradient_bytes_per_parameter=2,
    per_gpu_batch=32,
    algorithm="torus2d",
    hierarchical={"mode": "reduce", "inter": "ring"},
    sources={
        "gpus_per_node, NIC": "Mikami et al. 2018 (ABCI, 2x InfiniBand EDR); NVIDIA blog "
        "https://developer.nvidia.com/blog/sony-breaks-resnet-50-training-record-with-nvidia-v100-tensor-core-gpus/",
        "intra_node_bandwidth": f"{NCCL_TOPO} SM70_NVLINK_BW = 20 GB/s x 2 links per GPU pair "
        "[assumption: 4-GPU NVLink full mesh]",
        "intra_node_latency": f"{NCCL_TUNING}: NVLink 3.4 us",
        "inter_node_latency": f"{NCCL_TUNING}: network 9.6 us (NCCL 2.7)",
        "gradient_bytes_per_parameter": "fp16 forward/backward [S: InfoQ, Mikami et al. 2018]; fp16 all-reduce [assumption]",
        "compute": "NNL 2018 has no published small-batch rate (its one figure, sony/nnabla-examples "
        "image-classification/imagenet/README.md: 4 x V100, batch 192/GPU, 90 epochs in 7.29 h, 1,098 img/s/GPU); "
        f"MXNet's V100 t(b) from MLPerf v0.6 ({MLPERF_V06}: DGX-1 1,403 img/s at 208, 1,040 GPUs 1,100 at 52) stands "
        "in [assumption: NNL as fast as MXNet]; docs/comm.md lists the Mikami rows as missing this input",
        "overlap, bucket_cap_mb": "[assumption] DDP-like 25 MiB buckets overlapped with backward",
        "torus x": "[assumption] X = 4 GPUs per node; the paper's grid shape is not known (Mikami et al. 2018)",
        "fabric": "ABCI: full bisection inside a rack of 34 nodes (68 EDR ports, 2 per node), 1/3 oversubscription "
        "between racks (https://news.mynavi.jp/article/abci-2)",
        "nccl_channels": "[assumption] 4",
    },
)

_DGX_H100_NETWORK = Network(
    gpus_per_node=8,
    intra_node_latency_s=3.4e-6,
    intra_node_bandwidth_bytes_per_s=18 * 20.6e9,
    inter_node_latency_s=14e-6,
    nic_bandwidth_bytes_per_s=gbit_s(400),
    nics_per_node=8,
    nodes_per_leaf_switch=32,
    compute_capability=90,
    nccl_channels=16,
    nvls=True,
    collnet=True,
)
_DGX_H100_SOURCES = {
    "gpus_per_node, NVLink, NIC": "NVIDIA DGX H100 datasheet: 8 H100 SXM, NVLink 900 GB/s (18 links), "
    "8x ConnectX-7 400 Gb/s InfiniBand; MLPerf system descriptions list the same 8 compute NICs",
    "intra_node_bandwidth": f"{NCCL_TOPO} SM90_NVLINK_BW = 20.6 GB/s x 18 links (NVSwitch)",
    "intra_node_latency": f"{NCCL_TUNING}: NVLink 3.4 us",
    "inter_node_latency": f"{NCCL_TUNING}: network 14 us (current NCCL)",
    "fabric": "DGX SuperPOD reference architecture (docs.nvidia.com/dgx-superpod, network fabrics): rail-aligned "
    "scalable units of 32 nodes, as many spine-leaf cables as node cables, so non-blocking (oversubscription 1)",
    "nvls, collnet": "NVSwitch with NVLink SHARP (Hopper); the 3,584-GPU MLPerf run set SBATCH_NETWORK=sharp, "
    "NCCL_COLLNET_ENABLE=1, NCCL_ALGO=COLLNETCHAIN (config_DGXH100_multi_448x8x16.sh, "
    "mlcommons/training_results_v4.0 NVIDIA/benchmarks/resnet/implementations/coreweave_hgxh100_n448_ngc23.04_mxnet)",
    "nccl_channels": "[assumption] 16 (NCCL's NVLS channel count on H100)",
    "gradient_bytes_per_parameter": "mixed precision (fp16) gradients [assumption]",
}

H100_NDR = Preset(
    name="h100_ndr",
    description="DGX H100: 8x H100 SXM, NVLink 4 / NVSwitch (NVLS), 8x NDR 400 Gbit/s InfiniBand with SHARP",
    network=_DGX_H100_NETWORK,
    compute=COMPUTE_MODELS["h100_mxnet_v30"],
    compute_spread=(COMPUTE_MODELS["h100_mxnet_v40"],),
    gradient_bytes_per_parameter=2,
    per_gpu_batch=32,
    algorithm="auto",
    hierarchical={"mode": "scatter", "inter": "ring"},
    sources={
        **_DGX_H100_SOURCES,
        "compute": f"MLPerf Training v3.0, MXNet NGC 23.04 ({MLPERF_V30}): 1x DGX H100 (dgxh100_ngc23.04_mxnet) "
        "7,008 img/s per GPU at 400; 96 nodes (dgxh100_n96_ngc23.04_mxnet) 4,436 at 42",
        "algorithm": "auto: what NCCL's tuning model picks (largebatch.sim.nccl)",
    },
)

H200_DGX = Preset(
    name="h200_dgx",
    description="HGX H200: 8x H200 SXM 141 GB, NVLink 4 / NVSwitch (NVLS), 8x NDR 400 Gbit/s InfiniBand",
    network=replace(_DGX_H100_NETWORK, collnet=False),
    compute=COMPUTE_MODELS["h100_mxnet_v40"],
    compute_spread=(COMPUTE_MODELS["h100_mxnet_v30"],),
    gradient_bytes_per_parameter=2,
    per_gpu_batch=400,
    algorithm="auto",
    hierarchical={"mode": "scatter", "inter": "ring"},
    sources={
        **_DGX_H100_SOURCES,
        "gpus_per_node, NVLink, NIC": "MLPerf Training v4.0 system description h200_ngc24.04_mxnet: 8x "
        "H200-SXM-141GB, Compute: 8x ConnectX-7 IB NDR 400Gb/s",
        "compute": "no separate H200 ResNet-50 figure at a second batch found: the H100's (same GH100 compute, less "
        f"memory bandwidth) from MLPerf v4.0, MXNet NGC 24.04 ({MLPERF_V40}): Eos 1 node (eos_ngc24.04_mxnet) "
        "7,160 img/s per GPU at 400, 316 nodes (eos_n316_ngc24.04_mxnet) 2,723 at 16 [assumption: H200 computes "
        "as fast as H100]",
        "collnet": "one node: no in-network reduction across nodes",
        "algorithm": "auto: what NCCL's tuning model picks (largebatch.sim.nccl)",
    },
)

# Intel Xeon Phi 7250 (Knights Landing): 68 cores x 1.4 GHz x 2 AVX-512 FMA units x 16 fp32 x 2 =
# 6.09 TFLOPS fp32 peak (Intel ARK). No published absolute ResNet-50 training rate was found; the
# P100's TensorFlow rate per peak TFLOPS (219 / 10.6) times the KNL peak stands in [assumption].
KNL_IMAGES_PER_S = 68 * 1.4e9 * 2 * 16 * 2 / 1e12 * P100_SXM2_IMAGES_PER_S / 10.6

KNL_OPA = Preset(
    name="knl_opa",
    description="Intel Xeon Phi 7250 (KNL) nodes, one per node, Intel Omni-Path 100 Gbit/s (Intel Caffe + MLSL)",
    network=Network(
        gpus_per_node=1,
        intra_node_latency_s=1e-6,
        intra_node_bandwidth_bytes_per_s=400e9,
        inter_node_latency_s=1.0e-6,
        nic_bandwidth_bytes_per_s=gbit_s(100),
        nics_per_node=1,
        intra_link="pci",
        compute_capability=60,
        nccl_channels=1,
    ),
    compute=ComputeModel("Xeon Phi 7250, Intel Caffe [assumption: no batch dependence]", 0.0, KNL_IMAGES_PER_S),
    gradient_bytes_per_parameter=4,
    per_gpu_batch=16,
    bucket_cap_mb=0.0,
    overlap=False,
    algorithm="halving_doubling",
    sources={
        "gpus_per_node": "You et al. 2018 (ICPP), 2,048 Xeon Phi 7250; one KNL socket per node (Stampede2 KNL nodes)",
        "nic_bandwidth": "Intel Omni-Path Architecture 100 Gbit/s per port (Intel OPA product brief)",
        "inter_node_latency": "Intel OPA product brief: ~1 us MPI latency [assumption: per step]",
        "intra_node": "one processor per node: no intra-node step (placeholder values, unused)",
        "compute": "[assumption] no absolute KNL ResNet-50 figure found: fp32 peak 6.09 TFLOPS (Intel ARK) "
        "x TensorFlow's P100 rate per peak TFLOPS (219 img/s / 10.6) = 125.8 img/s, at every batch (t0 = 0); "
        "docs/comm.md lists the You et al. row as missing this input",
        "algorithm": "[assumption] MLSL / Intel MPI large-message all-reduce as recursive halving/doubling "
        "(Rabenseifner), fp32, after backward",
    },
)

PRESETS = {p.name: p for p in (GOYAL2017, AKIBA2017, MIKAMI2018, H100_NDR, H200_DGX, KNL_OPA)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name (the message lists the accepted ones).
    """
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; accepted: {', '.join(PRESETS)}")
    return PRESETS[name]
