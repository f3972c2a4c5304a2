"""The method records of the study (largebatch.study.methods) give the sweep's METHODS and the tuned
sweep's SPACES and FIXED_METHODS exactly as they were written out by hand before the records existed:
the same recipes, labels, overrides and sources, and every search space draws the same parameters
from the same ranges in the same order and makes the same ``--set`` items (trials stored by earlier
versions are read back by these names and ranges)."""

import math

import pytest

from largebatch.config import REFERENCE_LRS
from largebatch.recipes import get_recipe
from largebatch.study import methods, sweep, tune

# largebatch.study.sweep.METHODS before the records: (recipe, label, overrides, source)
BEFORE = {
    "no_scaling": (
        "goyal2017_fashion_mnist_28px",
        "SGD, no LR scaling",
        ("optim.lr_scaling=none",),
        "base LR 0.4 at every batch (Goyal et al. 2017 sec. 2.1 without the rule)",
    ),
    "linear_no_warmup": (
        "goyal2017_fashion_mnist_28px",
        "SGD, linear scaling, no warmup",
        ("schedule.warmup_epochs=0",),
        "Goyal et al. 2017 Table 1 'no warmup'",
    ),
    "goyal": (
        "goyal2017_fashion_mnist_28px",
        "SGD, linear scaling + gradual warmup (Goyal)",
        (),
        "Goyal et al. 2017 sec. 2.1-2.2",
    ),
    "nesterov": (
        "goyal2017_fashion_mnist_28px",
        "Nesterov momentum, retuned per batch (Nado)",
        (),
        "Nado et al. 2021 sec. 3: Nesterov momentum with LR, momentum and warmup tuned at every batch",
    ),
    "lars": ("you2018_lars_fashion_mnist", "LARS (You)", (), "You et al. 2017, Algorithm 1"),
    "lamb": ("lamb_fashion_mnist", "LAMB", (), "You et al. 2019"),
    "akiba": ("akiba2017_fashion_mnist", "RMSprop warm-up + slow start (Akiba)", (), "Akiba et al. 2017"),
    "mikami": (
        "mikami2018_fashion_mnist",
        "batch-size control, B/4 then B (Mikami)",
        (),
        "Mikami et al. 2018 sec. 3.1: the batch grows 4x after the first third of the epochs",
    ),
}


# largebatch.study.tune's search spaces before the records, as they were written
def _lu(trial, name, low, high):
    return trial.suggest_float(name, low, high, log=True)


def _warmup(trial, epochs):
    return trial.suggest_float("warmup_epochs", 0.0, max(0.5, 0.25 * epochs))


def _momentum(trial):
    return 1.0 - _lu(trial, "one_minus_momentum", 0.01, 0.2)


def _sgd(trial, epochs, batch, low=0.01, high=3.0):
    lr = _lu(trial, "base_lr", low, high)
    return [
        f"optim.base_lr={lr}",
        "optim.base_batch_size=256",
        "optim.lr_scaling=linear",
        f"schedule.warmup_epochs={_warmup(trial, epochs)}",
        f"optim.momentum={_momentum(trial)}",
    ]


def _lars(trial, epochs, batch):
    return _sgd(trial, epochs, batch, 0.1, 30.0)


def _lamb(trial, epochs, batch):
    lr = _lu(trial, "lr", 1e-3, 0.2)
    return [
        f"optim.base_lr={lr}",
        f"optim.base_batch_size={batch}",
        "optim.lr_scaling=linear",
        f"schedule.warmup_epochs={_warmup(trial, epochs)}",
    ]


def _akiba(trial, epochs, batch):
    lr = _lu(trial, "base_lr", 0.02, 3.0)
    return [
        f"optim.base_lr={lr}",
        "optim.base_batch_size=256",
        "optim.lr_scaling=linear",
        f"optim.momentum={_momentum(trial)}",
    ]


def _goyal_base(trial, epochs, batch):
    return [f"optim.base_lr={_lu(trial, 'base_lr', 0.01, 3.0)}", "optim.base_batch_size=256", "optim.lr_scaling=linear"]


SPACES_BEFORE = {
    "nesterov": _sgd,
    "lars": _lars,
    "lamb": _lamb,
    "akiba": _akiba,
    "mikami": _lars,
    "goyal": _goyal_base,
}
FIXED_BEFORE = ("goyal", "no_scaling", "linear_no_warmup")


class Trial:
    """Records each draw; returns a value inside the range that depends on the call's position."""

    def __init__(self):
        self.calls = []

    def suggest_float(self, name, low, high, *, log=False):
        self.calls.append((name, low, high, log))
        f = 0.1 + 0.2 * len(self.calls)
        return math.exp(math.log(low) + f * (math.log(high) - math.log(low))) if log else low + f * (high - low)


def test_the_records_give_todays_methods():
    assert list(sweep.METHODS) == list(BEFORE)
    assert {k: (m.recipe, m.label, m.overrides, m.source) for k, m in sweep.METHODS.items()} == BEFORE
    assert sweep.METHODS is methods.METHODS and sweep.Method is methods.Method
    assert sweep.METHODS["goyal"] == sweep.Method(*BEFORE["goyal"])  # the record compares as the 4 fields


def test_the_records_give_todays_search_spaces_and_rule_methods():
    assert set(tune.SPACES) == set(SPACES_BEFORE) and tune.SPACES is methods.SPACES
    assert sorted(tune.FIXED_METHODS) == sorted(FIXED_BEFORE)
    for name in sweep.METHODS:
        before = SPACES_BEFORE.get(name, _goyal_base)
        for epochs in (1, 2, 4, 9, 16):
            for batch in (128, 512, 4096):
                old, new = Trial(), Trial()
                assert methods.space_of(name)(new, epochs, batch) == before(old, epochs, batch), (name, epochs)
                assert new.calls == old.calls, (name, epochs, batch)


@pytest.mark.parametrize("name", ["no_scaling"])
def test_the_lr_a_method_names_is_derived_from_the_reference_lr(name):
    # no_scaling keeps the recipe's base LR at every batch: the optimizer switch's reference LR of SGD,
    # taken from that recipe (largebatch.config.reference_lr)
    assert get_recipe(sweep.METHODS[name].recipe).optim.base_lr == REFERENCE_LRS["sgd"].base_lr
    assert f"base LR {REFERENCE_LRS['sgd'].base_lr:g} at every batch" in sweep.METHODS[name].source
