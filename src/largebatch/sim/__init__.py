"""Cost model of gradient all-reduce and data-parallel training steps (pure Python, no torch).

* :mod:`.allreduce`: alpha-beta model of ring, halving/doubling, hierarchical and 2D-torus
  all-reduce on nodes of GPUs (Mikami et al. 2018).
* :mod:`.step`: step time with bucketed overlap of communication and backward; throughput, epoch
  time, scaling efficiency.
* :mod:`.presets`: the published systems (Goyal 2017, Akiba 2017, Mikami 2018, a DGX H100), sourced.
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
