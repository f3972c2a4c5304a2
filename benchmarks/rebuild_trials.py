"""Rebuild a tuned cell's trial records in its Optuna storage from the trials' run directories.

Used once, on 2026-12-05: the records of stage 4m's Akiba and Mikami trials (24 finished or pruned
runs, 02:29-03:31 UTC) were lost from `docs/results/tuned_epochs_e16/study.db` when the study's
working copy was checked out over its uncommitted storage; their run directories survived. This
script asks each cell's study for its trials again with the sampler `largebatch sweep --tune` used
(same seed, same search space, so the same draws in the same order), checks every drawn value
against the run directory's `config.json` (it stops on any difference), and tells the study what
the run recorded: the validation top-1 at every evaluation (`metrics.jsonl`), the summary's numbers,
the pruning step (`pruned.json`), and the trial's wall time from the sweep's progress log. Nothing is
trained. A cell whose study already holds finished trials is left alone.

    .venv/bin/python benchmarks/rebuild_trials.py sqlite:///docs/results/tuned_epochs_e16/study.db \
        runs/study_epochs runs/s4m7_cpu.txt akiba,mikami 256,2048,4096,8192 --epochs 16 --trials 3
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import optuna

from largebatch.study import tune


def config_value(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def check_overrides(params: list[str], cfg: dict, run_dir: Path) -> None:
    for item in params:
        key, _, text = item.partition("=")
        have = config_value(cfg, key)
        try:
            same = math.isclose(float(text), float(have), rel_tol=1e-12)
        except (TypeError, ValueError):
            same = str(have) == text
        if not same:
            raise SystemExit(f"{run_dir}: the sampler draws {item}, the run has {key}={have}: not the same trial")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storage")
    ap.add_argument("out", type=Path)
    ap.add_argument("progress_log", type=Path, help="the sweep's stderr: 'NAME trial N: ... S s' lines")
    ap.add_argument("methods")
    ap.add_argument("batch_sizes")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    walls = {}
    for line in args.progress_log.read_text().splitlines():
        m = re.match(r"largebatch sweep: (\S+) trial (\d+): .*, (\d+) s$", line)
        if m:
            walls[(m[1], int(m[2]))] = float(m[3])
    spec = tune.TuneSpec(
        out=args.out,
        methods=args.methods.split(","),
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        epochs=args.epochs,
        trials=args.trials,
        objective="accuracy",
        val_size=args.val_size,
        storage=args.storage,
        nproc=args.nproc,
    )
    for method in spec.methods:
        for batch in spec.batch_sizes:
            name = tune.study_name(method, batch, spec)
            study = optuna.create_study(
                study_name=name,
                storage=args.storage,
                load_if_exists=True,
                direction="maximize",
                sampler=optuna.samplers.TPESampler(
                    seed=tune.sampler_seed(name, args.storage), n_startup_trials=min(4, spec.trials)
                ),
            )
            study.set_metric_names(["val_top1"])
            if "protocol" not in study.user_attrs:
                study.set_user_attr("protocol", tune.protocol_of(spec, batch))
            if tune._finished(study):
                print(f"{name}: {len(tune._finished(study))} finished trials already, left alone")
                continue
            tune.requeue_interrupted(study)
            space = tune.SPACES[method]
            while len(tune._finished(study)) < spec.trials:
                trial = study.ask()
                number = trial.user_attrs.get("resume_run_number", trial.number)
                params = space(tune._RangedTrial(trial, {}), spec.epochs_for(batch), batch)
                run_dir = tune.trial_dir(spec.out, method, batch, number)
                check_overrides(params, json.loads((run_dir / "config.json").read_text()), run_dir)
                trial.set_user_attr("run_number", number)
                trial.set_user_attr("run_dir", str(run_dir))
                trial.set_user_attr("overrides", params)
                pruned_path = run_dir / "pruned.json"
                pruned = json.loads(pruned_path.read_text()) if pruned_path.is_file() else None
                last, reported = {}, set()
                for rec in tune._eval_records(run_dir, 0)[0]:
                    step = int(rec["step"])
                    if pruned and step > pruned["pruned_at_step"]:
                        break
                    last = {"val_top1": rec["val_top1"], "steps": step}
                    if step not in reported:  # a resumed run evaluates its checkpoint's step again
                        reported.add(step)
                        trial.report(rec["val_top1"], step)
                summary = {} if pruned else json.loads((run_dir / "summary.json").read_text())
                result = {**last, **{k: v for k, v in summary.items() if v is not None}}
                for key in tune.TRIAL_RESULT_KEYS:
                    if result.get(key) is not None:
                        trial.set_user_attr(key, result[key])
                if (name, number) not in walls:
                    raise SystemExit(f"{name} trial {number}: no wall time in {args.progress_log}")
                trial.set_user_attr("trial_wall_s", walls[(name, number)])
                trial.set_user_attr("rebuilt_from_run_dir", True)
                if pruned:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    print(f"{name} trial {number}: pruned at step {last['steps']} (val top-1 {last['val_top1']:.2f}%)")
                else:
                    study.tell(trial, float(result["val_top1"]))
                    print(f"{name} trial {number}: val top-1 {result['val_top1']:.2f}%, test {result['top1']:.2f}%")


if __name__ == "__main__":
    main()
