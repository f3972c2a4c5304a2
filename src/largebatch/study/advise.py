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
measures the early value. :mod:`largebatch.study.noise_probe` reads it in windows, fits its trend,
extrapolates it to the run's horizon and averages it over the run the way eq. 2.11 weighs the steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from largebatch.api import load_config
from largebatch.plan import train_images
from largebatch.sim.compute import fit_compute
from largebatch.study.advise_cost import (  # noqa: F401  (re-exported)
    _duration,
    _model_of,
    _parameter_count,
    cluster_estimate,
    model_flops_ratio,
    model_layers_ratio,
)
from largebatch.study.advise_measured import against_measured, read_measured
from largebatch.study.hessian_noise import (
    CALIBRATION_HESSIAN,
    CALIBRATION_HESSIAN_SPREAD,
    HESSIAN_STATUS,
    measure_run,
)
from largebatch.study.launch import RunFailed, run_train
from largebatch.study.noise_probe import predict, step_estimates
from largebatch.train.metrics import read_metrics

_train_images = train_images
"""The training images of an epoch (:func:`largebatch.plan.train_images`), by the name
benchmarks/critical_batch_validation.py imports."""


@dataclass
class Advice:
    """What ``largebatch advise`` reports (all batch sizes in images, positions in steps of the
    recipe's batch)."""

    recipe: str
    global_batch_size: int
    optimizer: str
    probe_steps: int
    probe_seeds: int
    warmup_steps: int
    window_steps: int
    b_simple: float
    """B_simple of the probe's last window (its own value, before any extrapolation)."""
    prediction: dict
    """:meth:`largebatch.study.noise_probe.Prediction.as_dict`."""
    critical_batch: float
    """The predicted run-level B_noise (calibrated run-level average of the noise scale)."""
    linear_scaling_max_batch: float
    epochs_at_recipe_batch: float
    epochs_at_critical_batch: float
    flags: list = field(default_factory=list)
    cluster: dict = field(default_factory=dict)
    hessian: dict = field(default_factory=dict)
    """With ``--hessian``: each probe's :class:`largebatch.study.hessian_noise.HessianNoise` at its
    final weights (``per_seed``), their geometric-mean ``ratio`` B_noise / B_simple, and the
    Hessian-corrected prediction (``predicted``, ``predicted_low``, ``predicted_high``, with its own
    ``calibration``; :func:`hessian_prediction`)."""
    measured: list = field(default_factory=list)
    """One dict per point of a ``largebatch critical-batch`` report given with ``--measured`` (see
    :func:`against_measured`)."""

    def text(self) -> str:
        return "\n".join(
            [*self._prediction_lines(), *self._hessian_lines(), *(f"note: {flag}" for flag in self.flags)]
            + [*self._cluster_lines(), *self._measured_lines()]
        )

    def _prediction_lines(self) -> list[str]:
        p = self.prediction
        pct = round(100 * p["coverage"])
        trend = (
            f"B ~ step^{p['trend_exponent']:.2f} over {len(p['windows'])} windows"
            if p["trend_exponent"] is not None
            else "one window: taken as constant"
        )
        return [
            f"recipe {self.recipe} (global batch {self.global_batch_size}, {self.optimizer}); "
            f"{self.probe_seeds} probe(s) of {self.probe_steps} steps (seeds pooled), warmup ({self.warmup_steps} steps) left out, windows of "
            f"{self.window_steps} steps, small batches of one BN group",
            f"noise scale B_simple at the end of the probe: {p['probe_end_b']:,.0f} images "
            f"({pct}% interval {p['probe_end_low']:,.0f}-{p['probe_end_high']:,.0f}); trend {trend}; "
            f"at the horizon (step {p['horizon_step']}): {p['horizon_b']:,.0f}",
            f"predicted critical batch B_noise = {self.critical_batch:,.0f} images ({pct}% interval "
            f"{p['predicted_low']:,.0f}-{p['predicted_high']:,.0f}): the steps-weighted average of the noise "
            f"scale from the end of warmup to the horizon (McCandlish et al. 2018, eq. 2.11 piece by piece)"
            f" x calibration {p['calibration']:g}; {p['extrapolation_factor']:.2f}x the probe's own value",
            f"what it means: at a global batch of B_noise a run needs about 2x the minimal steps and 2x the "
            f"minimal images; below about B_noise / 10 = {self.linear_scaling_max_batch:,.0f} the linear "
            f"scaling rule costs at most 10% more images; above B_noise each doubling of the batch buys "
            f"ever fewer steps",
            f"epochs: the recipe's {self.epochs_at_recipe_batch:g} at {self.global_batch_size} become about "
            f"{self.epochs_at_critical_batch:.1f} at B_noise",
        ]

    def _hessian_lines(self) -> list[str]:
        h = self.hessian
        if not h:
            return []
        if math.isfinite(h["ratio"]):
            return [
                f"Hessian-corrected (tr(H Sigma) / G^T H G at the probes' final weights, {h['ratio']:.2f}x "
                f"B_simple there): B_noise = {h['predicted']:,.0f} images ({h['predicted_low']:,.0f}-"
                f"{h['predicted_high']:,.0f}), x calibration {h['calibration']:g}; {h['status']}"
            ]
        return ["Hessian-corrected: not measured (G^T H G or |G|^2 was not positive at the probes' final weights)"]

    def _cluster_lines(self) -> list[str]:
        c = self.cluster
        if not c:
            return []
        lines = [
            f"cost model ({c['preset']} network, all-reduce {c.get('algorithm', 'auto')}, {c['per_gpu_batch']} images "
            f"per GPU; compute in {c.get('mode', 'preset')} mode: {c.get('compute', '')}): B_noise on {c['gpus']} "
            f"GPU(s), {c['images_per_s']:,.0f} images/s, scaling efficiency {100 * c['scaling_efficiency']:.0f}%, "
            f"{_duration(c['train_s'])} for {self.epochs_at_critical_batch:.1f} epochs of {c['train_images']:,} "
            f"images"
        ]
        if "gpus_low" in c:
            lines.append(
                f"range over the critical batch's interval and {len(c['compute_models'])} compute model(s): "
                f"{c['gpus_low']}-{c['gpus_high']} GPU(s), {_duration(c['train_s_low'])} to "
                f"{_duration(c['train_s_high'])}"
            )
        return lines

    def _measured_lines(self) -> list[str]:
        lines = []
        for m in self.measured:
            if m["measured"] is None:
                lines.append(f"measured B_noise at step {m['step']} (branching): not resolved; no comparison")
                continue
            bound = ">= " if m["lower_bound"] else ""
            line = (
                f"measured B_noise at step {m['step']} (branching, Merrill et al. 2025): {bound}{m['measured']:,.0f}; "
                f"this advice's {self.critical_batch:,.0f} is {m['ratio']:.2f}x it "
                f"({'within' if m['within_2x'] else 'outside'} 2x)"
            )
            if m["b_simple_ratio"] is not None:
                line += (
                    f"; the B_simple that run logged at that step, {m['b_simple_there']:,.0f}, is "
                    f"{m['b_simple_ratio']:.2f}x it"
                )
            lines.append(line)
        return lines


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


def probe_layout(cfg, probe_epochs: float, horizon_epochs: float | None) -> dict:
    """Steps of the probe, its warmup and windows, and the horizon, from the config alone.

    The horizon is the step of the first LR decay of a ``step`` schedule, else half the run (where a
    linear decay has halved the LR; our choice), or ``horizon_epochs`` when given.

    Raises:
        ValueError: the probe ends before two windows after warmup, or a horizon outside the run.
    """
    b0 = cfg.train.global_batch_size
    per_epoch = max(1, train_images(cfg) // b0)
    window = max(2, per_epoch // 4)
    warmup = round(cfg.schedule.warmup_epochs * per_epoch)
    probe = int(probe_epochs * per_epoch)
    if probe < warmup + 2 * window:
        need = (warmup + 2 * window) / per_epoch
        raise ValueError(
            f"--probe-epochs {probe_epochs:g}: the probe's {probe} steps end before two windows of {window} steps "
            f"after the warmup's {warmup}; give --probe-epochs {math.ceil(need * 4) / 4:g} or more"
        )
    decays = [e for e in cfg.schedule.decay_epochs if e > cfg.schedule.warmup_epochs]
    first_decay = min(decays) if cfg.schedule.name == "step" and decays else None
    if horizon_epochs is not None:
        if not 0 < horizon_epochs <= cfg.train.epochs:
            raise ValueError(
                f"--horizon-epochs {horizon_epochs:g}: give an epoch within the run (0, {cfg.train.epochs}]"
            )
        horizon = horizon_epochs
    else:
        horizon = first_decay if first_decay is not None else cfg.train.epochs / 2
    return {
        "steps_per_epoch": per_epoch,
        "window_steps": window,
        "warmup_steps": warmup,
        "probe_steps": probe,
        "horizon_step": max(probe, round(horizon * per_epoch)),
        "decay_within_horizon": first_decay is None or horizon > first_decay,
    }


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
    horizon_epochs: float | None = None,
    probe_seeds: int = 2,
    hessian_small_batches: int = 0,
    measured_throughput: tuple = (),
) -> Advice:
    """Run the probe (``largebatch train`` of the recipe on ``nproc`` workers, its schedule unchanged,
    stopped after ``probe_epochs`` epochs, the noise scale measured on micro-batches of one BN group)
    ``probe_seeds`` times with seeds ``train.seed``, ``train.seed + 1``, ... into ``out/seed<k>``, then predict the run's critical batch (:mod:`largebatch.study.noise_probe`) and
    build the :class:`Advice`; with ``measured`` (a ``critical_batch.json`` of ``largebatch
    critical-batch``) the prediction is compared with each measured point (:func:`against_measured`);
    with ``hessian_small_batches`` > 0 the Hessian-corrected noise scale is measured at each probe's
    final weights from that many small batches (:func:`hessian_prediction`); with
    ``measured_throughput`` (:class:`largebatch.sim.compute.Throughput` points of the user's own
    training at two or more per-GPU batches) the cost model runs in calibrated mode
    (:func:`cluster_estimate`).

    Raises:
        ValueError: fewer than 1 worker, a probe that ends in warmup, a horizon outside the run or an
            unreadable ``measured`` report (all before the probe starts).
        RuntimeError: when the probe fails or logs no noise scale (its log's end in the message).
    """
    _check_request(nproc, probe_epochs, probe_seeds, hessian_small_batches)
    report = read_measured(measured) if measured else None
    if measured_throughput:
        fit_compute(measured_throughput, "your measurements", mode="calibrated")  # refused before the probe
    cfg = load_config(recipe, overrides)
    layout = probe_layout(cfg, probe_epochs, horizon_epochs)
    run_dir = Path(out)
    groups = _run_probes(recipe, overrides, cfg, layout, run_dir, nproc=nproc, probe_seeds=probe_seeds)
    pred = _predict(groups, layout, cfg.train.global_batch_size, run_dir)
    advice = _advice(recipe, cfg, pred, layout, groups)
    if hessian_small_batches:
        per_seed = [
            measure_run(run_dir / f"seed{k}", seed=cfg.train.seed + k, small_batches=hessian_small_batches)
            for k in range(probe_seeds)
        ]
        advice.hessian = hessian_prediction(pred, per_seed)
    if preset and math.isfinite(advice.critical_batch):
        advice.cluster = _cluster(advice, cfg, pred, preset, algorithm, measured_throughput)
    if report is not None:
        advice.measured = against_measured(advice.critical_batch, report)
    (run_dir / "advice.json").write_text(json.dumps(dataclasses.asdict(advice), indent=2) + "\n")
    return advice


def _predict(groups: list, layout: dict, reference_batch: int, run_dir: Path):
    """The prediction from the probes' estimates (:func:`largebatch.study.noise_probe.predict`).

    Raises:
        RuntimeError: the estimates do not make one (the probes' metrics named).
    """
    try:
        return predict(
            [row for g in groups for row in g],
            window_steps=layout["window_steps"],
            warmup_steps=layout["warmup_steps"],
            horizon_step=layout["horizon_step"],
            reference_batch=reference_batch,
            seed_groups=groups,
        )
    except ValueError as err:
        raise RuntimeError(f"{err} ({run_dir}/seed*/metrics.jsonl)") from None


def _cluster(advice: Advice, cfg, pred, preset: str, algorithm: str, measured_throughput: tuple) -> dict:
    """The cost model at the predicted critical batch and its interval (:func:`cluster_estimate`)."""
    return cluster_estimate(
        cfg,
        advice.critical_batch,
        advice.epochs_at_critical_batch,
        train_images(cfg),
        preset,
        algorithm,
        interval=(pred.predicted_low, pred.predicted_high),
        measured_throughput=measured_throughput,
    )


def _advice(recipe: str, cfg, pred, layout: dict, groups: list) -> Advice:
    """The :class:`Advice` of prediction ``pred`` (from the probes' estimates ``groups``), before the
    Hessian correction, the cost model and the comparison with measured points."""
    b0, b_noise = cfg.train.global_batch_size, pred.predicted
    return Advice(
        recipe=recipe,
        global_batch_size=b0,
        optimizer=cfg.optim.name,
        probe_steps=max(e[0] for g in groups for e in g),
        probe_seeds=len(groups),
        warmup_steps=layout["warmup_steps"],
        window_steps=layout["window_steps"],
        b_simple=pred.probe_end_b,
        prediction=pred.as_dict(),
        critical_batch=b_noise,
        linear_scaling_max_batch=b_noise / 10,
        epochs_at_recipe_batch=cfg.train.epochs,
        epochs_at_critical_batch=(
            cfg.train.epochs * epochs_ratio(b_noise, b0, b_noise) if math.isfinite(b_noise) else math.inf
        ),
        flags=_flags(cfg, pred, layout),
    )


def _check_request(nproc: int, probe_epochs: float, probe_seeds: int, hessian_small_batches: int) -> None:
    """Raises ValueError for arguments :func:`advise` cannot run with."""
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: give 1 or more worker processes")
    if probe_epochs <= 0:
        raise ValueError(f"--probe-epochs {probe_epochs}: give a positive number of epochs")
    if probe_seeds < 1:
        raise ValueError(f"--probe-seeds {probe_seeds}: give 1 or more")
    if hessian_small_batches and hessian_small_batches < 2:
        raise ValueError(f"--hessian-small-batches {hessian_small_batches}: give 2 or more (128 by default)")


def _run_probes(recipe: str, overrides: list[str], cfg, layout: dict, run_dir: Path, *, nproc: int, probe_seeds: int):
    """Run the probe with each seed (``largebatch train`` into ``run_dir/seed<k>``: the recipe and
    ``overrides``, its schedule unchanged, stopped after the probe's steps, the noise scale measured
    on micro-batches of one BN group); returns each probe's per-step noise-scale estimates.

    Raises:
        RuntimeError: a probe failed (the end of its stderr in the message) or logged no noise scale.
    """
    settings = [
        "train.noise_scale=true",
        "train.noise_scale_small_batch=micro_batch",
        "train.accumulation_steps=0",
        f"train.stop_after_images={layout['probe_steps'] * cfg.train.global_batch_size}",
        f"train.eval_every_epochs={cfg.train.epochs + 1}",
        "train.batch_schedule=[]",
    ]
    groups = []
    for k in range(probe_seeds):
        seed_dir = run_dir / f"seed{k}"
        probe = load_config(recipe, [*overrides, *settings, f"train.seed={cfg.train.seed + k}"])
        try:
            run_train(probe, seed_dir, nproc=nproc, resume=False)
        except RunFailed as err:
            raise RuntimeError(
                f"the probe run {seed_dir} failed (exit {err.returncode}):\n{err.output[-3000:]}"
            ) from None
        estimates = step_estimates(read_metrics(seed_dir))
        if not estimates:
            raise RuntimeError(f"the probe logged no noise scale in {seed_dir}/metrics.jsonl")
        groups.append(estimates)
    return groups


def hessian_prediction(pred, per_seed: list) -> dict:
    """The Hessian-corrected prediction: the uncalibrated run-level B_simple average of ``pred`` times
    the geometric mean over the probes of B_noise / B_simple at their final weights (McCandlish et al.
    2018, eq. 2.7 over eq. 2.8; ``per_seed``: :class:`largebatch.study.hessian_noise.HessianNoise`),
    times its own calibration factor (:data:`largebatch.study.hessian_noise.CALIBRATION_HESSIAN`),
    the interval the bootstrap's widened by that factor's spread, as for the plain prediction. The
    correction is an option until the held-out validation says whether it lowers the error
    (docs/noise_scale.md, "Hessian correction")."""
    ratios = [h.ratio for h in per_seed if math.isfinite(h.ratio) and h.ratio > 0]
    ratio = math.exp(sum(map(math.log, ratios)) / len(ratios)) if len(ratios) == len(per_seed) else math.nan
    base = pred.run_level_b
    scale = ratio * CALIBRATION_HESSIAN
    return {
        "per_seed": [h.as_dict() for h in per_seed],
        "ratio": ratio,
        "calibration": CALIBRATION_HESSIAN,
        "predicted": base * scale,
        "predicted_low": pred.sampling_low / pred.calibration * scale / CALIBRATION_HESSIAN_SPREAD,
        "predicted_high": pred.sampling_high / pred.calibration * scale * CALIBRATION_HESSIAN_SPREAD,
        "status": HESSIAN_STATUS,
    }


VALIDATED = (
    "the 28-px ResNet-8 at widths 16 and 8 (calibration) and, held out, with 10,000 training images (1.02x) "
    "and two blocks per stage (0.85x); LAMB missed (3.6x); a stride-2 stem and synthetic data not resolved by "
    "the yardstick; width 32 being measured (docs/noise_scale.md); outside these the prediction is an extrapolation"
)
"""Where the prediction has been checked against the branching yardstick; see docs/noise_scale.md."""


def _flags(cfg, pred, layout: dict) -> list[str]:
    """The caveats ``advise`` prints under its numbers."""
    flags = []
    if pred.calibration == 1.0:
        flags.append("uncalibrated: the calibration factor is 1 until it is fitted on two configurations")
    else:
        flags.append(
            f"calibrated: x{pred.calibration:g}, fitted on the 28-px ResNet-8 recipe at widths 16 and 8 against the "
            "branching yardstick (`largebatch critical-batch`; docs/noise_scale.md); the interval is the "
            f"probe's bootstrap interval ({pred.sampling_low:,.0f}-{pred.sampling_high:,.0f}) widened "
            f"{pred.calibration_spread:g}x on each side for the factor's scatter between those two"
        )
    flags.append(f"validated range: {VALIDATED}")
    if len(pred.windows) < 3:
        flags.append(f"only {len(pred.windows)} window(s) after warmup: the trend is poorly determined")
    if pred.negative_windows:
        flags.append(
            f"{pred.negative_windows} window(s) with a non-positive |G|^2 estimate: the gradient is too small "
            f"against its noise there; the trend leaves them out"
        )
    if layout["decay_within_horizon"]:
        flags.append(
            "the LR decays within the horizon: the noise scale jumps after a decay, which a probe before it "
            "cannot see; give --horizon-epochs to choose the horizon"
        )
    if cfg.optim.name != "sgd":
        uncalibrated = pred.predicted / pred.calibration if pred.calibration else math.nan
        flags.append(
            f"optimizer {cfg.optim.name}: the calibration factor was fitted on SGD; on the one held-out LAMB "
            f"configuration the calibrated prediction was 3.6x the measured critical batch and the uncalibrated "
            f"run-level value 1.08x it (docs/noise_scale.md); uncalibrated here: {uncalibrated:,.0f} images"
        )
    if math.isfinite(pred.extrapolation_factor) and pred.extrapolation_factor > 4:
        flags.append(
            f"the prediction is {pred.extrapolation_factor:.1f}x the probe's own value: a long extrapolation; a "
            f"longer probe narrows it"
        )
    flags.append(
        "not modelled: the stability limit of the linear LR rule (a large batch may diverge at the scaled LR "
        "before it reaches B_noise)"
    )
    return flags
