"""``largebatch critical-batch``: the critical batch size measured directly, by branching short runs
from checkpoints of one run (Merrill et al. 2025, "Critical batch size revisited", sec. 3).

From a checkpoint at step t of a reference run (global batch B_ref, LR eta(t) there), one branch per
global batch B starts from the checkpoint's weights and BN buffers (``train.init_from``; a fresh
optimizer) and trains on the same budget of D training images at a constant LR. Each B tries the LR
carried by the linear rule, eta(t) B / B_ref (Goyal et al. 2017 sec. 2.1), and by the square-root
rule, eta(t) sqrt(B / B_ref); the better validation loss counts. Below the critical batch every
batch reduces the loss about equally for the same images (perfect scaling: k times the batch, k
times fewer steps); above it the larger batch falls behind.

Our reading of the criterion: the measured critical batch at t is the largest B whose branch
reduces the validation loss by at least ``1 - tolerance`` of the reduction of the smallest batch's
branch (loss at the checkpoint minus loss after D images), interpolated on log2 B between the last
batch that passes and the first that fails. Merrill et al. state their criterion on the loss
reached; on a budget this short a reduction is far less noisy than a loss.

Beside it the report puts the gradient noise scale B_simple (McCandlish et al. 2018 sec. 2.2)
logged by the reference run at the same steps, and the ratio of the two.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from largebatch.config import ConfigError, apply_overrides, config_from_dict
from largebatch.plan import resolve_stages
from largebatch.recipes import recipe_names
from largebatch.registry import refuse_plugins_named_by_file, set_keys
from largebatch.study.advise import read_noise_scale
from largebatch.study.sweep import _overrides_of
from largebatch.study.tune import _train_images
from largebatch.train.metrics import read_metrics


class BranchError(ValueError):
    """A branching study that cannot run as asked (run directory, checkpoint, batch); raised before
    any branch starts."""


@dataclass(frozen=True)
class BranchPoint:
    """One checkpoint of the reference run and what is known there."""

    step: int
    checkpoint: Path
    lr: float
    """The reference run's LR at that step."""
    b_simple: float | None
    """The noise scale B_simple logged nearest that step (images), when the run measured it."""


def checkpoints_of(run_dir: Path) -> dict[int, Path]:
    """Checkpoint files of a run directory by step."""
    out = {}
    for path in sorted((Path(run_dir) / "checkpoints").glob("ckpt_step*.pt")):
        try:
            out[int(path.stem.removeprefix("ckpt_step"))] = path
        except ValueError:
            continue
    return out


def branch_points(run_dir: Path, steps: list[int] | None) -> list[BranchPoint]:
    """The checkpoints to branch from (``steps``: those steps; None: every checkpoint), with the LR
    and noise scale of the run at each.

    Raises:
        BranchError: when the run has no metrics or no checkpoint at a requested step.
    """

    run_dir = Path(run_dir)
    ckpts = checkpoints_of(run_dir)
    if not ckpts:
        raise BranchError(
            f"{run_dir} has no checkpoints/ckpt_step*.pt: train the reference run with "
            "train.checkpoint_every_steps=N and train.keep_checkpoints large enough"
        )
    wanted = sorted(ckpts) if steps is None else sorted(steps)
    missing = [s for s in wanted if s not in ckpts]
    if missing:
        raise BranchError(f"{run_dir} has no checkpoint at step(s) {missing}; it has {sorted(ckpts)}")
    train = [r for r in read_metrics(run_dir) if r.get("kind") == "train" and r.get("lr") is not None]
    if not train:
        raise BranchError(f"{run_dir}/metrics.jsonl has no train records (is it a largebatch run directory?)")
    noise = read_noise_scale(run_dir)
    points = []
    for s in wanted:
        lr = min(train, key=lambda r: abs(r["step"] - s))["lr"]
        b = min(noise, key=lambda p: abs(p[0] - s))[1] if noise else None
        points.append(BranchPoint(step=s, checkpoint=ckpts[s], lr=lr, b_simple=b))
    return points


def critical_from_reductions(
    batch_sizes: list[int], reductions: list[float], tolerance: float, min_reduction: float = 0.0
) -> float | None:
    """The largest batch whose loss reduction is at least ``(1 - tolerance)`` of the smallest batch's,
    interpolated on log2 B to where the reduction crosses that level; None when the smallest batch
    reduced the loss by no more than ``min_reduction`` (nats): the branches cannot tell the batches
    apart from the evaluation's noise. The largest batch itself when every batch passes (a lower
    bound)."""
    pts = sorted(zip(batch_sizes, reductions))
    ref = pts[0][1]
    if not ref > max(0.0, min_reduction):
        return None
    level = (1 - tolerance) * ref
    for (b0, r0), (b1, r1) in zip(pts, pts[1:]):
        if r1 < level:
            if r0 == r1:
                return float(b0)
            f = (r0 - level) / (r0 - r1)
            return 2 ** (math.log2(b0) + f * (math.log2(b1) - math.log2(b0)))
    return float(pts[-1][0])


def _branch_overrides(
    n_train: int, point: BranchPoint, batch: int, lr: float, budget_images: int, val_size: int
) -> list[str]:
    epochs = max(1, math.ceil(budget_images / max(1, n_train)))
    return [
        f"train.init_from={point.checkpoint}",
        f"train.global_batch_size={batch}",
        f"train.epochs={epochs}",
        f"train.stop_after_images={budget_images}",
        "train.batch_schedule=[]",
        f"optim.base_lr={lr}",
        f"optim.base_batch_size={batch}",
        "optim.lr_scaling=linear",
        "schedule.name=step",
        "schedule.warmup_epochs=0",
        "schedule.decay_epochs=[]",
        f"data.val_size={val_size}",
        f"train.eval_every_epochs={epochs}",
        f"train.checkpoint_every_epochs={epochs}",
        "train.checkpoint_every_steps=0",
        "train.checkpoint_every_minutes=0",
        "train.val_every_steps=0",
        "train.stop_at_val_top1=0",
        "train.val_target_top1=0",
        "train.keep_checkpoints=1",
    ]


def _val_loss_at(run_dir: Path) -> float | None:

    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval" and r.get("val_loss") is not None]
    return evals[-1]["val_loss"] if evals else None


def run_branches(
    reference: Path,
    out: Path,
    *,
    steps: list[int] | None,
    batch_sizes: list[int],
    budget_images: int,
    tolerance: float = 0.2,
    min_reduction: float = 0.02,
    nproc: int = 1,
    overrides: list[str] = (),
    progress: Callable[[str], None] | None = None,
    trust_plugins: bool = False,
) -> dict:
    """Branch every (checkpoint, batch, LR rule) that has no result under ``out``, then write
    ``critical_batch.json`` and ``critical_batch.md``; returns the report (see the module docstring).
    A plugin model or data set that only the reference run's config names is loaded only with
    ``trust_plugins`` or when ``overrides`` name it (:func:`largebatch.registry.refuse_plugins_named_by_file`).

    Raises:
        BranchError: before any branch, for a study that cannot run as asked.
        ConfigError: a plugin named only by the reference run, without ``trust_plugins``.
        RuntimeError: when a branch fails other than by diverging (the same command resumes).
    """

    say = progress or (lambda line: print(f"largebatch critical-batch: {line}", file=sys.stderr, flush=True))
    reference, out = Path(reference), Path(out)
    if len(batch_sizes) < 2 or any(b < 1 for b in batch_sizes):
        raise BranchError(f"--batch-sizes {batch_sizes}: give 2 or more positive global batch sizes")
    if not 0 < tolerance < 1:
        raise BranchError(f"--tolerance {tolerance}: a fraction in (0, 1)")
    cfg_path = reference / "config.json"
    if not cfg_path.is_file():
        raise BranchError(f"{reference} has no config.json: give the run directory of a largebatch train run")
    try:
        ref_cfg = config_from_dict(json.loads(cfg_path.read_text()))
    except Exception as err:  # whatever the file holds: one line
        raise BranchError(f"{cfg_path}: not a largebatch run's config ({(str(err).splitlines() or [''])[0]})") from None
    # The run's config is data: a plugin only it names is not imported (largebatch.registry).
    refuse_plugins_named_by_file(
        apply_overrides(ref_cfg, list(overrides)),
        str(cfg_path),
        named_on_command_line=set_keys(overrides),
        trusted=trust_plugins,
    )
    points = branch_points(reference, steps)
    ref_batch = (
        ref_cfg.train.global_batch_size
        if not ref_cfg.train.batch_schedule
        else ref_cfg.train.batch_schedule[-1].global_batch_size
    )
    val_size = ref_cfg.data.val_size or 5000

    n_train = _train_images(ref_cfg, val_size)
    if budget_images < max(batch_sizes):
        raise BranchError(
            f"--budget-images {budget_images} is less than one step at {max(batch_sizes)}; give at least "
            f"{4 * max(batch_sizes)} (4 steps at the largest batch)"
        )
    plan = []
    for p in points:
        for b in sorted(batch_sizes):
            for rule in ("linear", "sqrt"):
                factor = b / ref_batch if rule == "linear" else math.sqrt(b / ref_batch)
                if rule == "sqrt" and b == ref_batch:
                    continue  # the same LR as the linear rule
                items = _branch_overrides(n_train, p, b, p.lr * factor, budget_images, val_size)
                try:
                    cfg = apply_overrides(ref_cfg, [*items, *overrides])
                    resolve_stages(cfg, nproc)
                except ConfigError as err:
                    raise BranchError(f"step {p.step}, batch {b}: {err}") from None
                plan.append((p, b, rule, cfg))
    base_loss = {}
    for p, b, rule, cfg in plan:
        run_dir = out / f"step{p.step:08d}" / f"b{b:06d}_{rule}"
        if not (run_dir / "summary.json").is_file():
            cmd = [
                sys.executable,
                "-m",
                "largebatch",
                "train",
                "--nproc",
                str(nproc),
                "--out",
                str(run_dir),
                "--recipe",
                ref_cfg.recipe if ref_cfg.recipe in _recipes() else "goyal2017_fashion_mnist",
            ]

            for item in _overrides_of(cfg):
                cmd += ["--set", item]
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log_path = run_dir.parent / f"b{b:06d}_{rule}.log"
            with open(log_path, "w") as log_file:
                proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            tail = log_path.read_text()[-2000:]
            if proc.returncode != 0 and "training loss is" not in tail and "nonfinite" not in tail:
                raise RuntimeError(
                    f"branch step {p.step} batch {b} ({rule}) failed (exit {proc.returncode}); "
                    f"log {log_path}:\n{tail}\nfinished branches are kept: the same command continues"
                )
            if proc.returncode != 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "summary.json").write_text(json.dumps({"diverged": True, "log": str(log_path)}) + "\n")
            say(
                f"step {p.step} batch {b} ({rule} LR {cfg.optim.base_lr:.4g}): val loss "
                f"{_val_loss_at(run_dir) if proc.returncode == 0 else 'diverged'}"
            )
        if p.step not in base_loss:
            base_loss[p.step] = _checkpoint_val_loss(p, ref_cfg, val_size, nproc, out)
    report = _report(points, plan, out, base_loss, batch_sizes, budget_images, tolerance, ref_batch, min_reduction)
    (out / "critical_batch.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "critical_batch.md").write_text(report_text(report) + "\n")
    return report


def _recipes() -> set[str]:

    return set(recipe_names())


def _checkpoint_val_loss(point: BranchPoint, ref_cfg, val_size: int, nproc: int, out: Path) -> float:
    """Validation loss of the checkpoint itself: a branch of no steps (``largebatch eval``)."""
    path = out / f"step{point.step:08d}" / "checkpoint_eval.json"
    if path.is_file():
        return json.loads(path.read_text())["val_loss"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "eval",
            "--checkpoint",
            str(point.checkpoint),
            "--split",
            "val",
            "--set",
            f"data.val_size={val_size}",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"evaluating {point.checkpoint} on the validation split failed: {proc.stderr[-1500:]}")
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val_loss": result["loss"], "val_top1": result["top1"]}) + "\n")
    return result["loss"]


def _report(
    points, plan, out: Path, base_loss: dict, batch_sizes, budget_images, tolerance, ref_batch, min_reduction: float
) -> dict:
    rows = []
    for p in points:
        per_batch = {}
        for q, b, rule, _cfg in plan:
            if q.step != p.step:
                continue
            run_dir = out / f"step{p.step:08d}" / f"b{b:06d}_{rule}"
            summary = json.loads((run_dir / "summary.json").read_text())
            loss = None if summary.get("diverged") else _val_loss_at(run_dir)
            entry = per_batch.setdefault(b, {"batch": b, "steps": budget_images // b, "losses": {}})
            entry["losses"][rule] = loss
        for entry in per_batch.values():
            finite = [v for v in entry["losses"].values() if v is not None and math.isfinite(v)]
            entry["best_val_loss"] = min(finite) if finite else None
            entry["reduction"] = (base_loss[p.step] - entry["best_val_loss"]) if finite else -math.inf
        entries = [per_batch[b] for b in sorted(per_batch)]
        b_crit = critical_from_reductions(
            [e["batch"] for e in entries], [e["reduction"] for e in entries], tolerance, min_reduction
        )
        rows.append(
            {
                "step": p.step,
                "checkpoint": str(p.checkpoint),
                "lr": p.lr,
                "val_loss_at_checkpoint": base_loss[p.step],
                "branches": entries,
                "critical_batch": b_crit,
                "critical_batch_is_lower_bound": b_crit == float(max(batch_sizes)),
                "b_simple": p.b_simple,
                "ratio_b_simple_to_measured": (p.b_simple / b_crit) if (p.b_simple and b_crit) else None,
            }
        )
    return {
        "reference_batch": ref_batch,
        "budget_images": budget_images,
        "tolerance": tolerance,
        "min_reduction": min_reduction,
        "batch_sizes": sorted(batch_sizes),
        "points": rows,
    }


def report_text(report: dict) -> str:
    lines = [
        f"Critical batch by branching (Merrill et al. 2025): {report['budget_images']:,} images per branch, "
        f"constant LR by the linear or square-root rule from the reference batch {report['reference_batch']} "
        f"(the better counts); critical = largest batch keeping {1 - report['tolerance']:.0%} of the smallest "
        "batch's loss reduction.",
        "",
        "| step | val loss there | "
        + " | ".join(f"B={b}" for b in report["batch_sizes"])
        + " | measured B_crit | B_simple there | B_simple / measured |",
        "|---|---|" + "---|" * len(report["batch_sizes"]) + "---|---|---|",
    ]
    for r in report["points"]:
        cells = []
        for e in r["branches"]:
            cells.append("diverged" if e["best_val_loss"] is None else f"{e['reduction']:+.3f}")
        crit = (
            "not resolved"
            if r["critical_batch"] is None
            else (
                f">= {r['critical_batch']:.0f}" if r["critical_batch_is_lower_bound"] else f"{r['critical_batch']:.0f}"
            )
        )
        ratio = "" if r["ratio_b_simple_to_measured"] is None else f"{r['ratio_b_simple_to_measured']:.2f}"
        b_simple = "" if r["b_simple"] is None else f"{r['b_simple']:.0f}"
        lines.append(
            f"| {r['step']} | {r['val_loss_at_checkpoint']:.4f} | "
            + " | ".join(cells)
            + f" | {crit} | {b_simple} | {ratio} |"
        )
    lines.append("")
    lines.append(
        "Cells: validation loss reduction of each batch's branch over the same images (higher is better). "
        f"Not resolved: the smallest batch reduced the loss by at most {report.get('min_reduction', 0):g}, "
        "within the evaluation's noise; give a larger --budget-images."
    )
    return "\n".join(lines)
