"""Trials run against a copy of a study's storage (a machine that cannot reach it) come back with
merge_trials: only the finished ones begun on that machine, tagged, once."""

import datetime as dt
import shutil

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from largebatch.study.tune import merge_trials

DIST = {"base_lr": FloatDistribution(1e-3, 10.0, log=True)}


def add(study, state, lr, value=None):
    study.add_trial(
        create_trial(state=state, params={"base_lr": lr}, distributions=DIST, value=value, user_attrs={"lr": lr})
    )


def test_only_the_copys_new_finished_trials_come_back_tagged_and_once(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = f"sqlite:///{tmp_path / 'main.db'}"
    study = optuna.create_study(study_name="lars-b512-steps-e8", storage=target)
    study.set_user_attr("protocol", {"val_size": 5000})
    add(study, TrialState.COMPLETE, 0.1, 400.0)
    add(study, TrialState.PRUNED, 0.2)
    shutil.copy(tmp_path / "main.db", tmp_path / "copy.db")
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    since = dt.datetime.now()  # noqa: DTZ005 (Optuna stores naive local times)

    remote = optuna.load_study(study_name="lars-b512-steps-e8", storage=copy)
    add(remote, TrialState.COMPLETE, 0.3, 250.0)
    add(remote, TrialState.PRUNED, 0.4)
    add(remote, TrialState.FAIL, 0.5)  # stopped by SIGTERM: not a result
    new = optuna.create_study(study_name="lars-b1024-steps-e8", storage=copy)  # a cell the copy began
    new.set_user_attr("protocol", {"val_size": 5000})
    add(new, TrialState.COMPLETE, 0.6, 200.0)
    # meanwhile the main storage gained a trial of its own
    add(optuna.load_study(study_name="lars-b512-steps-e8", storage=target), TrialState.COMPLETE, 0.7, 500.0)

    seen = []
    added = merge_trials(
        copy, target, since=since, attrs={"machine": "H200"}, attrs_of=lambda n, t, k: seen.append(k) or {"k": k}
    )
    assert added == [("lars-b512-steps-e8", 2, 3), ("lars-b512-steps-e8", 3, 4), ("lars-b1024-steps-e8", 0, 0)]
    assert seen == [3, 4, 0]
    main = optuna.load_study(study_name="lars-b512-steps-e8", storage=target)
    got = [(t.number, t.state, t.value, t.user_attrs["lr"], t.user_attrs.get("machine")) for t in main.trials]
    assert got == [
        (0, TrialState.COMPLETE, 400.0, 0.1, None),
        (1, TrialState.PRUNED, None, 0.2, None),
        (2, TrialState.COMPLETE, 500.0, 0.7, None),
        (3, TrialState.COMPLETE, 250.0, 0.3, "H200"),
        (4, TrialState.PRUNED, None, 0.4, "H200"),
    ]
    assert main.trials[3].user_attrs["k"] == 3 and main.best_trial.number == 3
    assert optuna.load_study(study_name="lars-b1024-steps-e8", storage=target).user_attrs["protocol"] == {
        "val_size": 5000
    }
    assert merge_trials(copy, target, since=since, attrs={"machine": "H200"}) == []  # twice: nothing more
