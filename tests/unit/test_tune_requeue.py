"""Which interrupted trials a resumed study runs again (the storage's records, no training)."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from largebatch.study.tune import requeue_interrupted

DIST = {"base_lr": FloatDistribution(1e-3, 10.0, log=True)}


def _add(study, state, lr, **attrs):
    values = None if state != TrialState.COMPLETE else [100.0]
    study.add_trial(
        create_trial(state=state, params={"base_lr": lr}, distributions=DIST, user_attrs=attrs, values=values)
    )


def _waiting(study):
    """What the queued trials run with: each one's suggested base LR and its user attributes."""
    seen = []

    def objective(trial):
        seen.append((trial.suggest_float("base_lr", 1e-3, 10.0, log=True), dict(trial.user_attrs)))
        return 1.0

    n = len(study.get_trials(states=(TrialState.WAITING,)))
    study.optimize(objective, n_trials=n)
    return seen


def test_a_run_interrupted_again_on_its_retry_is_queued_again():
    study = optuna.create_study()
    _add(study, TrialState.FAIL, 0.5, run_number=0, interrupted=True)  # first attempt of run 0
    _add(study, TrialState.FAIL, 0.5, run_number=0, resume_run_number=0, interrupted=True)  # its retry, stopped too
    _add(study, TrialState.COMPLETE, 0.2, run_number=2)
    assert requeue_interrupted(study) == [0]
    assert requeue_interrupted(study) == []  # queued once: the waiting trial is run 0's latest now
    assert _waiting(study) == [(0.5, {"resume_run_number": 0})]
    assert requeue_interrupted(study) == []  # the retry (now finished) is run 0's latest


def test_finished_failed_and_retried_runs_are_not_queued():
    study = optuna.create_study()
    _add(study, TrialState.FAIL, 0.5, run_number=0, interrupted=True)
    _add(study, TrialState.COMPLETE, 0.5, run_number=0, resume_run_number=0)  # its retry finished
    _add(study, TrialState.FAIL, 0.1, run_number=1)  # failed, not interrupted (killed or an error)
    _add(study, TrialState.PRUNED, 0.3, run_number=2)
    _add(study, TrialState.FAIL, 0.7, run_number=3, interrupted=True)
    assert requeue_interrupted(study) == [3]
    assert _waiting(study) == [(0.7, {"resume_run_number": 3})]
