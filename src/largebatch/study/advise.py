"""``largebatch advise``: a short probe run measures the gradient noise scale; the empirical model
of McCandlish et al. 2018 turns it into a critical batch size, and the cost model into GPUs and time.

McCandlish et al. 2018, sec. 2.3 (eq. 2.11): to reach a given loss, the optimizer steps S and the
training examples E at batch B follow

    S / S_min - 1 = B_noise / B,        E / E_min - 1 = B / B_noise,

with the critical batch B_crit = E_min / S_min ~ B_noise, estimated by the simple noise scale
B_simple (sec. 2.2; measured by :mod:`largebatch.train.noise_scale`). So

* below about B_noise / 10 the examples needed grow by at most 10%: the linear scaling rule holds
  (a k-times larger batch takes k-times fewer steps at nearly the same epochs);
* at B_crit the run needs 2x the minimal examples and 2x the minimal steps: the usual balance point;
* beyond it each doubling of the batch buys ever fewer steps.

The noise scale grows as the loss falls (sec. 3 of the paper): a probe over the first epoch(s)
measures the early value, which bounds the run's later critical batch from below. The report says
so and prints the trend within the probe.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from largebatch.api import load_config
from largebatch.data import FASHION_MNIST_TRAIN_SAMPLES
from largebatch.nn.models import build_model
from largebatch.sim.presets import get_preset
from largebatch.sim.step import simulate_step


@dataclass
class Advice:
    """What ``largebatch advise`` reports (all batch sizes in images)."""

    recipe: str
    global_batch_size: int
    b_simple: float
    b_simple_first_half: float
    probe_steps: int
    linear_scaling_max_batch: float
    critical_batch: float
    epochs_at_recipe_batch: float
    epochs_at_critical_batch: float
    cluster: dict = field(default_factory=dict)
    measured: list = field(default_factory=list)
    """One dict per point of a ``largebatch critical-batch`` report given with ``--measured`` (see
    :func:`against_measured`)."""

    def text(self) -> str:
        trend = (
            "rising"
            if self.b_simple > 1.1 * self.b_simple_first_half
            else "falling"
            if self.b_simple < 0.9 * self.b_simple_first_half
            else "flat"
        )
        lines = [
            f"recipe {self.recipe} (global batch {self.global_batch_size}); probe of {self.probe_steps} steps",
            f"gradient noise scale B_simple = {self.b_simple:,.0f} images at the end of the probe "
            f"({self.b_simple_first_half:,.0f} over its first half: {trend}; it usually grows as the loss falls, "
            f"so later in training the critical batch is larger)",
            f"critical batch B_crit ~ B_simple = {self.critical_batch:,.0f}: 2x the minimal epochs and 2x the "
            f"minimal steps (McCandlish et al. 2018, eq. 2.11)",
            f"linear LR scaling should hold (at most 10% more epochs) up to a global batch of about "
            f"{self.linear_scaling_max_batch:,.0f}",
            f"epochs: the recipe's {self.epochs_at_recipe_batch:g} at {self.global_batch_size} become about "
            f"{self.epochs_at_critical_batch:.1f} at B_crit",
        ]
        c = self.cluster
        if c:
            lines.append(
                f"cost model ({c['preset']}, all-reduce {c.get('algorithm', 'auto')}: {c['per_gpu_batch']} images "
                "per GPU, compute scaled by the model's "
                f"FLOPs, {c['flops_ratio_to_resnet50']:.3g}x ResNet-50's): B_crit on {c['gpus']} GPU(s), "
                f"{c['images_per_s']:,.0f} images/s, scaling efficiency {100 * c['scaling_efficiency']:.0f}%, "
                f"{_duration(c['train_s'])} for {self.epochs_at_critical_batch:.1f} epochs of {c['train_images']:,} "
                f"images"
            )
        for m in self.measured:
            if m["measured"] is None:
                lines.append(f"measured B_crit at step {m['step']} (branching): not resolved; no comparison")
                continue
            bound = ">= " if m["lower_bound"] else ""
            line = (
                f"measured B_crit at step {m['step']} (branching, Merrill et al. 2025): {bound}{m['measured']:,.0f}; "
                f"this advice's {self.critical_batch:,.0f} is {m['ratio']:.2f}x it "
                f"({'within' if m['within_2x'] else 'outside'} 2x)"
            )
            if m["b_simple_ratio"] is not None:
                line += (
                    f"; the B_simple that run logged at that step, {m['b_simple_there']:,.0f}, is "
                    f"{m['b_simple_ratio']:.2f}x it"
                )
            lines.append(line)
        return "\n".join(lines)


def read_measured(path: str | Path) -> dict:
    """The report ``largebatch critical-batch`` wrote (``critical_batch.json``).

    Raises:
        ValueError: when the file is missing, is not JSON, or holds no ``points`` list.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"--measured {path}: no such file; give the critical_batch.json that `largebatch critical-batch` wrote"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--measured {path}: not a readable JSON report ({err})") from None
    points = report.get("points") if isinstance(report, dict) else None
    if not isinstance(points, list) or not all(
        isinstance(p, dict) and "step" in p and "critical_batch" in p for p in points
    ):
        raise ValueError(
            f"--measured {path}: not a `largebatch critical-batch` report (no points with step and critical_batch)"
        )
    return report


def against_measured(predicted: float, report: dict) -> list[dict]:
    """``predicted`` (a critical batch in images) against every point of a branching report: per
    point the step, the measured critical batch (None when not resolved), whether it is a lower bound,
    the ratio predicted / measured and whether that lies within a factor of 2 either way, and the
    B_simple the reference run logged at that step. The target of the comparison is agreement within
    2x (Merrill et al. 2025 measure; McCandlish et al. 2018 sec. 2.2 predict B_crit ~ B_simple)."""
    rows = []
    for p in report["points"]:
        measured = p["critical_batch"]
        ratio = predicted / measured if measured else None
        b_simple = p.get("b_simple")
        rows.append(
            {
                "step": p["step"],
                "measured": measured,
                "lower_bound": bool(p.get("critical_batch_is_lower_bound")),
                "ratio": ratio,
                "within_2x": ratio is not None and 0.5 <= ratio <= 2.0,
                "b_simple_there": b_simple,
                "b_simple_ratio": b_simple / measured if (b_simple is not None and measured) else None,
            }
        )
    return rows


def _duration(seconds: float) -> str:
    return (
        f"{seconds / 3600:.1f} h"
        if seconds >= 3600
        else f"{seconds / 60:.1f} min"
        if seconds >= 60
        else f"{seconds:.2g} s"
    )


def read_noise_scale(run_dir: Path) -> list[tuple[int, float]]:
    """(step, B_simple) of every train record of a run's metrics.jsonl that has one."""
    out = []
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            value = record.get("noise_scale")
            if record.get("kind") == "train" and value is not None and math.isfinite(value):
                out.append((record["step"], value))
    return out


def epochs_ratio(batch: float, reference_batch: float, b_noise: float) -> float:
    """E(batch) / E(reference_batch) = (1 + batch/B_noise) / (1 + reference/B_noise) (eq. 2.11)."""
    return (1 + batch / b_noise) / (1 + reference_batch / b_noise)


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
    cfg, critical_batch: float, epochs: float, train_images: int, preset_name: str, algorithm: str = "auto"
) -> dict:
    """GPUs and time to train at the critical batch through :mod:`largebatch.sim` (the preset's
    network, per-GPU batch and ResNet-50 throughput, compute scaled by the model's FLOPs).
    ``algorithm``: ``auto`` (what NCCL's tuning model would run), ``preset`` (the system's own) or
    any name of :data:`largebatch.sim.allreduce.ALGORITHMS`."""

    preset = get_preset(preset_name)
    ratio = model_flops_ratio(cfg)
    params = _parameter_count(cfg)
    gpus = max(1, 2 ** round(math.log2(max(1.0, critical_batch / preset.per_gpu_batch))))
    work = dataclasses.replace(
        preset.workload(),
        compute_s_per_image=ratio / preset.gpu_images_per_s,
        gradient_bytes=params * preset.gradient_bytes_per_parameter,
    )
    algorithm = preset.algorithm if algorithm == "preset" else algorithm
    options = dict(preset.hierarchical) if algorithm == "hierarchical" else {}
    step = simulate_step(preset.network, work, gpus, algorithm, **options)
    return {
        "preset": preset.name,
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
    }


def _parameter_count(cfg) -> int:
    return sum(p.numel() for p in _model_of(cfg)[0].parameters())


def advise(
    recipe: str,
    overrides: list[str],
    *,
    out: str,
    probe_epochs: float,
    nproc: int,
    preset: str = "h100_ndr",
    algorithm: str = "auto",
    measured: str | Path | None = None,
) -> Advice:
    """Run the probe (``largebatch train`` of the recipe for ``probe_epochs`` epochs on ``nproc``
    >= 2 workers, noise scale on) into ``out``, then build the :class:`Advice`; with ``measured`` (a
    ``critical_batch.json`` of ``largebatch critical-batch``) the advice's critical batch is compared
    with each measured point (:func:`against_measured`).

    Raises:
        ValueError: for fewer than 2 workers, a non-positive probe length or an unreadable ``measured``
            report (all before the probe starts).
        RuntimeError: when the probe fails or logs no noise scale (its log's end in the message).
    """

    if nproc < 2:
        raise ValueError(
            f"--nproc {nproc}: the noise scale compares one worker's gradient with the all-reduced "
            f"one, so the probe needs at least 2 workers"
        )
    if probe_epochs <= 0:
        raise ValueError(f"--probe-epochs {probe_epochs}: give a positive number of epochs")
    report = read_measured(measured) if measured else None
    cfg = load_config(recipe, overrides)
    epochs = max(1, math.ceil(probe_epochs))
    subset = ""
    if probe_epochs < 1:
        subset = f"data.train_subset={max(cfg.train.global_batch_size, int(_train_images(cfg) * probe_epochs))}"
    run_dir = Path(out)
    cmd = [
        sys.executable,
        "-m",
        "largebatch",
        "train",
        "--recipe",
        recipe,
        "--nproc",
        str(nproc),
        "--out",
        str(run_dir),
        *sum((["--set", s] for s in overrides), []),
        "--set",
        f"train.epochs={epochs}",
        "--set",
        "train.noise_scale=true",
        "--set",
        "train.eval_every_epochs=1000",
        "--set",
        "train.batch_schedule=[]",
    ]
    if subset:
        cmd += ["--set", subset]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"the probe run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    series = read_noise_scale(run_dir)
    if not series:
        raise RuntimeError(f"the probe logged no noise scale in {run_dir}/metrics.jsonl")
    half = [v for s, v in series if s <= series[-1][0] / 2] or [series[0][1]]
    b_noise = series[-1][1]
    b0 = cfg.train.global_batch_size
    n_images = _train_images(cfg)
    epochs_crit = cfg.train.epochs * epochs_ratio(b_noise, b0, b_noise)
    advice = Advice(
        recipe=recipe,
        global_batch_size=b0,
        b_simple=b_noise,
        b_simple_first_half=half[-1],
        probe_steps=series[-1][0],
        linear_scaling_max_batch=b_noise / 10,
        critical_batch=b_noise,
        epochs_at_recipe_batch=cfg.train.epochs,
        epochs_at_critical_batch=epochs_crit,
    )
    if preset:
        advice.cluster = cluster_estimate(cfg, b_noise, epochs_crit, n_images, preset, algorithm)
    if report is not None:
        advice.measured = against_measured(b_noise, report)
    (run_dir / "advice.json").write_text(json.dumps(advice.__dict__, indent=2) + "\n")
    return advice


def _train_images(cfg) -> int:

    known = {
        "fashion_mnist": FASHION_MNIST_TRAIN_SAMPLES,
        "synthetic": cfg.data.synthetic.train_samples,
        "imagefolder": 1_281_167,
    }
    n = known.get(cfg.data.name, 1_281_167)
    return min(n, cfg.data.train_subset) if cfg.data.train_subset else n
