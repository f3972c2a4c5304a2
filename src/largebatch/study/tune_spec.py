"""A tuned sweep as asked (:class:`TuneSpec`), its checks, and what it makes of each cell: the study's
name and protocol, each trial's run directory and config, and the run's length in steps. See
:mod:`largebatch.study.tune` for the protocol."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from largebatch.config import apply_overrides
from largebatch.plan import resolve_stages, train_images
from largebatch.study.methods import METHODS
from largebatch.study.search import search_space
from largebatch.study.sweep import SweepError, run_config

OBJECTIVES = ("steps", "accuracy")
PRUNERS = ("median", "halving", "none")


@dataclass
class TuneSpec:
    """A tuned sweep as asked on the command line."""

    out: Path
    methods: list[str]
    batch_sizes: list[int]
    epochs: int
    trials: int
    objective: str = "steps"
    target_val_top1: float = 90.0
    val_size: int = 5000
    evals_per_epoch: int = 4
    pruner: str = "median"
    storage: str = ""
    seeds: tuple[int, ...] = (0,)
    overrides: tuple[str, ...] = ()
    nproc: int = 1
    epochs_at: tuple[tuple[int, int], ...] = ()
    """(global batch, epochs) pairs that replace ``epochs`` at those batches: larger batches need more
    epochs to reach a target (Shallue et al. give every batch its own step budget)."""
    search_ranges: tuple[tuple[str, float, float], ...] = ()
    """(parameter, low, high) triples that replace those parameters' ranges in every method's search
    space (``SPACES``; e.g. ``base_lr``, the LR per 256 images, or ``one_minus_momentum``), on the
    scale the space searches them. A study keeps the ranges it was started with: new ranges go to a
    new storage (``largebatch study-report`` merges storages)."""
    search_budget: bool = False
    """Also search each trial's length (``budget_epochs``, integer, log scale from 1/8 of the cell's
    epochs to all of them), the schedule's warmup and decays scaled to it, warmup searched as a
    fraction of it. Shallue et al. 2018 (sec. 3.3) retune the decay schedule at every batch size:
    with a fixed length the steps to target fall on the schedule's decay points."""

    def epochs_for(self, batch: int) -> int:
        """Epochs of the runs at ``batch``."""
        return dict(self.epochs_at).get(batch, self.epochs)

    @property
    def range_overrides(self) -> dict[str, tuple[float, float]]:
        """``search_ranges`` as ``{parameter: (low, high)}``."""
        return {name: (low, high) for name, low, high in self.search_ranges}

    @property
    def base_batch(self) -> int:
        return min(self.batch_sizes)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"


def study_name(method: str, batch: int, spec: TuneSpec) -> str:
    return f"{method}-b{batch}-{spec.objective}-e{spec.epochs_for(batch)}"


def trial_dir(out: Path, method: str, batch: int, number: int) -> Path:
    return Path(out) / method / f"b{batch:06d}" / f"trial_{number:03d}"


def check_spec(spec: TuneSpec) -> None:
    """Raises SweepError for a tuned sweep that cannot run as asked (before any trial starts)."""
    if spec.objective not in OBJECTIVES:
        raise SweepError(f"--objective {spec.objective!r}: use one of {', '.join(OBJECTIVES)}")
    if spec.pruner not in PRUNERS:
        raise SweepError(f"--pruner {spec.pruner!r}: use one of {', '.join(PRUNERS)}")
    if spec.trials < 1:
        raise SweepError(f"--trials {spec.trials}: give at least 1")
    if spec.val_size < 1:
        raise SweepError(f"--val-size {spec.val_size}: tuning needs a validation split (e.g. 5000)")
    if not 0 < spec.target_val_top1 <= 100:
        raise SweepError(f"--target-val-top1 {spec.target_val_top1}: a percentage in (0, 100]")
    if spec.epochs < 1 or any(e < 1 for _, e in spec.epochs_at):
        raise SweepError("--epochs and every --epochs-at value must be at least 1")
    unknown = [m for m in spec.methods if m not in METHODS]
    if unknown:
        raise SweepError(f"method {unknown[0]!r} is unknown; accepted: {', '.join(METHODS)}")
    if spec.evals_per_epoch < 1:
        raise SweepError(f"--evals-per-epoch {spec.evals_per_epoch}: give at least 1")
    if spec.search_ranges:
        _check_search_ranges(spec)
    if spec.search_budget and spec.objective != "steps":
        raise SweepError("--search-budget searches the run's length: it goes with --objective steps, not equal epochs")


def _check_search_ranges(spec: TuneSpec) -> None:
    searched: set[str] = set()
    for method in spec.methods:
        searched |= set(search_space(method, spec, spec.base_batch))
    for name, low, high in spec.search_ranges:
        if not 0 <= low < high:
            raise SweepError(f"--search-range {name}={low:g},{high:g}: give LOW,HIGH with 0 <= LOW < HIGH")
        if name not in searched:
            raise SweepError(
                f"--search-range {name}: not a parameter these methods search; they search "
                f"{', '.join(sorted(searched))}"
            )


def trial_config(
    spec: TuneSpec, method: str, batch: int, params_overrides: list[str], seed: int = 0, epochs: int | None = None
):
    """The config of one trial: the method's recipe at ``batch`` and ``epochs`` (default: the cell's,
    ``spec.epochs_for(batch)``; its schedule scaled), the validation split, evaluations every
    1/evals_per_epoch epoch, the target, then the trial's hyperparameters.

    Raises:
        ConfigError: for an override the config refuses.
    """

    cfg = run_config(method, batch, seed, epochs or spec.epochs_for(batch), list(spec.overrides))
    n_train = train_images(cfg, val_size=spec.val_size)
    steps_per_epoch = max(1, n_train // cfg.train.global_batch_size)
    run = [
        f"data.val_size={spec.val_size}",
        f"train.val_every_steps={max(1, round(steps_per_epoch / spec.evals_per_epoch))}",
        "train.checkpoint_every_minutes=5",
    ]
    run.append(
        f"train.stop_at_val_top1={spec.target_val_top1}"
        if spec.objective == "steps"
        else f"train.val_target_top1={spec.target_val_top1}"
    )
    cfg = apply_overrides(cfg, [*run, *params_overrides])
    return dataclasses.replace(cfg, recipe=f"tune-{method}-b{batch}-s{seed}")


def total_steps_of(cfg, val_size: int, nproc: int) -> int:
    """Optimizer steps of the whole run (every batch stage's epochs, drop last)."""

    stages = resolve_stages(cfg, nproc)
    n = train_images(cfg, val_size=val_size)
    steps = 0
    for epoch in range(cfg.train.epochs):
        stage = [st for st in stages if st.start_epoch <= epoch][-1]
        steps += n // stage.plan.global_batch_size
    return steps


def protocol_of(spec: TuneSpec, batch: int) -> dict:
    """The settings a cell's trials were judged by, kept in its study's ``protocol`` attribute."""
    return {
        "objective": spec.objective,
        "epochs": spec.epochs_for(batch),
        "target_val_top1": spec.target_val_top1,
        "val_size": spec.val_size,
        "evals_per_epoch": spec.evals_per_epoch,
        "pruner": spec.pruner,
        "trials": spec.trials,
        "nproc": spec.nproc,
        "overrides": list(spec.overrides),
        "search_budget": spec.search_budget,
        "search_ranges": {name: [low, high] for name, low, high in spec.search_ranges},
    }
