"""Training-step model: compute, bucketed all-reduce overlapped with backward, throughput.

One step on each of N GPUs: forward, then backward (together ``t0 + b / x_max`` seconds at per-GPU
batch b, :mod:`largebatch.sim.compute`), during which gradient buckets (DDP's: a first
bucket of ``first_bucket_mb`` = 1 MiB, then ``bucket_cap_mb`` = 25 MiB each) become ready in order,
evenly over the backward time (PyTorch DDP's buckets;
Goyal et al. 2017 sec. 4 reduce per layer as soon as it is ready). A bucket's all-reduce starts
when it is ready and the network is free (buckets are serialized); the step ends when backward has
finished and the last bucket is reduced, plus a fixed per-step overhead (optimizer, data)::

    ready_i = T_fwd + T_bwd * (bytes of buckets 1..i) / gradient_bytes
    end_i   = max(ready_i, end_{i-1}) + allreduce(bucket_i)
    step    = max(T_fwd + T_bwd, end_last) + overhead

Without overlap (e.g. ChainerMN before v1.2) ``step = compute + sum_i allreduce(bucket_i) +
overhead``. Scaling efficiency = throughput(N) / (N * throughput(1)), where one GPU has no
communication. ResNet-50 has 25,557,032 parameters (torchvision; "25.6M"), so 102.2 MB of fp32 or
51.1 MB of fp16 gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from largebatch.sim.allreduce import Network, allreduce_cost

RESNET50_PARAMETERS = 25_557_032
IMAGENET_TRAIN_IMAGES = 1_281_167
MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What one GPU does in one step.

    Raises:
        ValueError: for a field out of its range (named in the message).
    """

    compute_s_per_image: float
    """Forward + backward time of one more image on one GPU, seconds (1 / x_max of
    :class:`largebatch.sim.compute.ComputeModel`; 1 / single-GPU images/s when the fixed cost is 0)."""
    compute_fixed_s_per_step: float = 0.0
    """Compute time per step whatever the batch (t0 of :class:`largebatch.sim.compute.ComputeModel`:
    kernel launches, BN and optimizer passes), seconds; part of forward + backward, so it overlaps
    with communication like the rest of the compute."""
    per_gpu_batch: int = 32
    gradient_bytes: float = RESNET50_PARAMETERS * 4
    """Bytes all-reduced per step per GPU (parameters x 4 for fp32, x 2 for fp16 gradients)."""
    bucket_cap_mb: float = 25.0
    """Bucket size in MiB (DDP's default 25); 0 puts the whole gradient in one bucket."""
    first_bucket_mb: float = 1.0
    """Size of the first bucket in MiB (DDP's ``_DEFAULT_FIRST_BUCKET_BYTES``, 1 MiB: the last
    layers' gradients, ready first, so communication starts early); 0: as large as the others."""
    backward_fraction: float = 2 / 3
    """Share of the compute time spent in backward (about 2x the forward FLOPs)."""
    overlap: bool = True
    """All-reduce buckets during backward; False: all communication after backward."""
    overhead_s_per_step: float = 0.0
    """Fixed time per step outside compute and communication (optimizer, data), seconds."""

    def __post_init__(self):
        checks = {
            "compute_s_per_image": (self.compute_s_per_image > 0, "> 0"),
            "compute_fixed_s_per_step": (self.compute_fixed_s_per_step >= 0, ">= 0"),
            "per_gpu_batch": (self.per_gpu_batch >= 1, ">= 1"),
            "gradient_bytes": (self.gradient_bytes > 0, "> 0"),
            "bucket_cap_mb": (self.bucket_cap_mb >= 0, ">= 0 (0: one bucket)"),
            "first_bucket_mb": (self.first_bucket_mb >= 0, ">= 0 (0: as large as the others)"),
            "backward_fraction": (0 < self.backward_fraction <= 1, "in (0, 1]"),
            "overhead_s_per_step": (self.overhead_s_per_step >= 0, ">= 0"),
        }
        for name, (ok, accepted) in checks.items():
            if not ok:
                raise ValueError(f"Workload.{name}={getattr(self, name)} is invalid; accepted: {accepted}")

    def buckets(self) -> list[float]:
        """Bucket sizes in bytes, in the order they become ready: DDP's first bucket of
        ``first_bucket_mb`` (when smaller than the cap), then buckets of ``bucket_cap_mb``, the
        last one holding the rest."""
        cap = self.bucket_cap_mb * MIB
        if cap <= 0 or cap >= self.gradient_bytes:
            return [self.gradient_bytes]
        first = self.first_bucket_mb * MIB
        head = [first] if 0 < first < cap else []
        left = self.gradient_bytes - sum(head)
        full = math.floor(left / cap)
        rest = left - full * cap
        return head + [cap] * full + ([rest] if rest > 0 else [])


@dataclass(frozen=True)
class StepResult:
    """Times in seconds for one step on ``gpus`` GPUs."""

    gpus: int
    algorithm: str
    compute_s: float
    allreduce_s: float
    """One all-reduce of the whole gradient (for comparing algorithms)."""
    communication_s: float
    """Sum of the buckets' all-reduce times."""
    step_s: float
    images_per_s: float
    scaling_efficiency: float
    last_bucket_exposed_s: float = 0.0
    """Communication left after backward ends (the last buckets' all-reduce that nothing hides)."""
    choice: str = ""
    """For ``auto`` and NCCL's algorithms: NCCL's (algorithm/protocol) for the whole gradient."""

    @property
    def exposed_communication_s(self) -> float:
        return self.step_s - self.compute_s

    def epoch_s(self, images: int = IMAGENET_TRAIN_IMAGES) -> float:
        """Seconds per pass over ``images`` (fractional steps: images / throughput)."""
        return images / self.images_per_s

    def train_s(self, epochs: float, images: int = IMAGENET_TRAIN_IMAGES) -> float:
        return epochs * self.epoch_s(images)


def simulate_step(net: Network, work: Workload, gpus: int, algorithm: str = "ring", **options) -> StepResult:
    """Step time, throughput and scaling efficiency of ``work`` on ``gpus`` GPUs.

    ``options`` go to the all-reduce (``mode``/``inter`` for hierarchical, ``x`` for torus2d).

    Raises:
        ValueError: invalid gpus, algorithm or options (from :func:`allreduce_cost`).
    """
    compute = work.compute_fixed_s_per_step + work.per_gpu_batch * work.compute_s_per_image
    whole_cost = allreduce_cost(algorithm, net, gpus, work.gradient_bytes, **options)
    buckets = work.buckets()
    costs = [allreduce_cost(algorithm, net, gpus, b, **options).time_s for b in buckets]
    if work.overlap:
        forward = (1 - work.backward_fraction) * compute
        done, net_free = 0.0, 0.0
        for size, cost in zip(buckets, costs):
            done += size
            ready = forward + work.backward_fraction * compute * done / work.gradient_bytes
            net_free = max(ready, net_free) + cost
        exposed = max(0.0, net_free - compute)
    else:
        exposed = sum(costs)
    step = compute + exposed + work.overhead_s_per_step
    images_per_s = gpus * work.per_gpu_batch / step
    single = work.per_gpu_batch / (compute + work.overhead_s_per_step)
    choice = whole_cost.algorithm if whole_cost.algorithm != algorithm else ""
    return StepResult(
        gpus,
        algorithm,
        compute,
        whole_cost.time_s,
        sum(costs),
        step,
        images_per_s,
        images_per_s / (gpus * single),
        exposed,
        choice,
    )
