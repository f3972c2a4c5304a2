"""One trial of a tuned cell: its run (:func:`run_trial`, a ``largebatch train`` watched at every
validation evaluation so the pruner can stop it), its value, and the objective Optuna calls for a
cell (:class:`CellObjective`). See :mod:`largebatch.study.tune` for the protocol."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

from largebatch.study.launch import RunFailed, start_train
from largebatch.study.methods import METHODS
from largebatch.study.search import budget_range, draw
from largebatch.study.storage import retry_callback
from largebatch.study.sweep import read_result
from largebatch.study.tune_spec import TuneSpec, total_steps_of, trial_config, trial_dir

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


class TrialDiverged(Exception):
    """The trial's training loss became NaN or Inf, or its gradients kept being non-finite."""


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


class _EvalWatch:
    """Called while a trial runs: hands each new validation evaluation to ``report`` and, the first
    time it returns True, sends the run SIGTERM (it checkpoints at the step and exits 75)."""

    def __init__(self, run_dir: Path, report: Callable[[float, int], bool], process) -> None:
        self.run_dir, self.report, self.process = run_dir, report, process
        self.offset = 0
        self.pruned: dict | None = None

    def __call__(self) -> None:
        records, self.offset = _eval_records(self.run_dir, self.offset)
        for rec in records:
            if not self.pruned and self.report(rec["val_top1"], int(rec["step"])):
                self.pruned = {"pruned_at_step": int(rec["step"]), "val_top1": rec["val_top1"]}
                self.process.send_signal(signal.SIGTERM)


def run_trial(
    cfg, run_dir: Path, *, recipe: str, nproc: int, report: Callable[[float, int], bool], log_path: Path
) -> dict:
    """Run one trial as ``largebatch train`` into ``run_dir`` (:func:`largebatch.study.launch.start_train`,
    its log appended to ``log_path``); ``report(val_top1, step)`` is called at every validation
    evaluation and returns True to prune (the run gets SIGTERM, checkpoints and stops, and
    ``pruned.json`` in ``run_dir`` records the step and val top-1 it was pruned at). Returns the run's
    summary (``pruned`` set when it was stopped).

    Raises:
        TrialDiverged: when the run stopped on a non-finite loss or gradient (its exit status says so).
        RuntimeError: when it failed otherwise (its log named).
    """
    process = start_train(cfg, run_dir, nproc=nproc, log=log_path, append=True, recipe=recipe, report_divergence=True)
    watch = _EvalWatch(run_dir, report, process)
    process.wait(watch)
    if watch.pruned:
        # the run directory says why it stopped short, so nobody resumes or copies it as unfinished
        (run_dir / "pruned.json").write_text(json.dumps(watch.pruned) + "\n")
        return {**(read_result(run_dir) or {}), "pruned": True}
    try:
        summary = process.outcome()
    except RunFailed as err:
        if err.returncode == 0:
            raise RuntimeError(f"trial {run_dir} exited 0 without summary.json; log {log_path}") from None
        raise RuntimeError(
            f"trial {run_dir} failed (exit {err.returncode}); log {log_path}:\n{err.output[-3000:]}"
        ) from None
    if summary.diverged:  # its last line names the cause
        raise TrialDiverged(process.output()[-3000:].strip().splitlines()[-1][:300])
    return summary.to_dict()


def trial_value(result: dict, spec: TuneSpec, total_steps: int) -> float:
    """The objective of a finished trial (see the module docstring of :mod:`largebatch.study.tune`)."""
    if spec.objective == "accuracy":
        return float(result.get("val_top1") or 0.0)
    steps = result.get("steps_to_val_target")
    if steps is not None:
        return float(steps)
    best = result.get("best_val_top1") or 0.0
    return total_steps * (1.0 + max(0.0, spec.target_val_top1 - best) / 100.0)


def percent(value) -> float:
    """A result's percentage for a progress line (NaN where the run did not report it)."""
    return float("nan") if value is None else value


class _Reporter:
    """``report(val_top1, step)`` of one trial's run: the trial's intermediate values (the error for
    the steps objective), each step once, and whether to prune; ``last`` keeps the latest evaluation.

    A trial is not pruned before its own LR warmup ends: while warming up, a trial with a longer
    warmup is behind the others by construction (at 16,384, 48 steps in all, the pruner's first fifth
    ends at step 9, inside most warmups)."""

    def __init__(self, trial, *, error: bool, warmup_end_step: int) -> None:
        self.trial, self.error, self.warmup_end_step = trial, error, warmup_end_step
        self.last: dict = {}
        self.reported: set[int] = set()

    def __call__(self, val_top1: float, step: int) -> bool:
        self.last.update(val_top1=val_top1, steps=step)
        if step not in self.reported:  # a resumed run evaluates its checkpoint's step again
            self.reported.add(step)
            self.trial.report(100.0 - val_top1 if self.error else val_top1, step)
        return step >= self.warmup_end_step and self.trial.should_prune()


class CellObjective:
    """What Optuna calls for each trial of one (method, global batch) cell: draw the trial's
    hyperparameters (or take the rule's ``fixed_overrides``), run it in its run directory (a retried or
    requeued trial continues its run's), and return its value; a pruned or diverged trial raises
    ``optuna.TrialPruned``. ``planned_steps``: the cell's run length at its own epochs."""

    def __init__(
        self,
        spec: TuneSpec,
        method: str,
        batch: int,
        study,
        *,
        fixed_overrides: list[str],
        planned_steps: int,
        progress: Callable[[str], None],
    ) -> None:
        self.spec, self.method, self.batch, self.study = spec, method, batch, study
        self.fixed_overrides, self.planned_steps, self.progress = fixed_overrides, planned_steps, progress
        self.name = study.study_name

    def __call__(self, trial) -> float:
        spec = self.spec
        budget = None  # the cell's epochs
        if spec.search_budget and not self.fixed_overrides:
            budget = trial.suggest_int("budget_epochs", *budget_range(spec, self.batch), log=True)
        params = self.fixed_overrides or draw(trial, spec, self.method, self.batch, budget)
        number = self._run_number(trial)
        trial.set_user_attr("run_number", number)
        run_dir = trial_dir(spec.out, self.method, self.batch, number)
        cfg = trial_config(spec, self.method, self.batch, params, epochs=budget)
        total_steps = total_steps_of(cfg, spec.val_size, spec.nproc)
        if budget:
            trial.set_user_attr("budget_epochs", budget)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", params)
        warmup_end_step = math.ceil(cfg.schedule.warmup_epochs / cfg.train.epochs * total_steps)
        reporter = _Reporter(trial, error=spec.objective == "steps", warmup_end_step=warmup_end_step)
        t0 = time.perf_counter()
        result = self._run(trial, cfg, run_dir, number, reporter, t0)
        return self._value(trial, number, {**reporter.last, **result}, t0, total_steps)

    def _run_number(self, trial) -> int:
        """The run directory's number: the trial's own, or that of the run a retried (heartbeat) or
        requeued (interrupted) trial continues."""
        retried = retry_callback().retried_trial_number(trial)
        number = trial.user_attrs.get("resume_run_number", trial.number)
        if retried is not None:
            number = self.study.trials[retried].user_attrs.get("run_number", retried)
        return number

    def _run(self, trial, cfg, run_dir: Path, number: int, reporter: _Reporter, t0: float) -> dict:
        """The trial's run (:func:`run_trial`): its summary without the values it did not report."""
        import optuna

        try:
            result = run_trial(
                cfg,
                run_dir,
                recipe=METHODS[self.method].recipe,
                nproc=self.spec.nproc,
                report=reporter,
                log_path=run_dir.parent / f"trial_{number:03d}.log",
            )
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except TrialDiverged as err:
            trial.set_user_attr("trial_wall_s", time.perf_counter() - t0)
            trial.set_user_attr("diverged", str(err))
            self.progress(f"{self.name} trial {number}: diverged ({err})")
            raise optuna.TrialPruned(f"diverged: {err}") from None
        return {k: v for k, v in result.items() if v is not None}

    def _value(self, trial, number: int, result: dict, t0: float, total_steps: int) -> float:
        """Keep the run's numbers on the trial; its value, or ``optuna.TrialPruned`` when it was pruned."""
        import optuna

        for key in TRIAL_RESULT_KEYS:
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        wall = time.perf_counter() - t0
        trial.set_user_attr("trial_wall_s", wall)
        if result.get("pruned"):
            self.progress(
                f"{self.name} trial {number}: pruned at step {result.get('steps', '?')} "
                f"(val top-1 {result.get('val_top1') or 0:.2f}%), {wall:.0f} s"
            )
            raise optuna.TrialPruned()
        # a miss scores from the cell's longest budget, so a short trial that misses never ranks above
        # one that reaches the target (with --search-budget a trial's own length can be 1/8 of it)
        value = trial_value(result, self.spec, max(total_steps, self.planned_steps))
        self.progress(
            f"{self.name} trial {number}: {'steps ' if self.spec.objective == 'steps' else 'val top-1 '}"
            f"{value:.4g} (val top-1 {result.get('val_top1') or 0:.2f}%, test {percent(result.get('top1')):.2f}%), "
            f"{wall:.0f} s"
        )
        return value
