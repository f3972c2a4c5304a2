"""``largebatch sweep --tune``: each (method, global batch) tuned on a validation split, with pruning.

The protocol of Shallue et al. 2018 ("Measuring the effects of data parallelism on neural network
training", sec. 3) and Nado et al. 2021 ("A large batch optimizer reality check", sec. 3): every
method gets its own search over its hyperparameters at every global batch size, trials are judged
on a validation split held out of the training set (``data.val_size``), never on the test set, and
the test top-1 of the chosen trial is what is reported. Goyal et al. 2017's method is the exception
the paper defines: its reference LR is tuned once, at the smallest batch of the sweep, and carried to
the other batches by the linear rule with gradual warmup (sec. 2.1-2.2); that carrying is what is
tested, so those cells run one trial. ``no_scaling`` and ``linear_no_warmup`` are its ablations,
at the same tuned LR.

Two objectives:

- ``steps`` (Shallue et al. sec. 3.2, Fig. 1): the fewest optimizer steps to reach a validation
  top-1 target. Trials stop once they reach it (``train.stop_at_val_top1``); a trial that never
  reaches it scores ``total_steps * (1 + (target - best_val_top1) / 100)``, with ``total_steps`` the
  cell's longest budget, worse than any trial that does and ordered by how close it came.
- ``accuracy`` (Goyal et al. Fig. 1, equal epochs): the validation top-1 after the run's epochs.

The search is Optuna's (TPE sampler; median or successive-halving pruner on the validation top-1
reported at every evaluation, a trial never stopped inside its own LR warmup;
``optuna.storages.RDBStorage``, a SQLite file by default). Several
machines share one study by passing the same PostgreSQL or MySQL URL as ``--storage``: each runs
trials until the cell has ``--trials`` finished ones. The study is resumable: the same command goes
on from the storage; a trial whose process died (no heartbeat) is retried with its parameters and
continues from its run directory's newest checkpoint. Every trial is an ordinary ``largebatch
train`` run directory, ``OUT/METHOD/bBATCH/trial_NNN``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from largebatch.config import ConfigError, apply_overrides
from largebatch.plan import resolve_stages
from largebatch.study.report import ReportError, shown_url, storage_problem, write_report
from largebatch.study.report import collect as report_collect
from largebatch.study.sweep import METHODS, SweepError, _overrides_of, read_result, run_config

OBJECTIVES = ("steps", "accuracy")
PRUNERS = ("median", "halving", "none")
FIXED_METHODS = ("goyal", "no_scaling", "linear_no_warmup")
"""Methods whose hyperparameters are tuned only at the base batch (Goyal's reference LR) and carried
to every other batch by their rule."""


def _log_uniform(trial, name: str, low: float, high: float) -> float:
    return trial.suggest_float(name, low, high, log=True)


def _warmup(trial, epochs: int) -> float:
    return trial.suggest_float("warmup_epochs", 0.0, max(0.5, 0.25 * epochs))


def _momentum(trial) -> float:
    """Momentum searched as 1 - momentum on a log scale in [0.01, 0.2] (Shallue et al. sec. 3.3)."""
    return 1.0 - _log_uniform(trial, "one_minus_momentum", 0.01, 0.2)


def _space_sgd(trial, epochs: int, batch: int) -> list[str]:
    return [
        f"optim.base_lr={_log_uniform(trial, 'base_lr', 0.01, 3.0)}",
        "optim.base_batch_size=256",
        "optim.lr_scaling=linear",
        f"schedule.warmup_epochs={_warmup(trial, epochs)}",
        f"optim.momentum={_momentum(trial)}",
    ]


def _space_lars(trial, epochs: int, batch: int) -> list[str]:
    return [
        f"optim.base_lr={_log_uniform(trial, 'base_lr', 0.1, 30.0)}",
        "optim.base_batch_size=256",
        "optim.lr_scaling=linear",
        f"schedule.warmup_epochs={_warmup(trial, epochs)}",
        f"optim.momentum={_momentum(trial)}",
    ]


def _space_lamb(trial, epochs: int, batch: int) -> list[str]:
    # the LR at this batch itself (no rule: it is retuned at every batch)
    return [
        f"optim.base_lr={_log_uniform(trial, 'lr', 1e-3, 0.2)}",
        f"optim.base_batch_size={batch}",
        "optim.lr_scaling=linear",
        f"schedule.warmup_epochs={_warmup(trial, epochs)}",
    ]


def _space_akiba(trial, epochs: int, batch: int) -> list[str]:
    # eta_base of the SGD phase and momentum; the RMSprop-to-SGD transition and slow start as the recipe
    return [
        f"optim.base_lr={_log_uniform(trial, 'base_lr', 0.02, 3.0)}",
        "optim.base_batch_size=256",
        "optim.lr_scaling=linear",
        f"optim.momentum={_momentum(trial)}",
    ]


def _space_goyal_base(trial, epochs: int, batch: int) -> list[str]:
    # Goyal et al. sec. 2.1: the reference LR is the one hyperparameter tuned, at the base batch
    return [
        f"optim.base_lr={_log_uniform(trial, 'base_lr', 0.01, 3.0)}",
        "optim.base_batch_size=256",
        "optim.lr_scaling=linear",
    ]


SPACES: dict[str, Callable] = {
    "nesterov": _space_sgd,
    "lars": _space_lars,
    "lamb": _space_lamb,
    "akiba": _space_akiba,
    "mikami": _space_lars,
    "goyal": _space_goyal_base,
}
"""What each method searches: names, ranges and scales. Keys of ``METHODS`` not here use ``goyal``'s
tuned reference LR. ``--search-range NAME=LOW,HIGH`` replaces a range (``_RangedTrial``)."""


class _RangedTrial:
    """An Optuna trial whose ``suggest_float`` draws the parameters named in ``ranges`` from those
    ranges instead of the ones the search space gives (``--search-range``)."""

    def __init__(self, trial, ranges: dict[str, tuple[float, float]]):
        self._trial, self._ranges = trial, ranges

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        low, high = self._ranges.get(name, (low, high))
        return self._trial.suggest_float(name, low, high, log=log)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


class _Recorder:
    """Stands in for a trial to read a search space: records each ``suggest_float``'s range."""

    def __init__(self):
        self.space: dict[str, tuple[float, float, bool]] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.space[name] = (low, high, log)
        return math.sqrt(low * high) if log else (low + high) / 2


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
    if spec.search_budget and spec.objective != "steps":
        raise SweepError("--search-budget searches the run's length: it goes with --objective steps, not equal epochs")


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
    n_train = _train_images(cfg, spec.val_size)
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


def _train_images(cfg, val_size: int) -> int:
    """Training images left after the validation split (the data set's size without loading it)."""
    sizes = {"fashion_mnist": 60000, "synthetic": cfg.data.synthetic.train_samples}
    n = sizes.get(cfg.data.name, 0)
    if cfg.data.train_subset:
        n = min(n, cfg.data.train_subset) if n else cfg.data.train_subset
    return max(1, n - val_size)


def _eval_records(run_dir: Path, start: int) -> tuple[list[dict], int]:
    """New ``eval`` records of metrics.jsonl from byte ``start``; returns them and the new offset."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return [], start
    with path.open("rb") as f:
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a record being written is read next time
    records = []
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "eval" and rec.get("val_top1") is not None:
            records.append(rec)
    return records, start + end


class TrialDiverged(Exception):
    """The trial's training loss became NaN or Inf, or its gradients kept being non-finite."""


def run_trial(
    cfg, run_dir: Path, *, recipe: str, nproc: int, report: Callable[[float, int], bool], log_path: Path
) -> dict:
    """Run one trial as ``largebatch train`` into ``run_dir``; ``report(val_top1, step)`` is called at
    every validation evaluation and returns True to prune (the run gets SIGTERM, checkpoints and
    stops, and ``pruned.json`` in ``run_dir`` records the step and val top-1 it was pruned at). Returns
    the run's summary (``pruned`` set when it was stopped).

    Raises:
        TrialDiverged: when the run stopped on a non-finite loss or gradient.
        RuntimeError: when it failed otherwise (its log named).
    """
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
        recipe,
    ]
    for item in _overrides_of(cfg):
        cmd += ["--set", item]
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.glob("*.pt")):
        cmd += ["--resume", "auto"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    pruned: dict | None = None
    with open(log_path, "a") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                records, offset = _eval_records(run_dir, offset)
                for rec in records:
                    if not pruned and report(rec["val_top1"], int(rec["step"])):
                        pruned = {"pruned_at_step": int(rec["step"]), "val_top1": rec["val_top1"]}
                        proc.send_signal(signal.SIGTERM)  # checkpoint at the step, exit 75
                if finished:
                    break
        except BaseException:
            with_group = getattr(os, "killpg", None)
            if with_group is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            raise
    if pruned:
        # the run directory says why it stopped short, so nobody resumes or copies it as unfinished
        (run_dir / "pruned.json").write_text(json.dumps(pruned) + "\n")
        return {**(read_result(run_dir) or {}), "pruned": True}
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        if (
            "training loss is" in tail
            or "NonFiniteGradient" in tail
            or "stopping (train.nonfinite_policy" in tail
            or "train.max_nonfinite_steps" in tail
        ):
            raise TrialDiverged(tail.strip().splitlines()[-1][:300])
        raise RuntimeError(f"trial {run_dir} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = read_result(run_dir)
    if result is None:
        raise RuntimeError(f"trial {run_dir} exited 0 without summary.json; log {log_path}")
    return result


TRIAL_RESULT_KEYS = (
    "top1",
    "val_top1",
    "best_val_top1",
    "steps",
    "steps_to_val_target",
    "images_to_val_target",
    "wall_s",
    "peak_lr",
)
"""A finished or pruned run's numbers that its trial keeps as user attributes (``study-report`` reads them)."""


def trial_value(result: dict, spec: TuneSpec, total_steps: int) -> float:
    """The objective of a finished trial (see the module docstring)."""
    if spec.objective == "accuracy":
        return float(result.get("val_top1") or 0.0)
    steps = result.get("steps_to_val_target")
    if steps is not None:
        return float(steps)
    best = result.get("best_val_top1") or 0.0
    return total_steps * (1.0 + max(0.0, spec.target_val_top1 - best) / 100.0)


def _pruner(spec: TuneSpec, warmup_steps: int):
    import optuna

    if spec.pruner == "median":
        # a trial is stopped when its validation top-1 is below the median of earlier trials at the same
        # step, once 2 trials have finished and past the first fifth of the run (early evaluations are noisy);
        # each trial also runs past its own LR warmup before it can be stopped (tune_cell's report)
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_steps, interval_steps=1)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _storage(spec: TuneSpec):
    import optuna

    spec.out.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if spec.storage_url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        if spec.storage_url.startswith("sqlite:///"):  # the file's folder, as OUT is made
            Path(spec.storage_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    # Optuna 4.9 renamed the retry callback; older 4.x releases have only the first name
    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    return optuna.storages.RDBStorage(
        spec.storage_url, heartbeat_interval=30, grace_period=120, failed_trial_callback=retry(max_retry=3), **kwargs
    )


def _finished(study) -> list:
    import optuna

    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]


def fixed_params(spec: TuneSpec, storage, method: str) -> list[str]:
    """Goyal's tuned reference LR from the base batch's study (the best trial there), as ``method``
    carries it: per 256 images by the linear rule (goyal, linear_no_warmup), or the base batch's
    peak LR kept at every batch (no_scaling).

    Raises:
        SweepError: when the base batch has no finished trial yet.
    """
    import optuna

    base = optuna.load_study(study_name=study_name("goyal", spec.base_batch, spec), storage=storage)
    try:
        best = base.best_trial
    except ValueError:
        raise SweepError(f"goyal at the base batch {spec.base_batch} has no finished trial: tune it first") from None
    lr = best.params["base_lr"]
    if method == "no_scaling":
        return [
            f"optim.base_lr={lr * spec.base_batch / 256}",
            f"optim.base_batch_size={spec.base_batch}",
            "optim.lr_scaling=none",
        ]
    return [f"optim.base_lr={lr}", "optim.base_batch_size=256", "optim.lr_scaling=linear"]


def total_steps_of(cfg, val_size: int, nproc: int) -> int:
    """Optimizer steps of the whole run (every batch stage's epochs, drop last)."""

    stages = resolve_stages(cfg, nproc)
    n = _train_images(cfg, val_size)
    steps = 0
    for epoch in range(cfg.train.epochs):
        stage = [st for st in stages if st.start_epoch <= epoch][-1]
        steps += n // stage.plan.global_batch_size
    return steps


def sampler_seed(name: str, storage, search_ranges: dict[str, tuple[float, float]] | None = None) -> int:
    """The TPE sampler's seed for study ``name``: a function of the name, of how many trials the
    storage already holds, so a resumed study does not draw its first trials' parameters again (a
    sampler seeded by the name alone restarts its random stream on every resume), and of the ranges
    that replace the defaults (``TuneSpec.range_overrides``), so the same cell searched again over
    wider ranges in a new storage does not repeat the first draws of the parameters it kept."""
    import optuna

    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    except KeyError:  # no such study yet
        existing = 0
    key = name + "".join(f";{k}={lo:g},{hi:g}" for k, (lo, hi) in sorted((search_ranges or {}).items()))
    return zlib.crc32(key.encode() if existing == 0 else f"{key}#{existing}".encode())


def requeue_interrupted(study) -> list[int]:
    """Queue again every run whose latest trial was interrupted by SIGTERM or Ctrl-C (state FAIL,
    marked ``interrupted``): same parameters, same run directory, resumed from its newest checkpoint.
    A run interrupted again on its retry is queued again. One killed outright is retried by the
    heartbeat instead. Returns the run numbers queued."""
    import optuna

    latest = {}
    for t in study.get_trials(deepcopy=False):  # in trial order: the last one seen per run is its latest
        run = t.user_attrs.get("run_number", t.user_attrs.get("resume_run_number", t.number))
        latest[run] = t
    queued = []
    for run, t in latest.items():
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted"):
            study.enqueue_trial(t.params, user_attrs={"resume_run_number": run})
            queued.append(run)
    return queued


def search_space(method: str, spec: TuneSpec, batch: int) -> dict[str, tuple[float, float, bool]]:
    """What a trial of ``method`` at ``batch`` draws under ``spec``: ``{name: (low, high, log)}``, the
    method's space (``SPACES``) with ``spec.search_ranges`` applied; empty for a cell that carries a
    rule instead of searching (Goyal's rule above the base batch and its ablations)."""
    if method in FIXED_METHODS and not (method == "goyal" and batch == spec.base_batch):
        return {}
    recorder = _Recorder()
    ranged = _RangedTrial(recorder, spec.range_overrides)
    epochs = spec.epochs_for(batch)
    if spec.search_budget:
        recorder.space["budget_epochs"] = (max(1, epochs // 8), epochs, True)
        SPACES.get(method, _space_goyal_base)(_BudgetTrial(ranged, epochs), epochs, batch)
    else:
        SPACES.get(method, _space_goyal_base)(ranged, epochs, batch)
    return recorder.space


def check_search_space(study, method: str, batch: int, spec: TuneSpec, *, storage_url: str) -> None:
    """Raises SweepError when ``study`` holds trials that drew a parameter from another range than
    ``spec`` would: two ranges in one study mix two distributions in its sampler and edge checks."""
    space = search_space(method, spec, batch)
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            if name not in space or not hasattr(dist, "low"):
                continue
            low, high, _ = space[name]
            if math.isclose(dist.low, low) and math.isclose(dist.high, high):
                continue
            raise SweepError(
                f"study {study.study_name} in {storage_url} drew {name} from [{dist.low:g}, {dist.high:g}], "
                f"this command from [{low:g}, {high:g}]: give --search-range {name}={dist.low:g},{dist.high:g}, "
                "or a new --storage for the new range (largebatch study-report merges storages)"
            )


def tune_cell(spec: TuneSpec, method: str, batch: int, storage, *, progress: Callable[[str], None]) -> None:
    """Run the missing trials of one (method, global batch) study."""
    import optuna

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    fixed = method in FIXED_METHODS and not (method == "goyal" and batch == spec.base_batch)
    n_trials = 1 if fixed else spec.trials
    name = study_name(method, batch, spec)
    planned_steps = total_steps_of(trial_config(spec, method, batch, []), spec.val_size, spec.nproc)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="minimize" if spec.objective == "steps" else "maximize",
        sampler=optuna.samplers.TPESampler(
            seed=sampler_seed(name, storage, spec.range_overrides), n_startup_trials=min(4, n_trials)
        ),
        pruner=_pruner(spec, warmup_steps=planned_steps // 5),
    )
    study.set_metric_names(["steps_to_val_target" if spec.objective == "steps" else "val_top1"])
    if "protocol" not in study.user_attrs:  # what `largebatch study-report` checks before merging studies
        study.set_user_attr("protocol", protocol_of(spec, batch))
    check_search_space(study, method, batch, spec, storage_url=spec.storage_url)
    if len(_finished(study)) >= n_trials:
        return
    requeue_interrupted(study)
    fixed_overrides = fixed_params(spec, storage, method) if fixed else []
    space = SPACES.get(method, _space_goyal_base)

    def objective(trial) -> float:
        budget = None  # the cell's epochs
        if spec.search_budget and not fixed_overrides:
            cell_epochs = spec.epochs_for(batch)
            budget = trial.suggest_int("budget_epochs", max(1, cell_epochs // 8), cell_epochs, log=True)
        ranged = _RangedTrial(trial, spec.range_overrides)
        params = fixed_overrides or space(
            _BudgetTrial(ranged, budget) if budget else ranged, budget or spec.epochs_for(batch), batch
        )
        retried = retry.retried_trial_number(trial)
        number = trial.user_attrs.get("resume_run_number", trial.number)
        if retried is not None:
            number = study.trials[retried].user_attrs.get("run_number", retried)
        trial.set_user_attr("run_number", number)
        run_dir = trial_dir(spec.out, method, batch, number)
        cfg = trial_config(spec, method, batch, params, epochs=budget)
        total_steps = total_steps_of(cfg, spec.val_size, spec.nproc)
        if budget:
            trial.set_user_attr("budget_epochs", budget)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", params)
        direction_error = spec.objective == "steps"
        last = {}

        reported: set[int] = set()

        # not pruned before its own LR warmup ends: while warming up, a trial with a longer warmup is
        # behind the others by construction (at 16,384, 48 steps in all, the pruner's first fifth ends
        # at step 9, inside most warmups)
        warmup_end_step = math.ceil(cfg.schedule.warmup_epochs / cfg.train.epochs * total_steps)

        def report(val_top1: float, step: int) -> bool:
            last.update(val_top1=val_top1, steps=step)
            if step not in reported:  # a resumed run evaluates its checkpoint's step again
                reported.add(step)
                trial.report(100.0 - val_top1 if direction_error else val_top1, step)
            return step >= warmup_end_step and trial.should_prune()

        t0 = time.perf_counter()
        try:
            result = run_trial(
                cfg,
                run_dir,
                recipe=METHODS[method].recipe,
                nproc=spec.nproc,
                report=report,
                log_path=run_dir.parent / f"trial_{number:03d}.log",
            )
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except TrialDiverged as err:
            trial.set_user_attr("trial_wall_s", time.perf_counter() - t0)
            trial.set_user_attr("diverged", str(err))
            progress(f"{name} trial {number}: diverged ({err})")
            raise optuna.TrialPruned(f"diverged: {err}") from None
        result = {**last, **{k: v for k, v in result.items() if v is not None}}
        for key in TRIAL_RESULT_KEYS:
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        wall = time.perf_counter() - t0
        trial.set_user_attr("trial_wall_s", wall)
        if result.get("pruned"):
            progress(
                f"{name} trial {number}: pruned at step {result.get('steps', '?')} "
                f"(val top-1 {result.get('val_top1') or 0:.2f}%), {wall:.0f} s"
            )
            raise optuna.TrialPruned()
        # a miss scores from the cell's longest budget, so a short trial that misses never ranks above
        # one that reaches the target (with --search-budget a trial's own length can be 1/8 of it)
        value = trial_value(result, spec, max(total_steps, planned_steps))
        progress(
            f"{name} trial {number}: {'steps ' if spec.objective == 'steps' else 'val top-1 '}{value:.4g} "
            f"(val top-1 {result.get('val_top1') or 0:.2f}%, test {result.get('top1', float('nan')):.2f}%), {wall:.0f} s"
        )
        return value

    study.optimize(
        objective,
        callbacks=[
            optuna.study.MaxTrialsCallback(
                n_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            )
        ],
        catch=(),
    )


class _BudgetTrial:
    """The trial as a method's search space sees it when the run's length is searched: the warmup is
    drawn as a fraction of the trial's budget (``warmup_fraction`` in [0, 0.25]) so that its range
    stays one distribution for the sampler whatever the budget; everything else is the trial's."""

    def __init__(self, trial, budget_epochs: int):
        self._trial, self._budget = trial, budget_epochs

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        if name == "warmup_epochs":
            return self._budget * self._trial.suggest_float("warmup_fraction", 0.0, 0.25)
        return self._trial.suggest_float(name, low, high, log=log)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


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


CONFIRM_KEYS = ("top1", "val_top1", "best_val_top1", "steps_to_val_target", "steps", "wall_s")


def confirm_seeds(spec: TuneSpec, method: str, batch: int, storage, *, progress: Callable[[str], None]) -> None:
    """Re-run the chosen trial of a cell with each further seed of ``spec.seeds`` (run directory
    ``confirm_sN_tTTT`` beside the trials, TTT the chosen trial's number); the results go to the study's
    ``confirm_sN`` attribute with the trial they confirm, so the storage alone holds the spread over
    seeds. When trials added later change the chosen trial, its further seeds are run again."""
    import optuna

    study = optuna.load_study(study_name=study_name(method, batch, spec), storage=storage)
    try:
        best = study.best_trial
    except ValueError:
        return
    params = list(best.user_attrs.get("overrides", []))
    for seed in spec.seeds[1:]:
        key = f"confirm_s{seed}"
        if study.user_attrs.get(key, {}).get("trial") == best.number:
            continue  # done; a confirmation of an earlier chosen trial is run again for the new one
        run_dir = Path(spec.out) / method / f"b{batch:06d}" / f"{key}_t{best.number:03d}"
        result = read_result(run_dir)
        if result is None:
            cfg = trial_config(spec, method, batch, params, seed=seed, epochs=best.user_attrs.get("budget_epochs"))
            result = run_trial(
                cfg,
                run_dir,
                recipe=METHODS[method].recipe,
                nproc=spec.nproc,
                report=lambda v, s: False,
                log_path=run_dir.parent / f"{key}.log",
            )
        record = {k: result.get(k) for k in CONFIRM_KEYS}
        study.set_user_attr(key, {**record, "trial": best.number, "run_dir": str(run_dir)})
        progress(f"{study_name(method, batch, spec)} seed {seed}: test top-1 {result.get('top1', float('nan')):.2f}%")


def run_tuned_sweep(spec: TuneSpec, *, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Tune every (method, batch) cell that is not finished, confirm the chosen trials over the
    further seeds, then write the tables and figures; returns the rows (see :func:`collect_tuned`).

    Raises:
        SweepError: before any trial, for a sweep that cannot run as asked, or a storage that cannot
            be used (a bad URL, a driver not installed, a file that is not an Optuna SQLite database).
        RuntimeError: when a trial fails for a reason other than divergence (the same command resumes).
    """
    import optuna

    check_spec(spec)
    if problem := storage_problem(spec.storage_url, existing=False):  # before OUT is made or a trial runs
        raise SweepError(problem)

    # Optuna marks set_metric_names and the retry callback experimental; the study does not depend on it
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    say = progress or (lambda line: print(f"largebatch sweep: {line}", file=sys.stderr, flush=True))
    for method in spec.methods:  # every cell's config must resolve before any trial runs
        for b in spec.batch_sizes:
            try:
                resolve_stages(trial_config(spec, method, b, []), spec.nproc)
            except ConfigError as err:
                raise SweepError(f"{method} at global batch {b}: {err}") from None
    optuna.logging.set_verbosity(
        optuna.logging.ERROR
    )  # its per-trial warnings (with tracebacks) stay out of the terminal
    try:
        storage = _storage(spec)
    except Exception as err:  # a server that refuses, an old Optuna schema, a folder that cannot be made
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SweepError(
            f"--storage {shown_url(spec.storage_url)}: cannot be opened ({type(err).__name__}: {first[:200]}); "
            f"check the URL and the database server, or give another --storage"
        ) from None
    for method in spec.methods:  # a study started with other ranges is refused before any trial runs
        for b in spec.batch_sizes:
            try:
                study = optuna.load_study(study_name=study_name(method, b, spec), storage=storage)
            except KeyError:  # not started yet
                continue
            check_search_space(study, method, b, spec, storage_url=spec.storage_url)

    def on_sigterm(signum, frame):  # the running trial checkpoints and stops; the command resumes it
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _run_cells(spec, storage, say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return write_tuned_outputs(spec)


def _run_cells(spec: TuneSpec, storage, say: Callable[[str], None]) -> None:
    say(
        f"study storage {spec.storage_url}; {len(spec.methods)} methods x {len(spec.batch_sizes)} batches, "
        f"{spec.trials} trials per cell, objective {spec.objective}"
    )
    order = sorted(spec.methods, key=lambda m: m not in FIXED_METHODS)  # goyal's base cell before its rule
    for method in order:
        cells = sorted(spec.batch_sizes)
        for b in cells:
            tune_cell(spec, method, b, storage, progress=say)
            confirm_seeds(spec, method, b, storage, progress=say)


def write_tuned_outputs(spec: TuneSpec) -> list[dict]:
    """``tuned.json`` and ``tuned.md`` (best trial per cell), and the figure of the objective:
    ``steps_to_target.png`` (Shallue et al. Fig. 1, with the McCandlish et al. fit per method) or
    ``equal_epochs.png`` (test error against batch, Goyal et al. Fig. 1), in ``spec.out``. Returns one
    row per (method, global batch) of this sweep with a finished trial (see
    :func:`largebatch.study.report.collect`); none before the first finished trial."""

    names = {study_name(m, b, spec) for m in spec.methods for b in spec.batch_sizes}
    try:
        report = report_collect([spec.storage_url], spec.objective, methods=spec.methods, study_names=names)
    except ReportError:  # no finished cell yet
        return []
    write_report(report, Path(spec.out))
    return report.rows


def merge_trials(
    source, target, *, since=None, attrs: dict | None = None, attrs_of: Callable | None = None
) -> list[tuple[str, int, int]]:
    """Add the finished trials of every study in storage ``source`` to the study of the same name in
    storage ``target`` (created with the source's direction and ``protocol`` when missing): how
    trials run on a machine that cannot reach the study's storage, against a copy of it, come back.

    Only trials that began at or after ``since`` (a naive UTC ``datetime``; None: all) and finished
    (complete or pruned) are added, each with ``attrs`` added to its user attributes and
    ``merged_from`` naming its source study and number, so merging the same source twice adds
    nothing the second time. Running or failed trials (a trial stopped by SIGTERM) are left out.

    Args:
        source, target: Optuna storages or storage URLs.
        attrs_of: called as ``attrs_of(study_name, source_trial, number_in_target)`` before a trial
            is added; the user attributes it returns are added too (a finished trial's attributes
            cannot change afterwards).

    Returns:
        ``(study name, number in the source, number in the target)`` for each trial added.
    """
    import optuna

    added = []
    for summary in optuna.get_all_study_summaries(source, include_best_trial=False):
        name = summary.study_name
        src = optuna.load_study(study_name=name, storage=source)
        todo = [
            t
            for t in src.get_trials(deepcopy=False)
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            and (since is None or (t.datetime_start is not None and t.datetime_start >= since))
        ]
        if not todo:
            continue
        dst = optuna.create_study(study_name=name, storage=target, direction=src.direction, load_if_exists=True)
        if "protocol" in src.user_attrs and "protocol" not in dst.user_attrs:
            dst.set_user_attr("protocol", src.user_attrs["protocol"])
        existing = dst.get_trials(deepcopy=False)
        seen = {t.user_attrs.get("merged_from") for t in existing}
        number = len(existing)  # the next trial's number in the target
        for t in todo:
            origin = f"{name}#{t.number}@{t.datetime_start.isoformat()}"
            if origin in seen:
                continue
            dst.add_trial(
                optuna.trial.create_trial(
                    state=t.state,
                    value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                    params=t.params,
                    distributions=t.distributions,
                    user_attrs={
                        **t.user_attrs,
                        **(attrs or {}),
                        **(attrs_of(name, t, number) if attrs_of else {}),
                        "merged_from": origin,
                    },
                    intermediate_values=t.intermediate_values,
                )
            )
            added.append((name, t.number, number))
            number += 1
    return added
