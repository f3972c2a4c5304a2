"""Config overrides, validation and the derived plan."""

import dataclasses
import math
import os
import re

import pytest
import torch

from largebatch.config import (
    ConfigError,
    _field_type_name,
    all_keys,
    apply_overrides,
    config_from_dict,
    config_hash,
    get_key,
    to_dict,
    validate,
)
from largebatch.plan import resolve
from largebatch.recipes import DEFAULT_RECIPE, get_recipe, recipe_names


def default():
    return get_recipe(DEFAULT_RECIPE)


def test_required_keys_exist():
    cfg = default()
    for key in (
        "data.name",
        "data.root",
        "model.name",
        "train.epochs",
        "train.global_batch_size",
        "train.bn.batch_size",
        "train.seed",
        "optim.name",
        "optim.base_lr",
        "optim.base_batch_size",
        "schedule.warmup_epochs",
    ):
        node = cfg
        for part in key.split("."):
            assert hasattr(node, part), key
            node = getattr(node, part)


def test_override_types_are_converted():
    cfg = apply_overrides(
        default(), ["optim.base_lr=0.2", "train.epochs=3", "schedule.decay_epochs=[1,2]", "model.channels_last=false"]
    )
    assert cfg.optim.base_lr == 0.2 and cfg.train.epochs == 3
    assert cfg.schedule.decay_epochs == [1.0, 2.0] and cfg.model.channels_last is False


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError) as err:
        apply_overrides(default(), ["optim.base_lr=abc"])
    msg = str(err.value)
    assert "optim.base_lr" in msg and "'abc'" in msg and "float" in msg


def test_unknown_key_lists_accepted_keys():
    with pytest.raises(ConfigError) as err:
        apply_overrides(default(), ["optim.learning_rate=1"])
    msg = str(err.value)
    assert "optim.learning_rate" in msg and "optim.base_lr" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown config key 'trian.epochs'"):
        apply_overrides(default(), ["trian.epochs=1"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(default(), ["train.epochs"])


def test_plan_of_default_recipe():
    plan = resolve(default(), 2)
    assert plan.per_worker_batch_size == 256 and plan.accumulation_steps == 1
    assert plan.bn_groups_per_micro_batch == 8 and plan.simulated_workers == 16
    assert plan.peak_lr == pytest.approx(0.8)  # 0.4 per 256, linear scaling


def test_auto_accumulation_keeps_micro_batch_bound():
    cfg = apply_overrides(get_recipe("goyal2017_resnet50_imagenet_8k"), ["data.root=/data/imagenet"])
    plan = resolve(cfg, 8)  # one 8-GPU server: 1024 per worker, at most 256 per forward pass
    assert (plan.per_worker_batch_size, plan.accumulation_steps, plan.micro_batch_size) == (1024, 4, 256)
    plan = resolve(cfg, 256)  # the paper's 256 workers x 32
    assert (plan.per_worker_batch_size, plan.accumulation_steps, plan.bn_groups_per_micro_batch) == (32, 1, 1)
    assert plan.simulated_workers == 256 and plan.peak_lr == pytest.approx(3.2)


@pytest.mark.parametrize(
    "overrides, world, fragment",
    [
        (["train.global_batch_size=513"], 2, "does not split evenly over 2 workers"),
        (["train.global_batch_size=528"], 2, "does not split into 2 workers x BN groups"),
        (["train.accumulation_steps=3"], 2, "does not divide the per-worker batch 256"),
        (["train.accumulation_steps=4", "train.bn.batch_size=128"], 2, "does not divide the micro-batch of 64"),
        (["optim.base_lr=-1"], 2, "optim.base_lr=-1.0 is invalid"),
        (["optim.momentum=1.5"], 2, "optim.momentum"),
        (["schedule.decay_epochs=[5,2]"], 2, "increasing list"),
        (["data.name=cifar"], 2, "one of fashion_mnist, synthetic, imagefolder"),
        (["train.epochs=0"], 2, "train.epochs=0 is invalid: a positive integer"),
        (["train.val_at_steps=[4, 0]", "data.val_size=100"], 2, "integers >= 1"),
        (["train.val_at_steps=[4]", "data.val_size=0"], 2, "unless data.val_size > 0"),
    ],
)
def test_contradictions(overrides, world, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        resolve(apply_overrides(default(), overrides), world)


def test_imagefolder_needs_root():
    with pytest.raises(ConfigError, match="data.root"):
        resolve(get_recipe("goyal2017_resnet50_imagenet_8k"), 8)  # recipe leaves root empty


def test_every_recipe_round_trips_and_names_itself():
    for name in recipe_names():
        cfg = get_recipe(name)
        assert cfg.recipe == name and cfg.description and cfg.source
        back = config_from_dict(to_dict(cfg))
        assert config_hash(back) == config_hash(cfg)


def test_a_reworded_recipe_description_still_resumes_but_a_changed_value_does_not():
    from largebatch.config import config_mismatch

    cfg = get_recipe("lamb_fashion_mnist")
    old = to_dict(cfg)
    old["source"], old["description"] = "an older source line", "an older description"
    assert config_mismatch(cfg, old, "old.pt") is None
    assert config_hash(config_from_dict(old)) == config_hash(cfg)
    old["optim"]["base_lr"] = cfg.optim.base_lr * 2
    assert "optim.base_lr: checkpoint" in config_mismatch(cfg, old, "old.pt")
    assert config_hash(config_from_dict(old)) != config_hash(cfg)


def test_unknown_recipe():
    with pytest.raises(KeyError, match="known recipes"):
        get_recipe("nope")


def test_lr_scaling_rules():
    cfg = apply_overrides(get_recipe("lamb_resnet50_imagenet_16k"), ["data.root=/data/imagenet"])
    assert resolve(cfg, 8).peak_lr == pytest.approx(0.01)  # sqrt: 0.00125 * sqrt(16384 / 256)
    cfg = apply_overrides(cfg, ["optim.lr_scaling=linear"])
    assert resolve(cfg, 8).peak_lr == pytest.approx(0.08)
    cfg = apply_overrides(cfg, ["optim.lr_scaling=none"])
    assert resolve(cfg, 8).peak_lr == pytest.approx(0.00125)
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        resolve(apply_overrides(cfg, ["optim.lr_scaling=cubic"]), 8)


def test_every_recipe_resolves_for_its_workers():
    for name in recipe_names():
        cfg = apply_overrides(
            get_recipe(name), ["data.root=/data"] if get_recipe(name).data.name == "imagefolder" else []
        )
        plan = resolve(cfg, cfg.train.nproc)
        assert plan.global_batch_size == cfg.train.global_batch_size and plan.bn_batch_size == cfg.train.bn.batch_size


def test_mikami_recipe_keeps_2176_workers_across_the_switch():
    from largebatch.plan import resolve_stages

    cfg = apply_overrides(get_recipe("mikami2018_resnet50_imagenet_34k_68k"), ["data.root=/data"])
    stages = resolve_stages(cfg, cfg.train.nproc)
    assert [
        (s.start_epoch, s.plan.global_batch_size, s.plan.bn_batch_size, s.plan.simulated_workers) for s in stages
    ] == [(0, 34816, 16, 2176), (5, 69632, 32, 2176)]
    assert [round(s.plan.peak_lr, 1) for s in stages] == [29.2, 41.2]  # sqrt rule from 10.0 at 4096
    assert cfg.train.label_smoothing == 0.1


SCHED = "train.batch_schedule=[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 4, global_batch_size: 2048}]"


def test_batch_schedule_plans_each_stage():
    from largebatch.plan import resolve_stages

    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), [SCHED])
    stages = resolve_stages(cfg, 2)
    assert [(s.start_epoch, s.plan.global_batch_size, s.plan.accumulation_steps) for s in stages] == [
        (0, 512, 1),
        (4, 2048, 4),
    ]
    assert stages[1].plan.peak_lr == pytest.approx(0.4 * 2048 / 256)  # linear rule by default
    assert resolve(cfg, 2) == stages[0].plan
    cfg = apply_overrides(
        cfg,
        [
            "train.batch_schedule=[{start_epoch: 0, global_batch_size: 512}, "
            "{start_epoch: 4, global_batch_size: 2048, lr_scaling: sqrt, bn_batch_size: 64}]"
        ],
    )
    late = resolve_stages(cfg, 2)[1].plan
    assert late.peak_lr == pytest.approx(0.4 * (2048 / 256) ** 0.5) and late.bn_batch_size == 64


@pytest.mark.parametrize(
    "schedule,fragment",
    [
        ("[{start_epoch: 1, global_batch_size: 512}]", "batch_schedule[0].start_epoch=1"),
        ("[{start_epoch: 0, global_batch_size: 1024}]", "equal to train.global_batch_size=512"),
        (
            "[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 0, global_batch_size: 1024}]",
            "batch_schedule[1].start_epoch=0",
        ),
        (
            "[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 9, global_batch_size: 1024}]",
            "before train.epochs=9",
        ),
        (
            "[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 3, global_batch_size: 1000}]",
            "batch_schedule[1].global_batch_size=1000",
        ),
        (
            "[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 3, global_batch_size: 1024, lr_scaling: cubic}]",
            "lr_scaling='cubic'",
        ),
    ],
)
def test_batch_schedule_errors_name_the_stage(schedule, fragment):
    cfg = apply_overrides(get_recipe("goyal2017_fashion_mnist_28px"), [f"train.batch_schedule={schedule}"])  # 9 epochs
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        resolve(cfg, 2)


def test_bn_options_are_validated():
    base = get_recipe(DEFAULT_RECIPE)
    for overrides, fragment in (
        (["train.bn.statistics=ema"], "train.bn.statistics"),
        (["train.bn.variance_averaging=pooled"], "unless train.bn.statistics=last_batch"),
        (["train.bn.precise_batches=0"], "train.bn.precise_batches"),
        (["train.bn.sync_ranks=3"], "does not divide the 2 processes"),
        (["train.bn.sync_ranks=2", "train.bn.batch_size=33"], "does not split over train.bn.sync_ranks=2"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            resolve(apply_overrides(base, overrides), 2)
    plan = resolve(apply_overrides(base, ["train.bn.sync_ranks=2"]), 2)
    assert (plan.bn_batch_size, plan.bn_local_batch_size, plan.bn_groups_per_micro_batch) == (32, 16, 16)
    assert plan.simulated_workers == 512 // 32


def test_data_check_uses_the_largest_stage(monkeypatch):
    from largebatch.data import check_data

    cfg = apply_overrides(
        get_recipe(DEFAULT_RECIPE), ["data.name=synthetic", "data.synthetic.train_samples=1024", SCHED]
    )
    with pytest.raises(ConfigError, match=r"train.batch_schedule\[1\].global_batch_size=2048 exceeds the 1024"):
        check_data(cfg)


def test_switching_optim_name_takes_the_reference_lr_unless_an_lr_key_is_given():
    from largebatch.config import REFERENCE_LRS, apply_overrides
    from largebatch.recipes import get_recipe

    base = get_recipe("goyal2017_fashion_mnist")  # SGD, 0.4 per 256
    for name, ref in REFERENCE_LRS.items():
        cfg = apply_overrides(base, [f"optim.name={name}"])
        want = (
            (base.optim.base_lr, base.optim.base_batch_size, base.optim.lr_scaling)
            if name == base.optim.name
            else (ref.base_lr, ref.base_batch_size, ref.lr_scaling)
        )
        assert (cfg.optim.base_lr, cfg.optim.base_batch_size, cfg.optim.lr_scaling) == want, name
    given = apply_overrides(base, ["optim.name=lars", "optim.base_lr=1.5"])
    assert (given.optim.base_lr, given.optim.base_batch_size, given.optim.lr_scaling) == (1.5, 256, "linear")
    scaled = apply_overrides(base, ["optim.name=lamb", "optim.lr_scaling=none"])
    assert (scaled.optim.base_lr, scaled.optim.lr_scaling) == (0.4, "none")  # one LR key given: all kept
    # a recipe already on LARS keeps its own LR when the name is restated
    lars = get_recipe("mlperf_lars_fashion_mnist")
    assert apply_overrides(lars, ["optim.name=lars"]).optim.base_lr == lars.optim.base_lr


def _flatten_to_legacy(data: dict) -> dict:
    """A config dict in the layout written before the optimizer, schedule, data-source and BN settings
    were nested (what older checkpoints and run directories hold)."""
    from largebatch.config import LEGACY_KEYS

    out = {sec: dict(val) if isinstance(val, dict) else val for sec, val in data.items()}
    for old, new in LEGACY_KEYS.items():
        section, flat = old.split(".")
        _, sub, leaf = new.split(".")
        out[section][flat] = out[section][sub][leaf]
    for new in LEGACY_KEYS.values():
        section, sub, _ = new.split(".")
        out[section].pop(sub, None)
    return out


@pytest.mark.parametrize("recipe", ["lamb_fashion_mnist", "akiba2017_fashion_mnist", "mlperf_lars_fashion_mnist"])
def test_legacy_flat_configs_still_load_compare_and_take_overrides(recipe):
    from largebatch.config import apply_overrides, config_from_dict, config_mismatch, to_dict
    from largebatch.train.build import check_resumable
    from largebatch.train.precision import choose_precision

    cfg = get_recipe(recipe)
    legacy = _flatten_to_legacy(to_dict(cfg))
    assert "lars" not in legacy["optim"] and "lars_eps" in legacy["optim"] and "poly_power" in legacy["schedule"]
    assert "bn" not in legacy["train"] and legacy["train"]["bn_batch_size"] == cfg.train.bn.batch_size
    assert config_from_dict(legacy) == cfg  # an old checkpoint's or run's config reads as today's
    assert config_mismatch(cfg, legacy, "old.pt") is None
    # resuming an old checkpoint: compared key by key, not by the hash of the old layout
    check_resumable(
        cfg,
        {"config": legacy, "config_hash": "0123456789abcdef", "precision": "fp32"},
        "old.pt",
        choose_precision("fp32", torch.device("cpu")),
    )
    changed = dict(legacy, optim={**legacy["optim"], "lars_eps": 0.5})
    assert "optim.lars: checkpoint" in config_mismatch(cfg, changed, "old.pt")
    # a --set line with a legacy key names the nested key
    got = apply_overrides(
        cfg,
        [
            "optim.lars_eps=0.25",
            "schedule.poly_power=3",
            "data.synthetic_channels=3",
            "train.bn_statistics=precise",
            "train.precise_bn_batches=4",
        ],
    )
    assert got.optim.lars.eps == 0.25 and got.schedule.poly.power == 3.0 and got.data.synthetic.channels == 3
    assert got.train.bn.statistics == "precise" and got.train.bn.precise_batches == 4


def test_every_float_key_refuses_inf_and_nan():
    """optim.weight_decay=.inf passed `>= 0` and reached the optimizers; every float must be finite."""
    keys = [k for k in all_keys() if "float" in _field_type_name(k)]
    assert {"optim.weight_decay", "optim.lars.trust_coefficient", "schedule.warmup_start_lr"} <= set(keys)
    for key in keys:
        for bad in (math.inf, -math.inf, math.nan):
            cfg = default()
            *parents, leaf = key.split(".")
            setattr(get_key(cfg, ".".join(parents)), leaf, [bad] if "list" in _field_type_name(key) else bad)
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.* is invalid: .*finite"):
                validate(cfg)
    with pytest.raises(ConfigError, match=r"^optim\.weight_decay=inf is invalid: a finite number, not inf or nan$"):
        validate(apply_overrides(default(), ["optim.weight_decay=.inf"]))  # as --set gives it
    with pytest.raises(ConfigError, match=r"train\.batch_schedule\[0\]\.peak_lr=inf is invalid: a finite number"):
        validate(
            apply_overrides(
                default(), ["train.batch_schedule=[{start_epoch: 0, global_batch_size: 512, peak_lr: .inf}]"]
            )
        )


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("schedule.poly.power=-1", "schedule.poly.power=-1.0 is invalid: a float >= 0"),
        ("model.fc_init_std=-0.5", "model.fc_init_std=-0.5 is invalid: a float >= 0"),
        ("schedule.decay_end_epochs=0", "schedule.decay_end_epochs=0.0 is invalid: null (train.epochs) or a float > 0"),
        ("schedule.slow_start.factors=[1, -1, 1, 1]", "schedule.slow_start.factors=[1.0, -1.0, 1.0, 1.0] is invalid"),
    ],
)
def test_schedule_and_init_floats_have_ranges(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        validate(apply_overrides(default(), [override]))


def test_seed_must_fit_63_bits():
    """train.seed=10**23 overflowed torch.manual_seed inside the workers."""
    for seed in (10**23, 2**63, -1):
        with pytest.raises(ConfigError, match=rf"train\.seed={seed} is invalid: an integer in \[0, 2\*\*63 - 1"):
            validate(apply_overrides(default(), [f"train.seed={seed}"]))
    with pytest.raises(ConfigError, match=r"train\.seed=1e\+23 is invalid"):  # a float through the Python API
        validate(dataclasses.replace(default(), train=dataclasses.replace(default().train, seed=1e23)))
    for seed in (0, 2**63 - 1):
        validate(apply_overrides(default(), [f"train.seed={seed}"]))


def test_threads_per_worker_is_bounded_by_the_cores(monkeypatch):
    """100000 threads per worker hung 30 s, then failed with 'Resource temporarily unavailable'."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    validate(apply_overrides(default(), ["train.threads_per_worker=8"]))  # 4 per core: oversubscribed, legal
    for n in (9, 100000):
        with pytest.raises(ConfigError, match=rf"train\.threads_per_worker={n} is invalid: an integer in \[0, 8\]"):
            validate(apply_overrides(default(), [f"train.threads_per_worker={n}"]))


def test_absurd_epoch_counts_are_refused():
    """train.epochs=10**12 was accepted and the workers grew by 10 MB/s laying out the epochs."""
    validate(apply_overrides(default(), ["train.epochs=1000000"]))
    for epochs in (1_000_001, 10**12):
        with pytest.raises(
            ConfigError, match=rf"train\.epochs={epochs} is invalid: a positive integer up to 1,000,000"
        ):
            validate(apply_overrides(default(), [f"train.epochs={epochs}"]))


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("&a [*a, *a]", "is a recursive YAML alias"),
        ("[" * 500 + "]" * 500, "nested too deeply"),
        ("[" * 40 + "]" * 40, "nested more than 32 levels deep"),
        ("[" + "1, " * 2000, "(6001 characters)"),  # a long bad value is cut short in the message
    ],
)
def test_a_recursive_or_deep_yaml_value_is_one_line(value, fragment):
    """--set values are YAML: a value nested 500 deep was a RecursionError traceback."""
    with pytest.raises(ConfigError) as err:
        apply_overrides(default(), [f"schedule.decay_epochs={value}"])
    msg = str(err.value)
    assert msg.startswith("config key 'schedule.decay_epochs'") and fragment in msg, msg
    assert "\n" not in msg and len(msg) < 400
