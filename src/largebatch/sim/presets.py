"""Hardware presets of the published large-batch systems, every number with its source.

Single-GPU ResNet-50 throughput comes from a published measurement, never from the result a
preset is used to predict (docs/comm.md, "Validation against the papers"). Per-hop latencies are
NCCL's own cost-model constants (``hwLat`` of the ring/Simple protocol in NVIDIA/nccl
``src/graph/tuning.cc``: NVLink 3.4 us, PCIe 5.7 us, network 9.6 us in NCCL 2.7, 14 us in later
releases); intra-node bandwidths are NCCL's per-link constants (``src/graph/topo.h``:
SM60_NVLINK_BW 18, SM70 20, SM90 20.6, PCI_BW 12 GB/s); NIC bandwidths are line rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from largebatch.sim.allreduce import Network
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
    gpu_images_per_s: float
    """Published single-GPU (or per-GPU within one node) ResNet-50 training throughput."""
    gradient_bytes_per_parameter: int
    per_gpu_batch: int
    bucket_cap_mb: float = 25.0
    overlap: bool = True
    algorithm: str = "ring"
    """The algorithm the paper used."""
    hierarchical: dict = field(default_factory=dict)
    """Options of the hierarchical algorithm (mode, inter) for this system."""
    sources: dict = field(default_factory=dict)
    """Field -> source (paper section or URL); [assumption] marks numbers without one."""

    def workload(self, per_gpu_batch: int | None = None, **changes) -> Workload:
        return Workload(
            compute_s_per_image=1 / self.gpu_images_per_s,
            per_gpu_batch=per_gpu_batch or self.per_gpu_batch,
            gradient_bytes=RESNET50_PARAMETERS * self.gradient_bytes_per_parameter,
            bucket_cap_mb=self.bucket_cap_mb,
            overlap=self.overlap,
            **changes,
        )


# Goyal et al. 2017 sec. 1: 90 epochs of the kn=256 baseline take 29 h on 8 P100 (one server).
_P100_IMAGES_PER_S = IMAGENET_TRAIN_IMAGES * 90 / (29 * 3600) / 8  # = 138.1

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
    ),
    gpu_images_per_s=_P100_IMAGES_PER_S,
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
        "gpu_images_per_s": "Goyal et al. 2017 sec. 1: 29 h for 90 epochs on 8 P100 "
        "(https://developer.nvidia.com/facebook-trains-imagenet-1-hour) -> 138.1 img/s/GPU",
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
    ),
    gpu_images_per_s=_P100_IMAGES_PER_S,
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
        "gpu_images_per_s": "no published Chainer P100 figure found; the P100 baseline of Goyal et al. "
        "2017 sec. 1 (29 h, 8 P100 SXM2) [assumption: PCIe P100 at the SXM2 rate]",
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
    ),
    # sony/nnabla-examples image-classification/imagenet/README.md: ResNet-50, 4 x V100, mixed
    # precision, 192 per GPU, Step90 in 7.29 h -> 1,281,167 * 90 / 26,244 s / 4 = 1098 img/s/GPU.
    gpu_images_per_s=IMAGENET_TRAIN_IMAGES * 90 / (7.29 * 3600) / 4,
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
        "gpu_images_per_s": "sony/nnabla-examples image-classification/imagenet/README.md "
        "(ResNet50, 4 x V100, MP, batch 192/GPU, Step90: 7.29 h)",
        "overlap, bucket_cap_mb": "[assumption] DDP-like 25 MiB buckets overlapped with backward",
        "torus x": "[assumption] X = 4 GPUs per node; the paper's grid shape is not known (Mikami et al. 2018)",
    },
)

H100_NDR = Preset(
    name="h100_ndr",
    description="DGX H100: 8x H100 SXM, NVLink 4 / NVSwitch, 8x NDR 400 Gbit/s InfiniBand per node",
    network=Network(
        gpus_per_node=8,
        intra_node_latency_s=3.4e-6,
        intra_node_bandwidth_bytes_per_s=18 * 20.6e9,
        inter_node_latency_s=14e-6,
        nic_bandwidth_bytes_per_s=gbit_s(400),
        nics_per_node=8,
    ),
    # MLPerf Training v3.0, NVIDIA 1x DGX H100 (mlcommons/training_results_v3.0
    # NVIDIA/results/dgxh100_ngc23.04_mxnet/resnet/result_0.txt): tracked throughput ~56,000 img/s
    # on 8 GPUs, 400 per GPU, epochs 2-15.
    gpu_images_per_s=56_000 / 8,
    gradient_bytes_per_parameter=2,
    per_gpu_batch=32,
    algorithm="ring",
    hierarchical={"mode": "scatter", "inter": "ring"},
    sources={
        "gpus_per_node, NVLink, NIC": "NVIDIA DGX H100 datasheet: 8 H100 SXM, NVLink 900 GB/s (18 links), "
        "8x ConnectX-7 400 Gb/s InfiniBand",
        "intra_node_bandwidth": f"{NCCL_TOPO} SM90_NVLINK_BW = 20.6 GB/s x 18 links (NVSwitch)",
        "intra_node_latency": f"{NCCL_TUNING}: NVLink 3.4 us",
        "inter_node_latency": f"{NCCL_TUNING}: network 14 us (current NCCL)",
        "gpu_images_per_s": "MLPerf Training v3.0 NVIDIA 1xDGX H100 result_0.txt: ~56,000 img/s / 8 GPUs "
        "at 400 per GPU (optimistic at 32 per GPU)",
        "gradient_bytes_per_parameter": "mixed precision (fp16/bf16) gradients [assumption]",
    },
)

PRESETS = {p.name: p for p in (GOYAL2017, AKIBA2017, MIKAMI2018, H100_NDR)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name (the message lists the accepted ones).
    """
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; accepted: {', '.join(PRESETS)}")
    return PRESETS[name]
