"""The cost model of ``largebatch advise`` (:mod:`largebatch.study.advise`): GPUs and time to train at
the critical batch through :mod:`largebatch.sim`, with the model's FLOPs, parameterized layers and
parameters measured on an untrained copy of it."""

from __future__ import annotations

import dataclasses
import math

from largebatch.nn.models import build_model
from largebatch.sim.compute import fit_compute
from largebatch.sim.presets import get_preset
from largebatch.sim.step import simulate_step


def _duration(seconds: float) -> str:
    return (
        f"{seconds / 3600:.1f} h"
        if seconds >= 3600
        else f"{seconds / 60:.1f} min"
        if seconds >= 60
        else f"{seconds:.2g} s"
    )


def model_flops_ratio(cfg) -> float:
    """Forward FLOPs of one training image of ``cfg``'s model over ResNet-50's at 224x224, counted
    with torch.utils.flop_counter (convolutions and matrix products)."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model, shape) -> int:
        model.eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(shape))
        return counter.get_total_flops()

    model, shape = _model_of(cfg)
    return flops(model, shape) / flops(torchvision.models.resnet50(), (1, 3, 224, 224))


def _model_of(cfg):
    """(``cfg``'s model, untrained, and the shape of one input image batch of 1)."""

    fashion = cfg.data.name in ("fashion_mnist", "synthetic")
    channels = 1 if cfg.data.name == "fashion_mnist" else (cfg.data.synthetic.channels if fashion else 3)
    size = 28 if cfg.data.name == "fashion_mnist" else cfg.data.image_size_px
    model = build_model(
        cfg.model.name,
        num_classes=10 if fashion else 1000,
        in_channels=channels,
        bn_batch_size=1,
        width=cfg.model.width,
        blocks_per_stage=cfg.model.blocks_per_stage,
        stem_stride=cfg.model.stem_stride,
        zero_init_residual=False,
        fc_init_std=0.0,
    )
    return model, (1, channels, size, size)


def cluster_estimate(
    cfg,
    critical_batch: float,
    epochs: float,
    train_images: int,
    preset_name: str,
    algorithm: str = "auto",
    *,
    interval: tuple[float, float] | None = None,
    measured_throughput: tuple = (),
) -> dict:
    """GPUs and time to train at the critical batch through :mod:`largebatch.sim`: the preset's
    network and per-GPU batch; compute either from the preset's t(b) = t0 + b / x_max carried to
    this model (per-image cost x its FLOPs over ResNet-50's, fixed cost x its parameterized layers
    over ResNet-50's [assumption]; *preset* mode) or from ``measured_throughput``, the user's own
    :class:`largebatch.sim.compute.Throughput` points on this model at two or more per-GPU batches
    (*calibrated* mode, no scaling). ``epochs``: the epochs at ``critical_batch``.

    The range: the global batch at the ends of ``interval`` (the critical batch's) with the epochs
    there (McCandlish eq. 2.11 with B_noise at that end), times every compute model of the mode (the
    preset's and its ``compute_spread`` of other stacks; the user's one fit), gives the fewest and
    most GPUs and the shortest and longest time. ``algorithm``: ``auto`` (what NCCL's tuning model
    would run), ``preset`` (the system's own) or any name of :data:`largebatch.sim.allreduce.ALGORITHMS`.

    Raises:
        ValueError: ``measured_throughput`` that :func:`largebatch.sim.compute.fit_compute` refuses.
    """
    preset = get_preset(preset_name)
    params = _parameter_count(cfg)
    ratio = model_flops_ratio(cfg)
    mode, models = _compute_models(cfg, preset, ratio, measured_throughput)
    algorithm = preset.algorithm if algorithm == "preset" else algorithm
    step_of = _Steps(preset, params, algorithm)
    gpus, step = step_of(critical_batch, models[0])
    cases = _cases(step_of, models, cfg.train.global_batch_size, critical_batch, epochs, train_images, interval)
    return {
        "preset": preset.name,
        "mode": mode,
        "compute": models[0].describe(),
        "compute_models": [m.describe() for m in models],
        "algorithm": step.choice or algorithm,
        "per_gpu_batch": preset.per_gpu_batch,
        "gpus": gpus,
        "global_batch_size": gpus * preset.per_gpu_batch,
        "flops_ratio_to_resnet50": ratio,
        "parameters": params,
        "images_per_s": step.images_per_s,
        "scaling_efficiency": step.scaling_efficiency,
        "train_images": train_images,
        "train_s": step.train_s(epochs, train_images),
        "gpus_low": min(n for n, _ in cases),
        "gpus_high": max(n for n, _ in cases),
        "train_s_low": min(t for _, t in cases),
        "train_s_high": max(t for _, t in cases),
    }


def _cases(step_of, models: list, b0: int, critical_batch: float, epochs: float, train_images: int, interval):
    """(GPUs, training seconds) at each end of ``interval`` and at ``critical_batch``, for each compute model."""
    low, high = interval if interval else (critical_batch, critical_batch)
    cases = []
    for b in (low, critical_batch, high):
        if not (math.isfinite(b) and b > 0):
            continue
        # training at B = B_noise = b takes 2 E_min (eq. 2.11), E_min from the recipe's epochs at b0
        epochs_there = epochs * (1 + b0 / critical_batch) / (1 + b0 / b)
        for compute in models:
            n, st = step_of(b, compute)
            cases.append((n, st.train_s(epochs_there, train_images)))
    return cases


def _compute_models(cfg, preset, flops_ratio: float, measured_throughput: tuple) -> tuple[str, list]:
    """The cost model's mode and its compute models: the user's one fit (*calibrated*), or the
    preset's and its spread carried to this model (*preset*)."""
    if measured_throughput:
        return "calibrated", [fit_compute(measured_throughput, "your measurements", mode="calibrated")]
    layers = model_layers_ratio(cfg)
    return "preset", [m.for_model(flops_ratio, layers) for m in (preset.compute, *preset.compute_spread)]


class _Steps:
    """(GPUs, step result) for a global batch of ``batch`` images and a compute model: the preset's
    per-GPU batch sets the GPUs (a power of 2), :func:`largebatch.sim.step.simulate_step` the step."""

    def __init__(self, preset, params: int, algorithm: str) -> None:
        self.preset, self.params, self.algorithm = preset, params, algorithm
        self.options = dict(preset.hierarchical) if algorithm == "hierarchical" else {}

    def __call__(self, batch: float, compute):
        preset = self.preset
        gpus = max(1, 2 ** round(math.log2(max(1.0, batch / preset.per_gpu_batch))))
        work = dataclasses.replace(preset, compute=compute).workload(
            gradient_bytes=self.params * preset.gradient_bytes_per_parameter
        )
        return gpus, simulate_step(preset.network, work, gpus, self.algorithm, **self.options)


def model_layers_ratio(cfg) -> float:
    """Parameterized layers (convolutions, linear layers, norms) of ``cfg``'s model over ResNet-50's
    (107: 53 convolutions, 53 BN, 1 linear): each launches its own kernels in forward, backward and
    the optimizer, so the per-step fixed cost is taken to scale with their count [assumption]."""
    import torch
    import torchvision

    def count(model) -> int:
        kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.modules.batchnorm._NormBase)
        return sum(isinstance(m, kinds) for m in model.modules())

    return count(_model_of(cfg)[0]) / count(torchvision.models.resnet50())


def _parameter_count(cfg) -> int:
    return sum(p.numel() for p in _model_of(cfg)[0].parameters())
