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

import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from largebatch.config import ConfigError
from largebatch.plan import resolve_stages
from largebatch.study.methods import FIXED_METHODS, METHODS, SPACES  # noqa: F401  (re-exported)
from largebatch.study.report import ReportError, write_report
from largebatch.study.report import collect as report_collect
from largebatch.study.search import BudgetTrial as _BudgetTrial  # noqa: F401  (re-exported)
from largebatch.study.search import RangedTrial as _RangedTrial  # noqa: F401  (re-exported)
from largebatch.study.search import Recorder as _Recorder  # noqa: F401  (re-exported)
from largebatch.study.search import (  # noqa: F401  (re-exported)
    check_search_space,
    is_fixed_cell,
    sampler_seed,
    search_space,
)
from largebatch.study.storage import finished_trials as _finished
from largebatch.study.storage import (  # noqa: F401  (re-exported)
    load_study_or_none,
    merge_trials,
    open_storage,
    requeue_interrupted,
    shown_url,
    storage_problem,
)
from largebatch.study.sweep import SweepError, read_result
from largebatch.study.trial import (  # noqa: F401  (re-exported)
    TRIAL_RESULT_KEYS,
    CellObjective,
    TrialDiverged,
    _eval_records,
    percent,
    run_trial,
    trial_value,
)
from largebatch.study.tune_spec import (  # noqa: F401  (re-exported)
    OBJECTIVES,
    PRUNERS,
    TuneSpec,
    check_spec,
    protocol_of,
    study_name,
    total_steps_of,
    trial_config,
    trial_dir,
)


def _pruner(spec: TuneSpec, warmup_steps: int):
    import optuna

    if spec.pruner == "median":
        # a trial is stopped when its validation top-1 is below the median of earlier trials at the same
        # step, once 2 trials have finished and past the first fifth of the run (early evaluations are noisy);
        # each trial also runs past its own LR warmup before it can be stopped (trial._Reporter)
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_steps, interval_steps=1)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _storage(spec: TuneSpec):
    return open_storage(spec.storage_url, spec.out)


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


def tune_cell(spec: TuneSpec, method: str, batch: int, storage, *, progress: Callable[[str], None]) -> None:
    """Run the missing trials of one (method, global batch) study (:class:`largebatch.study.trial.CellObjective`)."""
    import optuna

    fixed = is_fixed_cell(spec, method, batch)
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
    objective = CellObjective(
        spec,
        method,
        batch,
        study,
        fixed_overrides=fixed_params(spec, storage, method) if fixed else [],
        planned_steps=planned_steps,
        progress=progress,
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished)], catch=())


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
        progress(f"{study_name(method, batch, spec)} seed {seed}: test top-1 {percent(result.get('top1')):.2f}%")


def run_tuned_sweep(spec: TuneSpec, *, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Tune every (method, batch) cell that is not finished, confirm the chosen trials over the
    further seeds, then write the tables and figures; returns the rows (see :func:`write_tuned_outputs`).

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
    _check_cells(spec)
    optuna.logging.set_verbosity(
        optuna.logging.ERROR
    )  # its per-trial warnings (with tracebacks) stay out of the terminal
    storage = _open(spec)
    _check_stored_ranges(spec, storage)

    def on_sigterm(signum, frame):  # the running trial checkpoints and stops; the command resumes it
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _run_cells(spec, storage, say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return write_tuned_outputs(spec)


def _check_cells(spec: TuneSpec) -> None:
    """Every cell's config must resolve before any trial runs."""
    for method in spec.methods:
        for b in spec.batch_sizes:
            try:
                resolve_stages(trial_config(spec, method, b, []), spec.nproc)
            except ConfigError as err:
                raise SweepError(f"{method} at global batch {b}: {err}") from None


def _open(spec: TuneSpec):
    try:
        return _storage(spec)
    except Exception as err:  # a server that refuses, an old Optuna schema, a folder that cannot be made
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SweepError(
            f"--storage {shown_url(spec.storage_url)}: cannot be opened ({type(err).__name__}: {first[:200]}); "
            f"check the URL and the database server, or give another --storage"
        ) from None


def _check_stored_ranges(spec: TuneSpec, storage) -> None:
    """A study started with other ranges is refused before any trial runs."""
    for method in spec.methods:
        for b in spec.batch_sizes:
            study = load_study_or_none(study_name(method, b, spec), storage)
            if study is not None:  # started already
                check_search_space(study, method, b, spec, storage_url=spec.storage_url)


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
