"""``largebatch sweep --tune`` on real Fashion-MNIST (a 2,000-image subset): the search fills each
cell's Optuna study with ordinary run directories, a second command resumes from the storage and
runs only the missing trials, a pruned trial is stopped by SIGTERM at a validation evaluation, a
diverging one is pruned and marked, and Goyal's cells carry the base batch's tuned LR by the rule."""

import json
import subprocess
import sys

import optuna
import pytest

import clirun
from largebatch.study import tune
from largebatch.study.tune import TuneSpec, run_tuned_sweep, study_name, trial_dir

pytestmark = pytest.mark.e2e

SUBSET = ("data.train_subset=2000", "data.test_subset=500", "train.log_every_steps=2")


def spec_for(out, **kw):
    args = dict(
        out=out,
        methods=["nesterov"],
        batch_sizes=[256, 512],
        epochs=1,
        trials=2,
        objective="steps",
        target_val_top1=99.0,
        val_size=400,
        evals_per_epoch=2,
        pruner="none",
        overrides=SUBSET,
        nproc=1,
    )
    args.update(kw)
    return TuneSpec(**args)


def finished(out, spec, method, batch):
    study = optuna.load_study(study_name=study_name(method, batch, spec), storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.get_trials() if t.state.is_finished()]


def test_tuned_sweep_searches_carries_the_rule_and_resumes_from_the_storage(tmp_path):
    out = tmp_path / "tune"
    spec = spec_for(out, methods=["goyal", "no_scaling"])
    rows = run_tuned_sweep(spec, progress=lambda line: None)
    cells = {(r["method"], r["global_batch_size"]): r for r in rows}
    # Goyal's reference LR is searched at the base (smallest) batch only; the rule carries it
    assert {k: r["trials"] for k, r in cells.items()} == {
        ("goyal", 256): 2,
        ("goyal", 512): 1,
        ("no_scaling", 256): 1,
        ("no_scaling", 512): 1,
    }
    base = finished(out, spec, "goyal", 256)
    assert len({t.params["base_lr"] for t in base}) == 2  # two different draws
    base_lr = min(base, key=lambda t: t.value).params["base_lr"]
    mtimes = {}
    for (method, b), row in cells.items():
        (t,) = [t for t in finished(out, spec, method, b) if t.number == row["trial"]]
        run = trial_dir(out, method, b, t.number)
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert config["data"]["val_size"] == 400 and summary["val_size"] == 400
        assert summary["val_top1"] == pytest.approx(t.user_attrs["val_top1"])
        # target 99% is not reached: the value is the run's steps plus the penalty for the gap
        steps = (2000 - 400) // b
        assert summary["steps"] == steps and summary["steps_to_val_target"] is None
        assert t.value == pytest.approx(steps * (1 + (99.0 - summary["best_val_top1"]) / 100))
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals if e["kind"] == "eval"][-1] == steps
        mtimes[run] = (run / "summary.json").stat().st_mtime_ns
    assert cells["goyal", 512]["params"] == {} and summary  # a rule cell searches nothing
    peak = {
        k: json.loads((trial_dir(out, *k, 0) / "summary.json").read_text())["peak_lr"]
        for k in [("goyal", 512), ("no_scaling", 512)]
    }
    assert peak["goyal", 512] == pytest.approx(base_lr * 512 / 256)  # the linear rule from the tuned LR
    assert peak["no_scaling", 512] == pytest.approx(base_lr)  # the base batch's LR, unscaled
    table = (out / "tuned.md").read_text()
    assert "| goyal | 256 |" in table and (out / "steps_to_target.png").stat().st_size > 10_000

    # the same command with a third trial per cell: one new run directory at the base batch (rule
    # cells have their one trial), every earlier run untouched; and a second seed re-runs each cell's
    # chosen trial, its result kept in the study's storage
    spec = spec_for(out, methods=["goyal", "no_scaling"], trials=3, seeds=(0, 1))
    rows = run_tuned_sweep(spec, progress=lambda line: None)
    assert [r["trials"] for r in rows] == [3, 1, 1, 1]
    for r in rows:
        study = optuna.load_study(
            study_name=study_name(r["method"], r["global_batch_size"], spec), storage=spec.storage_url
        )
        confirm = study.user_attrs["confirm_s1"]
        confirm_dir = trial_dir(out, r["method"], r["global_batch_size"], 0).parent / f"confirm_s1_t{r['trial']:03d}"
        summary = json.loads((confirm_dir / "summary.json").read_text())
        assert confirm["trial"] == r["trial"] and confirm["top1"] == summary["top1"]
        assert json.loads((confirm_dir / "config.json").read_text())["train"]["seed"] == 1
        assert r["seeds"] == 2 and r["test_top1_min"] <= r["test_top1_mean"] <= r["test_top1_max"]
        assert study.user_attrs["protocol"]["val_size"] == 400
    for run, mtime in mtimes.items():
        assert (run / "summary.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (out / "goyal" / "b000256").glob("trial_???")) == [
        "trial_000",
        "trial_001",
        "trial_002",
    ]


def test_pruned_trial_stops_at_an_evaluation_and_diverged_trial_is_marked(tmp_path, monkeypatch):
    out = tmp_path / "prune"
    # a pruner that stops every trial at its first report: the trial's run gets SIGTERM there
    monkeypatch.setattr(tune, "_pruner", lambda spec, warmup_steps: optuna.pruners.ThresholdPruner(upper=-1.0))
    # 48 steps, 12 per epoch, evaluated every 3: stopped long before the end, but not inside its warmup
    # (0.9-1 epochs, drawn from the range given: 11-12 steps), where a longer warmup is behind by design
    spec = spec_for(
        out, batch_sizes=[128], trials=1, evals_per_epoch=4, epochs=4, search_ranges=(("warmup_epochs", 0.9, 1.0),)
    )
    assert run_tuned_sweep(spec, progress=lambda line: None) == []  # no completed trial: no row
    (t,) = finished(out, spec, "nesterov", 128)
    assert t.state == optuna.trial.TrialState.PRUNED and len(t.intermediate_values) >= 1
    run = trial_dir(out, "nesterov", 128, t.number)
    assert not (run / "summary.json").exists()  # stopped before its end
    assert list((run / "checkpoints").glob("*.pt"))  # but it checkpointed at the step (SIGTERM, exit 75)
    marker = json.loads((run / "pruned.json").read_text())  # and says why it stopped short
    assert marker["pruned_at_step"] == max(t.intermediate_values)
    assert marker["pruned_at_step"] == 12 and min(t.intermediate_values) == 3  # reported from step 3 on
    assert marker["val_top1"] == pytest.approx(
        100.0 - t.intermediate_values[marker["pruned_at_step"]]
    )  # error reported

    # a base LR of 1e5 diverges: the trial is pruned, marked diverged, and the study goes on
    monkeypatch.setattr(tune, "_pruner", lambda spec, warmup_steps: optuna.pruners.NopPruner())
    monkeypatch.setitem(
        tune.SPACES,
        "nesterov",
        lambda trial, epochs, batch: [
            f"optim.base_lr={trial.suggest_float('base_lr', 1e5, 2e5)}",
            "train.nonfinite_policy=stop",
        ],
    )
    spec = spec_for(out, batch_sizes=[256], trials=1)
    run_tuned_sweep(spec, progress=lambda line: None)
    (t,) = finished(out, spec, "nesterov", 256)
    assert t.state == optuna.trial.TrialState.PRUNED and "diverged" in t.user_attrs


def test_tune_refuses_bad_requests_before_any_trial(tmp_path):
    def sweep(*args):
        command = [sys.executable, "-m", "largebatch", "sweep", "--tune", *args, "--out", str(tmp_path / "x")]
        return clirun.subprocess_run(command, capture_output=True, text=True, timeout=120)

    proc = sweep("--methods", "nesterov,adam")
    assert proc.returncode == 2 and "method 'adam' is unknown" in proc.stderr and "Traceback" not in proc.stderr
    proc = sweep("--val-size", "0")
    assert proc.returncode == 2 and "validation split" in proc.stderr
    proc = sweep("--search-range", "base_lr=1,0.1")
    assert proc.returncode == 2 and "--search-range" in proc.stderr and "0 <= LOW < HIGH" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "study.db").exists()


def test_sigterm_to_the_sweep_checkpoints_the_trial_and_the_same_command_resumes_it(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "sig"
    cmd = [
        sys.executable,
        "-m",
        "largebatch",
        "sweep",
        "--tune",
        "--methods",
        "nesterov",
        "--batch-sizes",
        "128",
        "--epochs",
        "2",
        "--trials",
        "1",
        "--val-size",
        "400",
        "--target-val-top1",
        "99",
        "--pruner",
        "none",
        "--evals-per-epoch",
        "4",
        "--out",
        str(out),
    ]
    for item in SUBSET:
        cmd += ["--set", item]
    proc = clirun.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "nesterov" / "b000128" / "trial_000" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and '"eval"' in metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75 and "continues the study" in err and "Traceback" not in err, err[-2000:]
    run = out / "nesterov" / "b000128" / "trial_000"
    assert list((run / "checkpoints").glob("*.pt")) and not (run / "summary.json").exists()
    again = clirun.subprocess_run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 * ((2000 - 400) // 128)  # the interrupted trial finished in its own directory
    assert not (out / "nesterov" / "b000128" / "trial_001").exists()
    spec = spec_for(out, batch_sizes=[128], epochs=2)
    states = sorted(
        t.state.name
        for t in optuna.load_study(
            study_name=study_name("nesterov", 128, spec), storage=f"sqlite:///{out / 'study.db'}"
        ).get_trials()
    )
    assert states == ["COMPLETE", "FAIL"]  # the interrupted attempt and its resumption


def test_a_resumed_study_does_not_draw_its_first_parameters_again(tmp_path):
    """Each start of the sweep builds a new sampler; seeded by the study's name alone, a resumed study
    would draw the parameters of its first trials again (seen: a repeated 8-minute trial)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def first_draw():
        study = optuna.create_study(
            study_name="cell",
            storage=storage,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=tune.sampler_seed("cell", storage)),
        )
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        study.tell(trial, lr)
        return lr

    draws = [first_draw() for _ in range(3)]
    assert len(set(draws)) == 3, draws
    assert tune.sampler_seed("fresh", storage) == tune.sampler_seed("fresh", storage)  # deterministic
    # the default ranges keep the name's seed; other ranges draw another stream, in a new storage too
    wider = {"base_lr": (0.001, 1.0)}
    assert tune.sampler_seed("fresh", storage, {}) == tune.sampler_seed("fresh", storage)
    assert tune.sampler_seed("fresh", storage, wider) != tune.sampler_seed("fresh", storage)
    assert tune.sampler_seed("fresh", storage, wider) != tune.sampler_seed("fresh", storage, {"base_lr": (0.001, 2.0)})


def test_search_budget_draws_each_trials_length_and_scales_its_schedule(tmp_path):
    """Shallue et al. retune the decay schedule per batch: with --search-budget each trial draws its
    length in epochs, its warmup as a fraction of it, and its run's schedule is scaled to that length."""
    out = tmp_path / "budget"
    spec = spec_for(out, batch_sizes=[256], epochs=4, trials=2, search_budget=True)
    (row,) = run_tuned_sweep(spec, progress=lambda line: None)
    trials = finished(out, spec, "nesterov", 256)
    assert len(trials) == 2
    for t in trials:
        budget, fraction = t.params["budget_epochs"], t.params["warmup_fraction"]
        assert 1 <= budget <= 4 and 0.0 <= fraction <= 0.25 and t.user_attrs["budget_epochs"] == budget
        run = trial_dir(out, "nesterov", 256, t.number)
        config = json.loads((run / "config.json").read_text())
        assert config["train"]["epochs"] == budget
        assert config["schedule"]["warmup_epochs"] == pytest.approx(budget * fraction)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == budget * ((2000 - 400) // 256)
        # 99% is not reached: the miss scores from the cell's longest budget (4 epochs, 24 steps), so a
        # short trial never ranks above one that reaches the target
        assert t.value == pytest.approx(4 * 6 * (1 + (99.0 - summary["best_val_top1"]) / 100))
    assert min(t.params["budget_epochs"] for t in trials) < 4  # the sampler's seed is the study's name
    assert study_name("nesterov", 256, spec) == "nesterov-b256-steps-e4"  # the cell's longest budget names it
    study = optuna.load_study(study_name=study_name("nesterov", 256, spec), storage=spec.storage_url)
    assert study.user_attrs["protocol"]["search_budget"] is True and "budget_epochs" in row["params"]
    with pytest.raises(tune.SweepError, match="--search-budget"):
        run_tuned_sweep(spec_for(out, objective="accuracy", search_budget=True), progress=lambda line: None)


def test_search_range_replaces_a_range_and_a_study_keeps_its_own(tmp_path):
    """--search-range sets the range a parameter is drawn from; a study started with other ranges is
    refused before any trial runs (one study, one distribution), and an unknown name is refused."""
    out = tmp_path / "wide"
    ranges = (("base_lr", 1e-4, 2e-4), ("one_minus_momentum", 0.001, 0.002))
    spec = spec_for(out, batch_sizes=[256], trials=1, search_ranges=ranges)
    run_tuned_sweep(spec, progress=lambda line: None)
    (t,) = finished(out, spec, "nesterov", 256)
    lr, one_minus = t.distributions["base_lr"], t.distributions["one_minus_momentum"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 2e-4, True) and 1e-4 <= t.params["base_lr"] <= 2e-4
    assert (one_minus.low, one_minus.high) == (0.001, 0.002)
    assert t.distributions["warmup_epochs"].high == 0.5  # not named: the space's own range
    config = json.loads((trial_dir(out, "nesterov", 256, t.number) / "config.json").read_text())
    assert config["optim"]["base_lr"] == pytest.approx(t.params["base_lr"])
    assert config["optim"]["momentum"] == pytest.approx(1 - t.params["one_minus_momentum"])
    study = optuna.load_study(study_name=study_name("nesterov", 256, spec), storage=spec.storage_url)
    assert study.user_attrs["protocol"]["search_ranges"] == {
        "base_lr": [1e-4, 2e-4],
        "one_minus_momentum": [0.001, 0.002],
    }

    # the default ranges, or other ones, on the same storage: refused, and nothing runs
    for other in ((), (("base_lr", 1e-3, 1.0),), ranges[:1]):
        with pytest.raises(tune.SweepError, match=r"drew \w+ from \[0.00\d+, 0.00\d+\].*new --storage"):
            run_tuned_sweep(spec_for(out, batch_sizes=[256], trials=2, search_ranges=other), progress=lambda line: None)
    assert len(finished(out, spec, "nesterov", 256)) == 1 and not trial_dir(out, "nesterov", 256, 1).exists()
    with pytest.raises(tune.SweepError, match="not a parameter these methods search; they search base_lr, "):
        run_tuned_sweep(spec_for(tmp_path / "y", search_ranges=(("momentum", 0.9, 0.99),)), progress=lambda line: None)
