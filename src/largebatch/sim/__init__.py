"""Cost model of gradient all-reduce and data-parallel training steps (pure Python, no torch).

* :mod:`.network`: the cluster (:class:`Network`) and the fabric's contention.
* :mod:`.nccl`: NCCL's own cost model (ring, tree, NVLS, CollNet x LL, LL128, Simple) and selection.
* :mod:`.validation`: the published runs and nccl-tests figures of docs/comm.md, recomputed.
* :mod:`.allreduce`: alpha-beta model of ring, halving/doubling, hierarchical and 2D-torus
  all-reduce on nodes of GPUs (Mikami et al. 2018).
* :mod:`.step`: step time with bucketed overlap of communication and backward; throughput, epoch
  time, scaling efficiency.
* :mod:`.presets`: the published systems (Goyal 2017, Akiba 2017, Mikami 2018, You 2018 KNL, DGX H100,
  HGX H200), sourced.
* :mod:`.calibrate`: fit alpha and beta of a link to measured all-reduces.
* :mod:`.cli`: ``largebatch simulate``.

See docs/comm.md for the equations, the sources and the validation against the papers.
"""

from largebatch.sim.allreduce import (
    ALGORITHMS,
    AllReduceCost,
    Network,
    allreduce_cost,
    halving_doubling,
    hierarchical,
    ring,
    torus2d,
)
from largebatch.sim.calibrate import AlphaBetaFit, fit_alpha_beta
from largebatch.sim.nccl import NCCL_ALGORITHMS, PROTOCOLS, NcclChoice, nccl_allreduce
from largebatch.sim.nccl import select as nccl_select
from largebatch.sim.network import contention_factor
from largebatch.sim.presets import PRESETS, Preset, get_preset
from largebatch.sim.step import IMAGENET_TRAIN_IMAGES, RESNET50_PARAMETERS, StepResult, Workload, simulate_step

__all__ = [
    "ALGORITHMS",
    "AllReduceCost",
    "Network",
    "allreduce_cost",
    "halving_doubling",
    "hierarchical",
    "ring",
    "torus2d",
    "contention_factor",
    "NCCL_ALGORITHMS",
    "PROTOCOLS",
    "NcclChoice",
    "nccl_allreduce",
    "nccl_select",
    "AlphaBetaFit",
    "fit_alpha_beta",
    "PRESETS",
    "Preset",
    "get_preset",
    "IMAGENET_TRAIN_IMAGES",
    "RESNET50_PARAMETERS",
    "StepResult",
    "Workload",
    "simulate_step",
]
