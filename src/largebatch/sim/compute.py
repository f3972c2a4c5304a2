"""Compute time of one training step on one GPU, as a function of the per-GPU batch.

A GPU does not run a small per-GPU batch as fast per image as a large one: every step pays for
kernel launches, BN's and the optimizer's passes over the parameters, small GEMMs and the
framework's host work, whatever the batch. The model is a fixed cost per step plus a cost per image::

    t(b) = t0 + b / x_max                 seconds per step at per-GPU batch b
    images/s per GPU = b / t(b)           -> x_max as b grows; x_max / 2 at b = t0 x_max

Two published (b, images/s) measurements of one GPU generation and software stack fix t0 and
x_max (more are fitted by least squares in relative step time); :func:`fit_compute` does the fit,
and :data:`largebatch.sim.presets.PRESETS` holds each system's, every point cited by file and
commit (docs/comm.md, "Compute as a function of the per-GPU batch"). In *calibrated* mode the
points are the user's own (``largebatch simulate --measured``, :func:`measured_points`).

For a model other than the points' (``advise`` on a recipe's network), :meth:`ComputeModel.for_model`
scales x_max by the ratio of forward FLOPs per image and t0 by the ratio of parameterized layers
(kernels per step; an assumption of this project, stated where it is used); a calibrated model
needs neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from largebatch.sim.calibrate import relative_least_squares
from largebatch.summary import FILE_NAME as SUMMARY_FILE
from largebatch.summary import RunSummary


@dataclass(frozen=True)
class Throughput:
    """One measurement: ``per_gpu_batch`` images per GPU per step trained at ``images_per_s`` per
    GPU (training steps only: forward, backward, optimizer; no evaluation). ``source``: where it
    comes from (file and commit, table, or run directory)."""

    per_gpu_batch: float
    images_per_s: float
    source: str = ""

    @property
    def step_s(self) -> float:
        return self.per_gpu_batch / self.images_per_s


@dataclass(frozen=True)
class ComputeModel:
    """``t(b) = t0_s + b / x_max_images_per_s`` seconds per step on one GPU.

    ``mode``: ``"preset"`` (published measurements) or ``"calibrated"`` (the user's). ``points``:
    what it was fitted on. ``t0_clamped``: the fit gave a negative fixed cost (the rate fell as the
    batch grew, e.g. caches on a CPU) and t0 was set to 0 with x_max refitted alone.
    """

    name: str
    t0_s: float
    x_max_images_per_s: float
    points: tuple[Throughput, ...] = ()
    mode: str = "preset"
    t0_clamped: bool = False
    scaling: str = ""
    """How the model was carried over to another network (:meth:`for_model`); empty when it was not."""

    def step_s(self, per_gpu_batch: float) -> float:
        """Seconds of compute for one step of ``per_gpu_batch`` images on one GPU."""
        return self.t0_s + per_gpu_batch / self.x_max_images_per_s

    def images_per_s(self, per_gpu_batch: float) -> float:
        """Images per second of one GPU at ``per_gpu_batch`` (no communication)."""
        return per_gpu_batch / self.step_s(per_gpu_batch)

    def for_model(self, flops_ratio: float, layers_ratio: float) -> ComputeModel:
        """This model carried to another network: the per-image cost scaled by ``flops_ratio``
        (its forward FLOPs per image over the points' model's) and the fixed cost by
        ``layers_ratio`` (its parameterized layers over the points' model's: each launches its own
        kernels in forward, backward and the optimizer) [assumption: the fixed cost is per layer].

        Raises:
            ValueError: a ratio that is not finite and > 0.
        """
        for label, value in (("flops_ratio", flops_ratio), ("layers_ratio", layers_ratio)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label}={value} is invalid; accepted: a finite number > 0")
        return replace(
            self,
            t0_s=self.t0_s * layers_ratio,
            x_max_images_per_s=self.x_max_images_per_s / flops_ratio,
            scaling=f"per-image cost x {flops_ratio:.4g} (FLOPs), fixed cost x {layers_ratio:.4g} (layers)",
        )

    def describe(self) -> str:
        """One line: the parameters and what they were fitted on."""
        pts = ", ".join(f"{p.per_gpu_batch:g}->{p.images_per_s:,.0f}" for p in self.points)
        clamp = " (fit gave t0 < 0: set to 0)" if self.t0_clamped else ""
        return (
            f"{self.name} ({self.mode}): t0 {self.t0_s * 1e3:.3g} ms{clamp}, x_max {self.x_max_images_per_s:,.0f} "
            f"images/s per GPU; fitted on b->images/s {pts}" + (f"; {self.scaling}" if self.scaling else "")
        )


def fit_compute(points, name: str, mode: str = "preset") -> ComputeModel:
    """Least-squares ``t0`` and ``x_max`` from ``points`` (:class:`Throughput`, or (batch,
    images/s) pairs), minimizing the squared relative error of the step time (so that every point
    weighs alike); two points at different batches are fitted exactly.

    Raises:
        ValueError: fewer than two different per-GPU batches, a batch < 1 or a rate that is not a
            finite number > 0, or measurements whose step time does not grow with the batch.
    """
    pts = tuple(p if isinstance(p, Throughput) else Throughput(float(p[0]), float(p[1])) for p in points)
    for p in pts:
        if not (math.isfinite(p.per_gpu_batch) and p.per_gpu_batch >= 1):
            raise ValueError(f"per-GPU batch {p.per_gpu_batch} is invalid; accepted: a number >= 1")
        if not (math.isfinite(p.images_per_s) and p.images_per_s > 0):
            raise ValueError(
                f"images/s {p.images_per_s} at per-GPU batch {p.per_gpu_batch:g} is invalid; accepted: a number > 0"
            )
    if len({p.per_gpu_batch for p in pts}) < 2:
        raise ValueError(
            f"{len(pts)} measurement(s) at {len({p.per_gpu_batch for p in pts})} per-GPU batch(es): the fixed cost "
            "per step and the rate per image need measurements at two or more different per-GPU batches"
        )
    # min sum ((t0 + b s) / t_i - 1)^2 over t0 and s = 1 / x_max: linear in (t0, s) after dividing by t_i
    rows = [(1 / p.step_s, p.per_gpu_batch / p.step_s) for p in pts]
    t0, slope = relative_least_squares(rows)  # two different batches: always separable
    clamped = t0 < 0
    if clamped:  # the rate falls with the batch: no fixed cost, the per-image cost alone
        t0, slope = 0.0, sum(b for _, b in rows) / sum(b * b for _, b in rows)
    if not slope > 0:
        raise ValueError(
            "the measured step time does not grow with the per-GPU batch (images/s grows faster than the batch): "
            "check the measurements' batches and rates"
        )
    return ComputeModel(name, t0, 1 / slope, pts, mode, clamped)


def _parse_pair(text: str) -> Throughput:
    batch, sep, rate = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not BATCH:IMAGES_PER_S")
    try:
        return Throughput(float(batch), float(rate), f"given as {text}")
    except ValueError:
        raise ValueError(f"{text!r} is not BATCH:IMAGES_PER_S (two numbers)") from None


def measured_points(items: list[str]) -> tuple[Throughput, ...]:
    """The user's measurements for calibrated mode, from ``items``: each either a run directory of
    ``largebatch train`` (its ``summary.json``, read as a :class:`~largebatch.summary.RunSummary`:
    ``images_per_s`` over the training steps of all ``world_size`` workers, and ``global_batch_size``;
    per GPU = divided by ``world_size``) or
    ``BATCH:IMAGES_PER_S,...`` (per-GPU batch and per-GPU images/s).

    Raises:
        ValueError: a directory without ``summary.json``, with one that cannot be read (not JSON, not
            an object) or without images/s in it, or a malformed pair (the message names the item and
            what is accepted).
    """
    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            summary = path / SUMMARY_FILE
            if not summary.is_file():
                raise ValueError(f"{item}: no summary.json; give the directory of a finished `largebatch train` run")
            try:
                run = RunSummary.read(path)
            except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{summary}: cannot be read ({err}); give a finished run's directory") from None
            rate, world, batch = run.images_per_s, run.world_size, run.global_batch_size
            if not (isinstance(rate, (int, float)) and rate > 0 and isinstance(world, int) and world >= 1 and batch):
                raise ValueError(
                    f"{summary}: no images/s recorded (images_per_s={rate!r}); give a run that trained at least one step"
                )
            out.append(Throughput(batch / world, rate / world, f"{item} (summary.json)"))
        elif ":" in item:
            out.extend(_parse_pair(part) for part in item.split(",") if part)
        else:
            raise ValueError(f"--measured {item!r} is neither a run directory nor BATCH:IMAGES_PER_S; give one of them")
    return tuple(out)
