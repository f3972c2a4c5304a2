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
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from largebatch.config import ConfigError, apply_overrides, config_from_dict
from largebatch.plan import resolve_stages
from largebatch.recipes import recipe_names
from largebatch.registry import refuse_plugins_named_by_file, set_keys
from largebatch.study.advise import read_noise_scale
from largebatch.study.noise_probe import run_level
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


LR_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0)
"""Default multiples of the linear rule's LR tried at every batch (plus the reference's LR)."""
MAX_WIDENINGS = 2
DECAY_BUDGET_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
"""The budgets of the decay design, as fractions of ``budget_images``: the curve of annealed loss
against images, 8x in images from its first point to its last."""
DECAY_GRID_FRACTION = 0.5
"""The budget (fraction of ``budget_images``) at which the decay design's LR grid runs: the middle
of the curve in log images, so that the LR it picks is off by as little at the shortest budget
(which prefers a higher peak LR) as at the longest."""


def decay_budgets(budget_images: int) -> list[int]:
    """The images of each batch's branches for a full budget of ``budget_images``
    (:data:`DECAY_BUDGET_FRACTIONS` of it)."""
    return [int(budget_images * f) for f in DECAY_BUDGET_FRACTIONS]


BEFORE_FIRST = "before_first_budget"
"""The report's images for a level a decay curve was already below at its shortest budget."""
DECAY_LEVEL_FRACTIONS = (0.25, 0.5, 0.75)
"""Loss levels: fractions of the way from the smallest batch's loss at its shortest budget down to
its loss at the full budget (both the seeds' mean). Not 0: the shortest budget's own loss lies below
about half of the seeds' curves at their first point by construction, so most batches' crossings
there are not resolved and the few that are decide the level alone."""
PRECISE_BN_IMAGES = 2048
"""Training images over which each evaluation's BN statistics are recomputed (precise BN)."""


def lr_tag(multiplier: float | None) -> str:
    """Directory tag of an LR of the grid: ``ref`` (the reference's LR unscaled) or ``x<multiple>``."""
    return "ref" if multiplier is None else f"x{multiplier:g}"


def images_to_level_log(curve: list[tuple[float, float]], level: float) -> float | None:
    """The images at which ``curve`` ((images, validation loss) points at increasing images > 0, one
    per budget of the decay design) first reaches ``level``, interpolated linearly in log images
    (annealed loss falls about linearly in log budget); None when never reached, NaN when already
    below the level at the first point (reached at fewer images than the curve resolves)."""
    if not curve:
        return None
    if curve[0][1] <= level:
        return float(curve[0][0]) if curve[0][1] == level else math.nan
    for (e0, l0), (e1, l1) in zip(curve, curve[1:]):
        if l1 == level:
            return float(e1)
        if l1 < level:
            f = (l0 - level) / (l0 - l1)
            return math.exp(math.log(e0) + f * (math.log(e1) - math.log(e0)))
    return None


def fit_b_noise_levels(observations: list[tuple[Hashable, float, float | None]], budget_images: float) -> float | None:
    """B_noise of E(B) = E_min,l (1 + B / B_noise) fitted jointly over loss levels l, one E_min per
    level and one B_noise for all (McCandlish et al. 2018, eq. 2.11), by least squares on log E.

    ``observations``: (level key, batch B, images E to reach the level, or None when the branch
    never reached it within ``budget_images``). A crossing within the first two steps (E < 2 B) is
    not resolved by the branch and is left out; one never reached counts only if the fit puts it
    below the budget (censored). B_noise is searched on a log grid from 1 to 10^7 images and infinity
    (perfect scaling over the range). None without two batches of resolved crossings."""
    seen = [(lv, b, e) for lv, b, e in observations if e is None or e >= 2 * b]
    resolved = [(lv, b, math.log(e)) for lv, b, e in seen if e is not None and e > 0]
    if len({b for _, b, _ in resolved}) < 2:
        return None
    censored = [(lv, b) for lv, b, e in seen if e is None]
    levels = sorted({lv for lv, _, _ in resolved})
    log_budget = math.log(budget_images)
    best = None
    for b_noise in [10 ** (k / 50) for k in range(0, 351)] + [math.inf]:
        f = (lambda b: 0.0) if math.isinf(b_noise) else (lambda b, bn=b_noise: math.log1p(b / bn))
        e_min = {
            lv: sum(y - f(b) for l2, b, y in resolved if l2 == lv) / sum(1 for l2, _, _ in resolved if l2 == lv)
            for lv in levels
        }
        sse = sum((y - e_min[lv] - f(b)) ** 2 for lv, b, y in resolved)
        sse += sum(max(0.0, log_budget - e_min[lv] - f(b)) ** 2 for lv, b in censored if lv in e_min)
        if best is None or sse < best[0] - 1e-12:
            best = (sse, b_noise)
    return best[1]


def clock_b_noise(
    smallest_batch: int,
    smallest_curve: list[tuple[float, float]],
    budget_images: float,
    final_losses: dict,
) -> tuple[float | None, dict]:
    """B_noise read with the smallest batch's loss curve as the clock: for each larger batch B, the
    images E_0 the smallest batch B_0 needed to reach B's final loss L_B (interpolated on
    ``smallest_curve``, (images, annealed loss) points at increasing budgets, by
    :func:`images_to_level_log`) give r = D / E_0, the images B needs for what B_0 does with E_0;
    eq. 2.11 says r = (1 + B / B_noise) / (1 + B_0 / B_noise). Returns (B_noise of a least-squares
    fit of log r over the batches, {B: the B_noise of B alone}); r <= 1 reads as infinite (no cost
    over the smallest batch); a final loss the smallest batch never reached within its budget, or
    was already below at its shortest budget, is left out. The final losses are the least noisy
    numbers a branch gives; the level crossings of :func:`fit_b_noise_levels` are interpolated
    between budgets."""
    ratios = {}
    for b, loss in final_losses.items():
        if b == smallest_batch or loss is None or not math.isfinite(loss):
            continue
        e0 = images_to_level_log(smallest_curve, loss)
        if e0 is None or not e0 > 0:
            continue
        ratios[b] = budget_images / e0
    each = {
        b: (math.inf if r <= 1 or b <= r * smallest_batch else (b - r * smallest_batch) / (r - 1))
        for b, r in ratios.items()
    }
    if not ratios:
        return None, each
    best = None
    for b_noise in [10 ** (k / 50) for k in range(0, 351)] + [math.inf]:
        sse = 0.0
        for b, r in ratios.items():
            model = 1.0 if math.isinf(b_noise) else (1 + b / b_noise) / (1 + smallest_batch / b_noise)
            sse += (math.log(r) - math.log(model)) ** 2
        if best is None or sse < best[0] - 1e-12:
            best = (sse, b_noise)
    return best[1], each


def tolerance_critical(
    batch_sizes: list[int], images: list[float | None], tolerance: float
) -> tuple[float, bool] | None:
    """(largest B whose images to the level are at most ``1 + tolerance`` times the smallest batch's,
    interpolated on log2 B; whether every batch passed, a lower bound). A batch that never reached
    the level fails. None when the smallest batch did not reach it."""
    pts = sorted(zip(batch_sizes, images))
    ref = pts[0][1]
    if ref is None:
        return None
    limit = (1 + tolerance) * ref
    for (b0, e0), (b1, e1) in zip(pts, pts[1:]):
        if e1 is None or e1 > limit:
            if e1 is None or e1 == e0:
                return float(b0), False
            f = (limit - e0) / (e1 - e0)
            return 2 ** (math.log2(b0) + f * (math.log2(b1) - math.log2(b0))), False
    return float(pts[-1][0]), True


def run_level_b_noise(
    points: list[tuple[int, float]], reference_batch: int, start: float | None = None, end: float | None = None
) -> float | None:
    """B_noise measured at two or more steps, averaged over the steps from ``start`` to ``end``
    (default: the first and the last point) as eq. 2.11 weighs them: log B linear in log step
    between the points, held at the end points' values beyond them."""
    pts = sorted((s, b) for s, b in points if s > 0 and b is not None and 0 < b < math.inf)
    if len(pts) < 2:
        return None
    logs = [(math.log(s), math.log(b)) for s, b in pts]

    def b_at(step: float) -> float:
        x = math.log(max(step, 1.0))
        if x <= logs[0][0]:
            return math.exp(logs[0][1])
        for (x0, y0), (x1, y1) in zip(logs, logs[1:]):
            if x <= x1:
                return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
        return math.exp(logs[-1][1])

    lo = pts[0][0] if start is None else start
    hi = pts[-1][0] if end is None else end
    return run_level(b_at, lo, hi, reference_batch)


def _branch_overrides(
    n_train: int,
    point: BranchPoint,
    batch: int,
    lr: float,
    budget_images: int,
    val_size: int,
    seed: int = 0,
) -> list[str]:
    """The ``--set`` items of one branch: ``lr`` decaying linearly to 0 over ``budget_images // batch``
    steps from ``point``'s weights, one evaluation (with precise BN) at the end."""
    epochs = max(1, math.ceil(budget_images / max(1, n_train)))
    steps = max(1, budget_images // batch)
    steps_per_epoch = max(1, n_train // batch)  # the drop-last loader's (largebatch.schedules.lr)
    return [
        f"train.seed={seed}",
        "train.val_every_steps=0",
        f"train.val_at_steps=[{steps}]",
        f"train.init_from={point.checkpoint}",
        # precise BN before the evaluation: the checkpoint's moving averages lag weights that moved
        # fast at the reference's LR, and a branch's own lag its last steps; either would be read as loss
        "train.bn.statistics=precise",
        f"train.bn.precise_batches={max(1, math.ceil(PRECISE_BN_IMAGES / batch))}",
        f"train.global_batch_size={batch}",
        f"train.epochs={epochs}",
        f"train.stop_after_images={budget_images}",
        "train.batch_schedule=[]",
        f"optim.base_lr={lr}",
        f"optim.base_batch_size={batch}",
        "optim.lr_scaling=linear",
        "schedule.name=poly",
        "schedule.poly.power=1",
        "schedule.end_lr=0",
        f"schedule.decay_end_epochs={steps / steps_per_epoch!r}",
        "schedule.warmup_epochs=0",
        f"data.val_size={val_size}",
        f"train.eval_every_epochs={epochs}",
        f"train.checkpoint_every_epochs={epochs}",
        "train.checkpoint_every_steps=0",
        "train.checkpoint_every_minutes=0",
        "train.stop_at_val_top1=0",
        "train.val_target_top1=0",
        "train.keep_checkpoints=1",
    ]


def _val_loss_at(run_dir: Path) -> float | None:
    """The lowest validation loss over a run's evaluations (None without any): a branch's one
    evaluation, at the end of its decay."""
    evals = [r["val_loss"] for r in read_metrics(run_dir) if r.get("kind") == "eval" and r.get("val_loss") is not None]
    finite = [v for v in evals if math.isfinite(v)]
    return min(finite) if finite else None


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
    smallest_share = min(DECAY_BUDGET_FRACTIONS)
    if budget_images * smallest_share < max(batch_sizes):
        raise BranchError(
            f"--budget-images {budget_images}: its smallest branch ({smallest_share:g} of it) is less than one step "
            f"at {max(batch_sizes)}; give at least {math.ceil(4 * max(batch_sizes) / smallest_share)} "
            "(4 steps at the largest batch)"
        )
    recipe = ref_cfg.recipe if ref_cfg.recipe in _recipes() else "goyal2017_fashion_mnist"

    def config_of(p: BranchPoint, b: int, multiplier, budget: int, seed: int):
        lr = p.lr if multiplier is None else p.lr * multiplier * b / ref_batch
        items = _branch_overrides(n_train, p, b, lr, budget, val_size, seed)
        try:
            cfg = apply_overrides(ref_cfg, [*items, *overrides])
            resolve_stages(cfg, nproc)
        except ConfigError as err:
            raise BranchError(f"step {p.step}, batch {b}: {err}") from None
        return cfg

    for p in points:  # every branch's config checked before the first one runs
        for b in batch_sizes:
            config_of(p, b, lr_multipliers[0], budget_images, seeds[0])

    def run_dir_of(p: BranchPoint, b: int, multiplier, budget: int, seed: int) -> Path:
        if multiplier is not None and abs(multiplier * b / ref_batch - 1) < 1e-9:
            multiplier = None  # the grid's multiple that is the reference's own LR: one run for both
        # "d2z": decayed to zero (the constant-LR design that came before wrote budget<N>/; never mixed)
        return out / f"step{p.step:08d}" / f"d2z_budget{budget}" / f"b{b:06d}_{lr_tag(multiplier)}_s{seed}"

    threads = max(1, (os.cpu_count() or 1) // (parallel * nproc))

    def start(p: BranchPoint, b: int, multiplier, budget: int, seed: int):
        run_dir = run_dir_of(p, b, multiplier, budget, seed)
        cfg = config_of(p, b, multiplier, budget, seed)
        items = _overrides_of(cfg) + ([f"train.threads_per_worker={threads}"] if parallel > 1 else [])
        cmd = [sys.executable, "-m", "largebatch", "train", "--nproc", str(nproc), "--out", str(run_dir)]
        cmd += ["--recipe", recipe, *sum((["--set", item] for item in items), [])]
        if (run_dir / "checkpoints").is_dir():  # stopped part way (SIGTERM checkpoints): it goes on
            cmd += ["--resume", "auto"]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path = run_dir.parent / f"{run_dir.name}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        return proc, log_path, cfg

    def finish(job: tuple, proc, log_path: Path, cfg) -> None:
        p, b, multiplier, _, seed = job
        run_dir = run_dir_of(*job)
        tail = log_path.read_text()[-2000:]
        if proc.returncode != 0 and "training loss is" not in tail and "nonfinite" not in tail:
            raise RuntimeError(
                f"branch step {p.step} batch {b} LR {lr_tag(multiplier)} seed {seed} failed (exit {proc.returncode}); "
                f"log {log_path}:\n{tail}\nfinished branches are kept: the same command continues"
            )
        if proc.returncode != 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "summary.json").write_text(json.dumps({"diverged": True, "log": str(log_path)}) + "\n")
        say(
            f"step {p.step} batch {b} LR {lr_tag(multiplier)} ({cfg.optim.base_lr:.4g}) seed {seed}: lowest val loss "
            f"{_val_loss_at(run_dir) if proc.returncode == 0 else 'diverged'}"
        )

    def drive(plans: list) -> list:
        """Run generator plans side by side: each yields a list of branch jobs (point, batch, LR
        multiplier, budget, seed) and is sent back their run directories once all of them finished;
        the branches of all plans run ``parallel`` at once. Returns each plan's return value."""
        results: list = [None] * len(plans)
        waiting: dict = {}  # plan index -> (its jobs, those not finished)
        queue: list = []

        def advance(k: int, sent) -> None:
            while True:
                try:
                    jobs = plans[k].send(sent)
                except StopIteration as stop:
                    results[k] = stop.value
                    return
                todo = list(  # once per run directory: two LRs of the grid may be one run
                    {
                        run_dir_of(*job): job for job in jobs if not (run_dir_of(*job) / "summary.json").is_file()
                    }.values()
                )
                if todo:
                    waiting[k] = (jobs, set(todo))
                    queue.extend((k, job) for job in todo)
                    return
                sent = [run_dir_of(*job) for job in jobs]

        for k in range(len(plans)):
            advance(k, None)
        running: list = []
        try:
            while queue or running:
                while queue and len(running) < parallel:
                    k, job = queue.pop(0)
                    running.append((k, job, *start(*job)))
                done = next((r for r in running if r[2].poll() is not None), None)
                if done is None:
                    time.sleep(0.2)
                    continue
                running.remove(done)
                k, job, proc, log_path, cfg = done
                finish(job, proc, log_path, cfg)
                jobs, left = waiting[k]
                left.discard(job)
                if not left:
                    del waiting[k]
                    advance(k, [run_dir_of(*x) for x in jobs])
        finally:
            for _, _, proc, *_ in running:  # an error or a signal: the others stop too (a rerun resumes)
                proc.terminate()
                proc.wait()
        return results

    def grid(p: BranchPoint, b: int, budget: int):
        """Plan (for :func:`drive`) of one batch's LR grid on the first seed, widened at an edge;
        returns {lr tag: {"multiplier", "lr", "runs": {seed: run dir}}}."""
        mults = sorted(set(lr_multipliers))
        cells: dict = {}
        for _ in range(max_widenings + 1):
            for m in [None, *mults]:
                if m is None and b == ref_batch and 1.0 in mults:
                    continue  # at the reference batch the linear rule's x1 is the reference's own LR
                if lr_tag(m) not in cells:
                    lr = p.lr if m is None else p.lr * m * b / ref_batch
                    cells[lr_tag(m)] = {"multiplier": m, "lr": lr, "runs": {}}
            new = [t for t, c in cells.items() if not c["runs"]]  # this round's LRs, side by side
            dirs = yield [(p, b, cells[t]["multiplier"], budget, seeds[0]) for t in new]
            for t, d in zip(new, dirs):
                cells[t]["runs"][seeds[0]] = d
            final = {
                t: _mean_lowest(c["runs"]) for t, c in cells.items() if c["multiplier"] is not None
            }  # inf when diverged
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

    def plan(p: BranchPoint, b: int, budget: int):
        """Plan (for :func:`drive`) of one batch: the LR grid on the first seed at
        ``DECAY_GRID_FRACTION`` of the budget, then every budget of :data:`DECAY_BUDGET_FRACTIONS` at
        the LR that won, on every seed. Returns {"grid": the grid's cells, "chosen": its winning tag or
        None when every LR diverged, "runs": {seed: {budget: run dir}}}."""
        cells = yield from grid(p, b, int(budget * DECAY_GRID_FRACTION))
        chosen = _best_cell(cells)
        runs: dict = {x: {} for x in seeds}
        if chosen is not None:
            m = cells[chosen]["multiplier"]
            jobs = [(p, b, m, e, x) for x in seeds for e in decay_budgets(budget)]
            dirs = yield jobs
            for (_, _, _, e, x), d in zip(jobs, dirs):
                runs[x][e] = d
        return {"grid": cells, "chosen": chosen, "runs": runs}

    def checkpoint_loss(p: BranchPoint, b: int) -> float:
        """The checkpoint's validation loss, its BN statistics recomputed as every branch's are: one
        step of batch ``b`` at an LR of 1e-30 (the weights do not move), evaluated after it."""
        run_dir = out / f"step{p.step:08d}" / "checkpoint_eval"
        if not (run_dir / "summary.json").is_file():
            cfg = config_of(p, b, None, b, seeds[0])
            items = [*_overrides_of(cfg), "optim.base_lr=1e-30", "train.val_at_steps=[1]"]
            cmd = [sys.executable, "-m", "largebatch", "train", "--nproc", str(nproc), "--out", str(run_dir)]
            cmd += ["--recipe", recipe, *sum((["--set", item] for item in items), [])]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"evaluating the checkpoint of step {p.step} failed:\n{proc.stderr[-2000:]}")
        loss = _val_loss_at(run_dir)
        if loss is None:
            raise RuntimeError(f"{run_dir}: no validation loss recorded")
        return loss

    results = {}
    base_loss = {}
    for p in points:
        budget, smallest = budget_images, min(batch_sizes)
        base_loss[p.step] = checkpoint_loss(p, smallest)
        for doubling in range(max_doublings + 1):
            (cells,) = drive([plan(p, smallest, budget)])
            reduction = base_loss[p.step] - _decay_final(cells, budget)
            verdict = budget_verdict(reduction, base_loss[p.step], min_reduction, doubling, max_doublings)
            if verdict == "hopeless":
                say(
                    f"step {p.step}: the checkpoint's loss {base_loss[p.step]:.4f} is below {min_reduction}: no budget "
                    "can reduce it that much; not resolved, the budget is not doubled"
                )
            if verdict != "double":
                break
            say(f"step {p.step}: the smallest batch reduced the loss by {reduction:.3f} < {min_reduction}; budget x2")
            budget *= 2
        per_batch = {smallest: cells}
        others = sorted(set(batch_sizes) - {smallest})  # every batch's grid at once: the slots stay full
        per_batch.update(zip(others, drive([plan(p, b, budget) for b in others])))
        results[p.step] = (budget, per_batch)
        # written after every point: a study of hours shows what it has while the next point runs
        done = [q for q in points if q.step in results]
        report = _report(done, results, base_loss, batch_sizes, tolerance, ref_batch, min_reduction, seeds)
        (out / "critical_batch.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "critical_batch.md").write_text(report_text(report) + "\n")
    return report


def budget_verdict(
    reduction: float, checkpoint_loss: float, min_reduction: float, doubling: int, max_doublings: int
) -> str:
    """What the budget loop does after the smallest batch's branches at one budget: ``"enough"``
    (the reduction reached ``min_reduction``), ``"double"`` (it did not, and doublings are left),
    ``"exhausted"`` (it did not after ``max_doublings``) or ``"hopeless"`` (the checkpoint's loss is
    itself below ``min_reduction``: no budget can reduce it that much, so no doubling is spent)."""
    if reduction >= min_reduction:
        return "enough"
    if checkpoint_loss < min_reduction:
        return "hopeless"
    return "double" if doubling < max_doublings else "exhausted"


def _lowest(run: Path) -> float:
    """Lowest validation loss of one branch (:func:`_val_loss_at`); inf when it diverged or has none."""
    loss = None if json.loads((run / "summary.json").read_text()).get("diverged") else _val_loss_at(run)
    return loss if loss is not None and math.isfinite(loss) else math.inf


def _mean_lowest(runs: dict[int, Path]) -> float:
    """Mean over the seeds' runs of their lowest validation loss ({seed: run dir}); inf when any diverged."""
    losses = [_lowest(r) for r in runs.values()]
    return sum(losses) / len(losses) if losses else math.inf


def _best_cell(cells: dict) -> str | None:
    """The LR tag whose first-seed branch ended lowest (the unscaled LR included); None if all diverged."""
    first = {t: _lowest(next(iter(c["runs"].values()))) for t, c in cells.items()}
    best = min(first, key=first.get)
    return best if math.isfinite(first[best]) else None


def _recipes() -> set[str]:

    return set(recipe_names())


def _decay_curve(runs: dict[int, Path]) -> list[tuple[float, float]]:
    """(budget images, final validation loss) of one seed's decay branches ({budget: run dir}), the
    diverged and unfinished left out."""
    out = []
    for budget, run in sorted(runs.items()):
        loss = _lowest(run)  # one evaluation, at the end of the decay
        if math.isfinite(loss):
            out.append((float(budget), loss))
    return out


def _decay_final(plan: dict, budget: int) -> float:
    """The seeds' mean final loss at the full ``budget`` of one batch's decay plan; inf if any diverged."""
    losses = [_lowest(r[budget]) if budget in r else math.inf for r in plan["runs"].values()]
    return sum(losses) / len(losses) if losses else math.inf


def _report(points, results, base_loss: dict, batch_sizes, tolerance, ref_batch, min_reduction, seeds) -> dict:
    """The report: per point, the annealed-loss curves, the images each batch
    needed for each loss level (log-interpolated between budgets), the joint fit of eq. 2.11, the
    clock reading and the tolerance-based critical batch."""
    rows = []
    for p in points:
        budget, per_batch = results[p.step]
        base = base_loss[p.step]
        smallest = min(per_batch)
        curves = {b: {x: _decay_curve(plan["runs"][x]) for x in seeds} for b, plan in per_batch.items()}
        final = {b: _decay_final(plan, budget) for b, plan in per_batch.items()}
        reduction = base - final[smallest]
        small = {}  # the smallest batch's seed-mean curve
        for x in seeds:
            for e, loss in curves[smallest][x]:
                small.setdefault(e, []).append(loss)
        small_curve = sorted((e, sum(v) / len(v)) for e, v in small.items() if len(v) == len(seeds))
        levels = {}
        if len(small_curve) >= 2 and small_curve[0][1] > small_curve[-1][1]:
            top, bottom = small_curve[0][1], small_curve[-1][1]
            for f in DECAY_LEVEL_FRACTIONS:
                level = top - f * (top - bottom)
                e = {b: [images_to_level_log(curves[b][x], level) for x in seeds] for b in sorted(per_batch)}
                images = {
                    str(b): [BEFORE_FIRST if x is not None and math.isnan(x) else x for x in v] for b, v in e.items()
                }
                levels[f"{f:g}"] = {"val_loss": level, "images": images}

        def observations(seed_index: int | None, levels: dict = levels) -> list:
            # one E_min per level and seed: a seed's curves can sit lower at every batch (its own data
            # order and precise-BN sample), which one E_min per level would read as a batch effect
            return [
                ((i, k), int(b), e)
                for i, lv in enumerate(levels.values())
                for b, per_seed in lv["images"].items()
                for k, e in enumerate(per_seed)
                if (seed_index is None or k == seed_index) and e != BEFORE_FIRST
            ]

        joint = fit_b_noise_levels(observations(None), budget) if levels and reduction > 0 else None
        per_seed_joint = [fit_b_noise_levels(observations(k), budget) for k in range(len(seeds))] if levels else []
        spread = [v for v in [joint, *per_seed_joint] if v is not None]
        resolved = reduction >= min_reduction and joint is not None
        middle = levels.get("0.5")
        crit = None
        if middle is not None:
            mean_images = [
                (sum(v) / len(v) if all(x is not None and x != BEFORE_FIRST for x in v) else None)
                for v in (middle["images"][str(b)] for b in sorted(per_batch))
            ]
            crit = tolerance_critical(sorted(per_batch), mean_images, tolerance)
        clock, clock_each = (
            clock_b_noise(
                smallest,
                small_curve,
                budget,
                {b: (v if math.isfinite(v) else None) for b, v in final.items()},
            )
            if len(small_curve) >= 2 and reduction > 0
            else (None, {})
        )
        branches = []
        for b, plan in sorted(per_batch.items()):
            branches.append(
                {
                    "batch": b,
                    "steps": budget // b,
                    "lrs": {
                        t: {
                            "multiplier": c["multiplier"],
                            "lr": c["lr"],
                            "val_loss_at_grid_budget": {
                                str(x): (loss if math.isfinite(loss) else None)
                                for x, loss in ((x, _lowest(r)) for x, r in c["runs"].items())
                            },
                        }
                        for t, c in plan["grid"].items()
                    },
                    "chosen_lr": plan["chosen"],
                    "val_loss_by_budget": {str(x): {str(int(e)): v for e, v in curves[b][x]} for x in seeds},
                    "best_val_loss": final[b] if math.isfinite(final[b]) else None,
                    "reduction": base - final[b] if math.isfinite(final[b]) else None,
                }
            )
        b_noise = joint if resolved else None
        rows.append(
            {
                "step": p.step,
                "checkpoint": str(p.checkpoint),
                "lr": p.lr,
                "val_loss_at_checkpoint": base,
                "budget_images": budget,
                "budgets_images": decay_budgets(budget),
                "grid_budget_images": int(budget * DECAY_GRID_FRACTION),
                "smallest_batch_reduction": reduction,
                "branches": branches,
                "levels": levels,
                "b_noise": b_noise,
                "b_noise_low": min(spread) if resolved and spread else None,
                "b_noise_high": max(spread) if resolved and spread else None,
                "critical_batch": crit[0] if resolved and crit else None,
                "critical_batch_is_lower_bound": bool(resolved and crit and crit[1]),
                "b_simple": p.b_simple,
                "ratio_b_simple_to_measured": (p.b_simple / b_noise) if (p.b_simple and b_noise) else None,
                "b_noise_clock": clock,
                "b_noise_clock_per_batch": {str(b): v for b, v in clock_each.items()},
            }
        )
    return {
        "branch_schedule": "decay",
        "reference_batch": ref_batch,
        "tolerance": tolerance,
        "min_reduction": min_reduction,
        "batch_sizes": sorted(batch_sizes),
        "seeds": list(seeds),
        "level_fractions": list(DECAY_LEVEL_FRACTIONS),
        "budget_fractions": list(DECAY_BUDGET_FRACTIONS),
        "points": rows,
        "run_level_b_noise": run_level_b_noise([(r["step"], r["b_noise"]) for r in rows], ref_batch),
    }


def _fmt(x: float | None, bound: bool = False) -> str:
    if x is None:
        return "not resolved"
    return "inf" if math.isinf(x) else f"{'>= ' if bound else ''}{x:,.0f}"


def report_text(report: dict) -> str:
    lines = [
        f"Critical batch by branching (Merrill et al. 2025), read with McCandlish et al. 2018 eq. 2.11: each branch "
        f"decays its LR linearly to 0 over its budget; per batch an LR grid around the linear rule from the "
        f"reference batch {report['reference_batch']} and the reference's own LR at "
        f"{DECAY_GRID_FRACTION:g} of the budget on seed {report['seeds'][0]}, then budgets of "
        f"{', '.join(f'{f:g}' for f in report['budget_fractions'])} of it at the winning LR on seeds "
        f"{report['seeds']}; images to reach loss levels between the smallest batch's shortest and longest "
        "budget's losses.",
        "B_noise: E(B) = E_min,level (1 + B/B_noise) fitted over all levels and seeds, one E_min per level and seed (range: each seed alone). "
        f"Tolerance-based: the largest batch needing at most {1 + report['tolerance']:.2g}x the smallest batch's "
        "images.",
        "",
        "| step | val loss there | budget (images) | "
        + " | ".join(f"B={b}" for b in report["batch_sizes"])
        + " | B_noise (range) | B_noise on the smallest batch's clock | tolerance-based critical batch | B_simple there "
        "| B_simple / B_noise |",
        "|---|---|---|" + "---|" * len(report["batch_sizes"]) + "---|---|---|---|---|",
    ]
    for r in report["points"]:
        cells = ["diverged" if e["reduction"] is None else f"{e['reduction']:+.3f}" for e in r["branches"]]
        b_noise = _fmt(r["b_noise"])
        if r["b_noise"] is not None:
            b_noise += f" ({_fmt(r['b_noise_low'])}-{_fmt(r['b_noise_high'])})"
        ratio = "" if r["ratio_b_simple_to_measured"] is None else f"{r['ratio_b_simple_to_measured']:.2f}"
        b_simple = "" if r["b_simple"] is None else f"{r['b_simple']:.0f}"
        lines.append(
            f"| {r['step']} | {r['val_loss_at_checkpoint']:.4f} | {r['budget_images']:,} | "
            + " | ".join(cells)
            + f" | {b_noise} | {_fmt(r.get('b_noise_clock'))} | "
            f"{_fmt(r['critical_batch'], r['critical_batch_is_lower_bound'])} | {b_simple} | {ratio} |"
        )
    lines.append("")
    lines.append(
        "Clock: the images batch B needed over those the smallest batch needed for the same loss (its curve "
        "read at B's final loss), turned into B_noise by eq. 2.11 and fitted over the batches. "
        "Cells: the validation loss reduction at the full budget (checkpoint minus the seeds' mean final loss at the "
        "winning LR; higher is better). Not resolved: the "
        f"smallest batch reduced the loss by less than {report.get('min_reduction', 0):g} nats even after the "
        "budget's doublings, or the fit had fewer than two batches; give a larger --budget-images."
    )
    if report.get("run_level_b_noise") is not None:
        lines.append(
            f"B_noise averaged over the steps between the first and the last point as eq. 2.11 weighs them: "
            f"{_fmt(report['run_level_b_noise'])} images (what `largebatch advise` predicts)."
        )
    return "\n".join(lines)
