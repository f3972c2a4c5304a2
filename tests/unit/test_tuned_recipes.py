"""The Fashion-MNIST large-batch recipes carry the values of the trial docs/recipes.md names: the best
trial (validation top-1) of their study in docs/results/recipe_tuning_2048_e9/. A recipe edited without
its trial, or a storage re-run without the recipe following, fails here."""

from pathlib import Path

import pytest

from largebatch.recipes import get_recipe

optuna = pytest.importorskip("optuna")

STORAGES = Path(__file__).resolve().parents[2] / "docs" / "results" / "recipe_tuning_2048_e9"

_LR = {"base_lr": ("optim.base_lr", lambda v: v)}
_MOMENTUM = {"one_minus_momentum": ("optim.momentum", lambda v: 1 - v)}
_WARMUP = {"warmup_epochs": ("schedule.warmup_epochs", lambda v: v)}

# recipe -> (storage folder, study, {trial parameter: (config key, how the recipe holds it)})
TUNED = {
    "nado2021_nesterov_fashion_mnist": ("cosine", "nesterov-b2048-accuracy-e9", _LR | _MOMENTUM | _WARMUP),
    "you2018_lars_fashion_mnist": ("poly", "lars-b2048-accuracy-e9", _LR | _MOMENTUM | _WARMUP),
    "lamb_fashion_mnist": ("poly", "lamb-b2048-accuracy-e9", {"lr": ("optim.base_lr", lambda v: v)} | _WARMUP),
    "akiba2017_fashion_mnist": ("slow_start", "akiba-b2048-accuracy-e9", _LR | _MOMENTUM),
    "mikami2018_fashion_mnist": ("poly", "mikami-b2048-accuracy-e9", _LR | _MOMENTUM | _WARMUP),
}


def _get(cfg, key: str) -> float:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("recipe", sorted(TUNED))
def test_recipe_holds_its_best_trials_values(recipe):
    folder, study_name, params = TUNED[recipe]
    storage = f"sqlite:///{STORAGES / folder / 'study.db'}"
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = study.best_trial  # the highest validation top-1 (the study maximizes it)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert best.user_attrs["val_top1"] == pytest.approx(best.value)
    cfg = get_recipe(recipe)
    assert cfg.train.epochs == 9
    assert max([cfg.train.global_batch_size] + [s.global_batch_size for s in cfg.train.batch_schedule]) == 2048
    for param, (key, held_as) in params.items():
        # the recipes round to 4 significant digits
        assert _get(cfg, key) == pytest.approx(held_as(best.params[param]), rel=1e-3), (recipe, param)
