"""``largebatch critical-batch``: the critical batch size measured directly, by branching short runs
from checkpoints of one run (Merrill et al. 2025, "Critical batch size revisited", sec. 3), read
with the empirical model of McCandlish et al. 2018 (eq. 2.11).

From a checkpoint at step t of a reference run (global batch B_ref, LR eta(t) there), one branch per
(global batch B, LR, budget, seed) starts from the checkpoint's weights and BN buffers
(``train.init_from``; a fresh optimizer), trains on a budget of D training images with its LR
decaying linearly from its peak to 0 over those images (no warmup), and is evaluated once, at its
end. The evaluation recomputes the BN statistics over ``PRECISE_BN_IMAGES`` training images
(precise BN), and so does the checkpoint's own (a step at an LR of 1e-30): moving averages lag the
weights and would be read as loss.

Why a decay to 0 and not a constant LR: at a constant LR below the reference's, a branch's loss first
falls fast for a few steps whatever its batch (the iterate settles to the lower LR's noise level),
then slowly; levels crossed in that fall measure the LR change in steps, not gradient noise, and
levels crossed after it are interpolated across a linear stretch (docs/noise_scale.md, "What this
says about the yardstick"). Annealed to 0, every branch ends settled, and its final loss is the best
that batch reaches with that many images: the quantity the tuned steps-to-target study fits, whose
runs also end decayed.

* **Budgets**: each batch runs at 1/8, 1/4, 1/2 and all of the budget (:data:`DECAY_BUDGET_FRACTIONS`),
  giving its annealed loss as a function of images.
* **LR grid**: at half the budget (:data:`DECAY_GRID_FRACTION`), on the first seed, the peak LRs
  1/4, 1/2, 1 and 2 times the linear rule's eta(t) B / B_ref (Goyal et al. 2017 sec. 2.1) and the
  reference's own eta(t) unscaled; when the best (lowest final validation loss) sits at an edge of
  the multiples, the grid is widened by a factor of 2 that way (at most twice). Above the linear
  rule's stability limit the scaled LR diverges; the grid's smaller LRs keep such a batch
  measurable, so the reading is of gradient noise, not of one LR rule. Every budget and every seed
  then runs at the LR that won.
* **Budget**: doubled (at most ``max_doublings`` times) until the smallest batch's final loss at the
  full budget is at least ``min_reduction`` nats (0.05 by default, about 7x the seed-to-seed
  standard deviation of a final loss with precise BN on 5,000 images) below the checkpoint's. A
  checkpoint whose own loss is below ``min_reduction`` (a task already learned) cannot show that
  reduction at any budget: its point is reported not resolved without doubling
  (:func:`budget_verdict`).
* **Images to a loss level**: levels from the smallest batch's loss at its shortest budget down to its
  loss at the full budget (:data:`DECAY_LEVEL_FRACTIONS` of the way, the seeds' mean); E(B) per seed
  is interpolated on that seed's curve linearly in log images (:func:`images_to_level_log`). A level a
  batch's curve was already below at its shortest budget is left out; one it never reached counts
  as more than the budget.
* **B_noise**: E(B) = E_min,l (1 + B / B_noise) fitted jointly over the levels l and seeds, one
  E_min per level and seed and one B_noise, by least squares on log E (McCandlish et al. eq. 2.11;
  :func:`fit_b_noise_levels`). The range is that of the same fit on each seed alone.
* **Clock**: a second reading; each larger batch's final loss at the full budget read on the
  smallest batch's curve (:func:`clock_b_noise`).
* **Tolerance-based critical batch** (Merrill et al. 2025's kind of definition): the largest B whose
  E(B) at the middle level is at most ``1 + tolerance`` times the smallest batch's, interpolated on
  log2 B; under the model it is about ``tolerance x B_noise`` plus the smallest batch, a different
  quantity from B_noise, and the report names each.

With two or more points, the report also averages B_noise over the steps between the first and the
last point as :func:`largebatch.study.noise_probe.run_level` does (log B interpolated linearly in
log step), the quantity ``largebatch advise`` predicts. Beside them it puts the gradient noise scale
B_simple the reference run logged at the same steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from largebatch.config import ConfigError, apply_overrides, config_from_dict
from largebatch.plan import resolve_stages, train_images
from largebatch.recipes import recipe_names
from largebatch.registry import refuse_plugins_named_by_file, set_keys
from largebatch.study.advise import read_noise_scale
from largebatch.study.branch_fit import (  # noqa: F401  (re-exported)
    budget_verdict,
    clock_b_noise,
    fit_b_noise_levels,
    images_to_level_log,
    run_level_b_noise,
    tolerance_critical,
)
from largebatch.study.branch_report import (  # noqa: F401  (re-exported)
    BEFORE_FIRST,
    DECAY_BUDGET_FRACTIONS,
    DECAY_GRID_FRACTION,
    DECAY_LEVEL_FRACTIONS,
    _best_cell,
    _decay_final,
    _mean_lowest,
    _report,
    _val_loss_at,
    decay_budgets,
    report_text,
)
from largebatch.study.branch_runs import PRECISE_BN_IMAGES, Driver, branch_overrides  # noqa: F401  (re-exported)
from largebatch.study.launch import RunFailed, TrainProcess, run_train, start_train
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


LR_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0)
"""Default multiples of the linear rule's LR tried at every batch (plus the reference's LR)."""
MAX_WIDENINGS = 2


def lr_tag(multiplier: float | None) -> str:
    """Directory tag of an LR of the grid: ``ref`` (the reference's LR unscaled) or ``x<multiple>``."""
    return "ref" if multiplier is None else f"x{multiplier:g}"


@dataclass(frozen=True)
class BranchSettings:
    """What every branch of one ``critical-batch`` command shares (see :func:`run_branches`)."""

    out: Path
    ref_cfg: object
    ref_batch: int
    recipe: str
    n_train: int
    val_size: int
    overrides: tuple[str, ...]
    nproc: int
    parallel: int
    seeds: tuple[int, ...]
    lr_multipliers: tuple[float, ...]
    max_widenings: int
    say: Callable[[str], None]


def run_branches(
    reference: Path,
    out: Path,
    *,
    steps: list[int] | None,
    batch_sizes: list[int],
    budget_images: int,
    tolerance: float = 0.2,
    min_reduction: float = 0.05,
    nproc: int = 1,
    overrides: list[str] = (),
    progress: Callable[[str], None] | None = None,
    trust_plugins: bool = False,
    lr_multipliers: tuple[float, ...] = LR_MULTIPLIERS,
    seeds: tuple[int, ...] = (0, 1),
    max_doublings: int = 2,
    max_widenings: int = MAX_WIDENINGS,
    parallel: int = 1,
) -> dict:
    """Branch every (checkpoint, batch, LR, budget, seed) that has no result under ``out`` (the LR
    grid widened and the budget doubled as the module docstring says), then write ``critical_batch.json``
    and ``critical_batch.md``; returns the report. A plugin model or data set that only the reference
    run's config names is loaded only with ``trust_plugins`` or when ``overrides`` name it
    (:func:`largebatch.registry.refuse_plugins_named_by_file`).

    Raises:
        BranchError: before any branch, for a study that cannot run as asked.
        ConfigError: a plugin named only by the reference run, without ``trust_plugins``.
        RuntimeError: when a branch fails other than by diverging (the same command resumes).
    """

    say = progress or (lambda line: print(f"largebatch critical-batch: {line}", file=sys.stderr, flush=True))
    reference, out = Path(reference), Path(out)
    _check_request(batch_sizes, tolerance, lr_multipliers, seeds, parallel, max_doublings, max_widenings)
    ref_cfg = _reference_config(reference, overrides, trust_plugins)
    points = branch_points(reference, steps)
    settings = BranchSettings(
        **_reference_settings(ref_cfg, out, batch_sizes, budget_images),
        overrides=tuple(overrides),
        nproc=nproc,
        parallel=parallel,
        seeds=tuple(seeds),
        lr_multipliers=tuple(lr_multipliers),
        max_widenings=max_widenings,
        say=say,
    )
    branching = Branching(settings)
    for p in points:  # every branch's config checked before the first one runs
        for b in batch_sizes:
            branching.config_of(p, b, lr_multipliers[0], budget_images, seeds[0])
    return branching.run(points, batch_sizes, budget_images, tolerance, min_reduction, max_doublings)


def _reference_settings(ref_cfg, out: Path, batch_sizes: list[int], budget_images: int) -> dict:
    """The :class:`BranchSettings` that follow from the reference run (its batch, recipe, training
    images and validation split).

    Raises:
        BranchError: a budget whose smallest branch is less than one step at the largest batch.
    """
    ref_batch = (
        ref_cfg.train.global_batch_size
        if not ref_cfg.train.batch_schedule
        else ref_cfg.train.batch_schedule[-1].global_batch_size
    )
    val_size = ref_cfg.data.val_size or 5000
    smallest_share = min(DECAY_BUDGET_FRACTIONS)
    if budget_images * smallest_share < max(batch_sizes):
        raise BranchError(
            f"--budget-images {budget_images}: its smallest branch ({smallest_share:g} of it) is less than one step "
            f"at {max(batch_sizes)}; give at least {math.ceil(4 * max(batch_sizes) / smallest_share)} "
            "(4 steps at the largest batch)"
        )
    return {
        "out": out,
        "ref_cfg": ref_cfg,
        "ref_batch": ref_batch,
        "recipe": ref_cfg.recipe if ref_cfg.recipe in set(recipe_names()) else "goyal2017_fashion_mnist",
        "n_train": train_images(ref_cfg, val_size=val_size),
        "val_size": val_size,
    }


def _check_request(batch_sizes, tolerance, lr_multipliers, seeds, parallel, max_doublings, max_widenings) -> None:
    """Raises BranchError for arguments :func:`run_branches` cannot run with."""
    if len(batch_sizes) < 2 or any(b < 1 for b in batch_sizes):
        raise BranchError(f"--batch-sizes {batch_sizes}: give 2 or more positive global batch sizes")
    if not 0 < tolerance < 1:
        raise BranchError(f"--tolerance {tolerance}: a fraction in (0, 1)")
    if not lr_multipliers or any(not (m > 0 and math.isfinite(m)) for m in lr_multipliers):
        raise BranchError(f"--lr-multipliers {list(lr_multipliers)}: give one or more positive numbers")
    if not seeds or len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
        raise BranchError(f"--seeds {list(seeds)}: give one or more distinct seeds >= 0")
    if parallel < 1:
        raise BranchError(f"--parallel {parallel}: give 1 or more branches at once")
    if max_doublings < 0 or max_widenings < 0:
        raise BranchError(f"--max-doublings {max_doublings} / --max-widenings {max_widenings}: give >= 0 and >= 0")


def _reference_config(reference: Path, overrides, trust_plugins: bool):
    """The reference run's config (its ``config.json``), a plugin only it names refused unless trusted.

    Raises:
        BranchError: no or no readable ``config.json``.
        ConfigError: a plugin named only by the file (:func:`largebatch.registry.refuse_plugins_named_by_file`).
    """
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
    return ref_cfg


class Branching:
    """The branches of one ``critical-batch`` command: each one's config, run directory and run, the
    LR grid and the budgets of one batch as plans for :class:`~largebatch.study.branch_runs.Driver`,
    the checkpoint's own loss, and the budget loop of each branch point."""

    def __init__(self, s: BranchSettings) -> None:
        self.s = s
        self.threads = max(1, (os.cpu_count() or 1) // (s.parallel * s.nproc))
        self.driver = Driver(parallel=s.parallel, run_dir_of=self.run_dir_of, start=self.start, finish=self.finish)
        self.started: dict[Path, object] = {}  # run directory -> the config its branch was started with

    def lr_of(self, p: BranchPoint, b: int, multiplier) -> float:
        """The peak LR of a branch: ``multiplier`` times the linear rule's, or the reference's own (None)."""
        return p.lr if multiplier is None else p.lr * multiplier * b / self.s.ref_batch

    def config_of(self, p: BranchPoint, b: int, multiplier, budget: int, seed: int):
        """The config of one branch (the user's ``--set`` on top of the branch's own settings).

        Raises:
            BranchError: the config is refused (naming the step and batch).
        """
        s = self.s
        items = branch_overrides(s.n_train, p.checkpoint, b, self.lr_of(p, b, multiplier), budget, s.val_size, seed)
        try:
            cfg = apply_overrides(s.ref_cfg, [*items, *s.overrides])
            resolve_stages(cfg, s.nproc)
        except ConfigError as err:
            raise BranchError(f"step {p.step}, batch {b}: {err}") from None
        return cfg

    def run_dir_of(self, p: BranchPoint, b: int, multiplier, budget: int, seed: int) -> Path:
        if multiplier is not None and abs(multiplier * b / self.s.ref_batch - 1) < 1e-9:
            multiplier = None  # the grid's multiple that is the reference's own LR: one run for both
        # "d2z": decayed to zero (the constant-LR design that came before wrote budget<N>/; never mixed)
        return self.s.out / f"step{p.step:08d}" / f"d2z_budget{budget}" / f"b{b:06d}_{lr_tag(multiplier)}_s{seed}"

    def start(self, job: tuple) -> TrainProcess:
        """Start one branch, its log beside its run directory (a branch stopped part way goes on)."""
        run_dir = self.run_dir_of(*job)
        self.started[run_dir] = self.config_of(*job)
        return start_train(
            self.started[run_dir],
            run_dir,
            nproc=self.s.nproc,
            log=run_dir.parent / f"{run_dir.name}.log",
            recipe=self.s.recipe,
            report_divergence=True,
            threads_per_worker=self.threads if self.s.parallel > 1 else None,
        )

    def finish(self, job: tuple, process: TrainProcess) -> None:
        """A branch ended: a diverged one gets a ``summary.json`` saying so.

        Raises:
            RuntimeError: it failed other than by diverging.
        """
        p, b, multiplier, _, seed = job
        run_dir = self.run_dir_of(*job)
        try:
            summary = process.outcome()
        except RunFailed as err:
            raise RuntimeError(
                f"branch step {p.step} batch {b} LR {lr_tag(multiplier)} seed {seed} failed (exit {err.returncode}); "
                f"log {err.log}:\n{err.output[-2000:]}\nfinished branches are kept: the same command continues"
            ) from None
        if summary.diverged:
            summary.write(run_dir)
        self.s.say(
            f"step {p.step} batch {b} LR {lr_tag(multiplier)} ({self.started[run_dir].optim.base_lr:.4g}) seed {seed}: "
            f"lowest val loss {'diverged' if summary.diverged else _val_loss_at(run_dir)}"
        )

    def grid(self, p: BranchPoint, b: int, budget: int):
        """Plan (for :class:`~largebatch.study.branch_runs.Driver`) of one batch's LR grid on the first
        seed, widened at an edge; returns {lr tag: {"multiplier", "lr", "runs": {seed: run dir}}}."""
        s = self.s
        mults = sorted(set(s.lr_multipliers))
        cells: dict = {}
        for _ in range(s.max_widenings + 1):
            for m in [None, *mults]:
                if m is None and b == s.ref_batch and 1.0 in mults:
                    continue  # at the reference batch the linear rule's x1 is the reference's own LR
                if lr_tag(m) not in cells:
                    cells[lr_tag(m)] = {"multiplier": m, "lr": self.lr_of(p, b, m), "runs": {}}
            new = [t for t, c in cells.items() if not c["runs"]]  # this round's LRs, side by side
            dirs = yield [(p, b, cells[t]["multiplier"], budget, s.seeds[0]) for t in new]
            for t, d in zip(new, dirs):
                cells[t]["runs"][s.seeds[0]] = d
            final = {
                t: _mean_lowest(c["runs"]) for t, c in cells.items() if c["multiplier"] is not None
            }  # inf: diverged
            best = min(final, key=final.get)
            if not math.isfinite(final[best]):
                break
            if cells[best]["multiplier"] == mults[0]:
                mults.insert(0, mults[0] / 2)
            elif cells[best]["multiplier"] == mults[-1]:
                mults.append(mults[-1] * 2)
            else:
                break
        return cells

    def plan(self, p: BranchPoint, b: int, budget: int):
        """Plan (for :class:`~largebatch.study.branch_runs.Driver`) of one batch: the LR grid on the
        first seed at ``DECAY_GRID_FRACTION`` of the budget, then every budget of
        :data:`DECAY_BUDGET_FRACTIONS` at the LR that won, on every seed. Returns {"grid": the grid's
        cells, "chosen": its winning tag or None when every LR diverged, "runs": {seed: {budget: run dir}}}."""
        cells = yield from self.grid(p, b, int(budget * DECAY_GRID_FRACTION))
        chosen = _best_cell(cells)
        runs: dict = {x: {} for x in self.s.seeds}
        if chosen is not None:
            m = cells[chosen]["multiplier"]
            jobs = [(p, b, m, e, x) for x in self.s.seeds for e in decay_budgets(budget)]
            dirs = yield jobs
            for (_, _, _, e, x), d in zip(jobs, dirs):
                runs[x][e] = d
        return {"grid": cells, "chosen": chosen, "runs": runs}

    def checkpoint_loss(self, p: BranchPoint, b: int) -> float:
        """The checkpoint's validation loss, its BN statistics recomputed as every branch's are: one
        step of batch ``b`` at an LR of 1e-30 (the weights do not move), evaluated after it."""
        run_dir = self.s.out / f"step{p.step:08d}" / "checkpoint_eval"
        if not (run_dir / "summary.json").is_file():
            cfg = apply_overrides(
                self.config_of(p, b, None, b, self.s.seeds[0]), ["optim.base_lr=1e-30", "train.val_at_steps=[1]"]
            )
            try:
                run_train(cfg, run_dir, nproc=self.s.nproc, recipe=self.s.recipe, resume=False)
            except RunFailed as err:
                raise RuntimeError(
                    f"evaluating the checkpoint of step {p.step} failed:\n{err.output[-2000:]}"
                ) from None
        loss = _val_loss_at(run_dir)
        if loss is None:
            raise RuntimeError(f"{run_dir}: no validation loss recorded")
        return loss

    def run(self, points, batch_sizes, budget_images: int, tolerance, min_reduction, max_doublings) -> dict:
        """Every point's budget loop and branches; the report is written after each point (a study of
        hours shows what it has while the next point runs)."""
        out, results, base_loss, report = self.s.out, {}, {}, {}
        for p in points:
            base_loss[p.step] = self.checkpoint_loss(p, min(batch_sizes))
            results[p.step] = self.point(p, batch_sizes, budget_images, base_loss[p.step], min_reduction, max_doublings)
            done = [q for q in points if q.step in results]
            report = _report(
                done, results, base_loss, batch_sizes, tolerance, self.s.ref_batch, min_reduction, self.s.seeds
            )
            (out / "critical_batch.json").write_text(json.dumps(report, indent=1) + "\n")
            (out / "critical_batch.md").write_text(report_text(report) + "\n")
        return report

    def point(self, p: BranchPoint, batch_sizes, budget: int, base: float, min_reduction, max_doublings) -> tuple:
        """One branch point: the smallest batch's budget doubled until it reduces the checkpoint's loss by
        ``min_reduction`` (:func:`budget_verdict`), then every other batch's plan at that budget, side by
        side. Returns (budget, {batch: its plan's result})."""
        smallest = min(batch_sizes)
        for doubling in range(max_doublings + 1):
            (cells,) = self.driver.drive([self.plan(p, smallest, budget)])
            reduction = base - _decay_final(cells, budget)
            verdict = budget_verdict(reduction, base, min_reduction, doubling, max_doublings)
            if verdict == "hopeless":
                self.s.say(
                    f"step {p.step}: the checkpoint's loss {base:.4f} is below {min_reduction}: no budget "
                    "can reduce it that much; not resolved, the budget is not doubled"
                )
            if verdict != "double":
                break
            self.s.say(
                f"step {p.step}: the smallest batch reduced the loss by {reduction:.3f} < {min_reduction}; budget x2"
            )
            budget *= 2
        per_batch = {smallest: cells}
        others = sorted(set(batch_sizes) - {smallest})  # every batch's grid at once: the slots stay full
        per_batch.update(zip(others, self.driver.drive([self.plan(p, b, budget) for b in others])))
        return budget, per_batch
