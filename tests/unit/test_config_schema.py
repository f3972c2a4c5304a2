"""The config package's metadata-driven parts: epoch-valued fields and scale_epochs, the generic
validator, the one-pass typed dict behind the hash, the reference-LR step and the batch-schedule
rules that validate() owns."""

import dataclasses
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from largebatch.config import (
    CHOICE_KEYS,
    EPOCHS,
    REFERENCE_LRS,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    epoch_keys,
    merge_overrides,
    scale_epochs,
    to_dict,
    typed_dict,
    validate,
    with_reference_lr,
)
from largebatch.config.fields import accepted_text, hints, leaves, list_item_type, scalar_type
from largebatch.recipes import DEFAULT_RECIPE, get_recipe, recipe_names


def default():
    return get_recipe(DEFAULT_RECIPE)


def _sections(cls=Config, seen=None):
    """Every dataclass of the config tree, the items of lists of sections included."""
    seen = [] if seen is None else seen
    if cls in seen:
        return seen
    seen.append(cls)
    for hint in hints(cls).values():
        inner = list_item_type(hint) or hint
        if dataclasses.is_dataclass(inner):
            _sections(inner, seen)
    return seen


def test_every_numeric_field_named_in_epochs_is_marked_epoch_valued():
    """A new ``*_epochs`` setting must carry unit=EPOCHS, or the sweep would not scale it (as it once
    left schedule.decay_end_epochs unscaled)."""
    found = []
    for cls in _sections():
        for f in dataclasses.fields(cls):
            if scalar_type(hints(cls)[f.name]) not in (int, float):
                continue
            named = f.name == "epochs" or f.name.endswith(("_epochs", "_epoch"))
            assert named == (f.metadata.get("unit") == EPOCHS), f"{cls.__name__}.{f.name}"
            found += [f"{cls.__name__}.{f.name}"] if named else []
    assert {
        "ScheduleConfig.decay_end_epochs",
        "ScheduleConfig.decay_epochs",
        "SlowStartConfig.epochs",
        "RMSpropWarmupConfig.center_epochs",
        "RMSpropWarmupConfig.period_epochs",
        "BatchStage.start_epoch",
        "ResizeStage.start_epoch",
        "TrainConfig.eval_every_epochs",
    } <= set(found)


def _stretchable():
    """The default recipe with every epoch-valued setting set, batch and resize stages included."""
    return apply_overrides(
        default(),
        [
            "train.epochs=9",
            "schedule.name=poly",
            "schedule.decay_end_epochs=7.5",
            "train.batch_schedule=[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 5, global_batch_size: 1024}]",
            "data.resize_stages=[{start_epoch: 0, image_size_px: 20}, {start_epoch: 4, image_size_px: 0}]",
            "train.eval_every_epochs=3",
        ],
    )


def _expected(leaf, factor):
    value = leaf.value
    if value is None:
        return None
    if isinstance(value, list):
        return [_expected(dataclasses.replace(leaf, value=v), factor) for v in value]
    if scalar_type(leaf.hint) is int:
        return max(leaf.meta.get("ge", -1), round(value * factor))
    return value * factor


def test_scale_epochs_scales_every_epoch_valued_field_and_nothing_else():
    cfg = _stretchable()
    keys = epoch_keys(cfg)
    assert "schedule.decay_end_epochs" in keys and "train.batch_schedule[1].start_epoch" in keys
    assert "data.resize_stages[1].start_epoch" in keys
    scaled = scale_epochs(cfg, 1 / 3)
    for before, after in zip(leaves(cfg), leaves(scaled), strict=True):
        assert before.key == after.key
        if before.meta.get("unit") == EPOCHS:
            assert after.value == pytest.approx(_expected(before, 1 / 3)), before.key
        else:
            assert after.value == before.value, before.key
    assert scale_epochs(cfg, 0.01).train.eval_every_epochs == 1  # an interval stays at its lower bound
    assert to_dict(cfg) == to_dict(_stretchable())  # the input is not changed


def test_the_sweep_scales_every_epoch_valued_setting():
    """The sweep's schedule scaling left schedule.decay_end_epochs (and the resize stages) at the
    recipe's epochs; it now follows the fields marked epoch-valued."""
    from largebatch.study.sweep import _scale_epochs

    cfg = _stretchable()
    scaled = _scale_epochs(cfg, 3)
    own = {"train.epochs": 3, "train.eval_every_epochs": 3, "train.checkpoint_every_epochs": 3}
    for before, after in zip(leaves(cfg), leaves(scaled), strict=True):
        if before.key in own:
            assert after.value == own[before.key]
        elif before.meta.get("unit") == EPOCHS:
            assert after.value == pytest.approx(_expected(before, 3 / 9)), before.key
        else:
            assert after.value == before.value, before.key
    assert scaled.schedule.decay_end_epochs == pytest.approx(2.5)


def test_the_sweep_scales_the_decay_end_of_a_poly_schedule():
    """The sweep's old _scale_epochs left schedule.decay_end_epochs at the recipe's epochs: a decay
    ending at epoch 7.5 of 9 ended after a 3-epoch run, whose LR never reached schedule.end_lr."""
    from largebatch.study.sweep import _scale_epochs

    cfg = apply_overrides(default(), ["train.epochs=9", "schedule.name=poly", "schedule.decay_end_epochs=7.5"])
    assert _scale_epochs(cfg, 3).schedule.decay_end_epochs == pytest.approx(2.5)


def test_every_choice_and_range_on_a_field_is_enforced_with_its_message():
    """The generic validator: a value outside each field's choices or range is refused, naming the key
    and the field's accepted text."""
    checked = 0
    for leaf in leaves(_stretchable()):
        meta = leaf.meta
        if meta.get("plugins"):
            continue
        if "choices" in meta:
            bad = "no-such-choice" if scalar_type(leaf.hint) is str else 3
        elif "ge" in meta or "gt" in meta:
            bad = (meta.get("ge", meta.get("gt")) or 0) - 1
        else:
            continue
        bad = [bad] if isinstance(leaf.value, list) else bad
        cfg = _stretchable()
        target, attr = _parent(cfg, leaf.key)
        setattr(target, attr, bad)
        pattern = rf"^{re.escape(leaf.key)}=.* is invalid: {re.escape(accepted_text(meta, leaf.hint))}$"
        with pytest.raises(ConfigError, match=pattern):
            validate(cfg)
        checked += 1
    assert checked > 60


def _parent(cfg, key):
    """The object holding a leaf of a dotted key with list indices, and the leaf's name."""
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        name, _, index = part.partition("[")
        node = getattr(node, name)
        if index:
            node = node[int(index[:-1])]
    return node, leaf


@pytest.mark.parametrize(
    "schedule, fragment",
    [
        ("[{start_epoch: 1, global_batch_size: 512}]", "train.batch_schedule[0].start_epoch=1 is invalid"),
        ("[{start_epoch: 0, global_batch_size: 1024}]", "equal to train.global_batch_size=512"),
        ("[{start_epoch: 0, global_batch_size: 512}, {start_epoch: 9, global_batch_size: 1024}]", "train.epochs=9"),
        ("[{start_epoch: 0, global_batch_size: 512, peak_lr: -1}]", "train.batch_schedule[0].peak_lr=-1.0"),
    ],
)
def test_validate_owns_the_batch_schedule_rules(schedule, fragment):
    cfg = apply_overrides(get_recipe("goyal2017_fashion_mnist_28px"), [f"train.batch_schedule={schedule}"])
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        validate(cfg)  # before any number of processes is known


def test_choice_keys_come_from_the_fields_read_by():
    assert CHOICE_KEYS == {
        "optim": ("name", {"lars": ("lars",), "lamb": ("lamb",), "rmsprop_warmup": ("rmsprop_warmup",)}),
        "schedule": (
            "name",
            {
                "decay_epochs": ("step",),
                "decay_factor": ("step",),
                "poly": ("poly",),
                "end_lr": ("poly", "cosine"),
                "decay_end_epochs": ("poly", "cosine"),
                "slow_start": ("slow_start",),
            },
        ),
        "data": ("name", {"synthetic": ("synthetic",), "imagefolder": ("imagefolder",)}),
    }


def _round_trip(cfg):
    return to_dict(config_from_dict(to_dict(cfg)))


def test_typed_dict_is_the_round_trip_through_omegaconf():
    for name in recipe_names():
        cfg = get_recipe(name)
        assert json.dumps(typed_dict(cfg)) == json.dumps(_round_trip(cfg)), name
    cfg = default()
    ints = dataclasses.replace(
        cfg,
        schedule=dataclasses.replace(cfg.schedule, warmup_epochs=5, decay_epochs=[3, 6], decay_end_epochs=7),
        optim=dataclasses.replace(cfg.optim, base_lr=1),
    )
    assert json.dumps(typed_dict(ints)) == json.dumps(_round_trip(ints))
    assert typed_dict(ints)["schedule"]["decay_epochs"] == [3.0, 6.0]
    # not plain: an interpolation goes through OmegaConf, and a float in an int field fails there
    odd = dataclasses.replace(cfg, source="${recipe}")
    assert typed_dict(odd)["source"] == cfg.recipe and json.dumps(typed_dict(odd)) == json.dumps(_round_trip(odd))
    with pytest.raises(OmegaConfBaseException, match="could not be converted to Integer"):
        typed_dict(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=9.0)))


@settings(max_examples=60)
@given(
    st.sampled_from(recipe_names()),
    st.lists(
        st.sampled_from(
            [
                "schedule.decay_epochs=[1, 2]",
                "schedule.decay_end_epochs=5",
                "schedule.warmup_start_lr=0",
                "optim.base_lr=1",
                "optim.name=lamb",
                "train.batch_schedule=[{start_epoch: 0, global_batch_size: 512}]",
                "data.resize_stages=[{start_epoch: 0, image_size_px: 20}]",
                "train.val_at_steps=[1, 2]",
                "description=${recipe}",
                "data.root=/data",
            ]
        ),
        max_size=4,
    ),
)
def test_typed_dict_equals_the_round_trip_after_overrides(recipe, overrides):
    cfg = apply_overrides(get_recipe(recipe), overrides)
    assert json.dumps(typed_dict(cfg)) == json.dumps(_round_trip(cfg))


def test_merging_overrides_leaves_the_lr_and_loading_a_recipe_takes_the_reference_lr():
    from largebatch.api import load_config

    base = get_recipe("goyal2017_fashion_mnist")
    for name, ref in REFERENCE_LRS.items():
        merged = merge_overrides(base, [f"optim.name={name}"])
        assert (merged.optim.base_lr, merged.optim.base_batch_size) == (base.optim.base_lr, base.optim.base_batch_size)
        loaded = load_config("goyal2017_fashion_mnist", [f"optim.name={name}"])
        assert loaded == with_reference_lr(base, merged, [f"optim.name={name}"])
        assert loaded == apply_overrides(base, [f"optim.name={name}"])
        if name != base.optim.name:
            assert (loaded.optim.base_lr, loaded.optim.base_batch_size, loaded.optim.lr_scaling) == (
                ref.base_lr,
                ref.base_batch_size,
                ref.lr_scaling,
            )
    given_lr = load_config("goyal2017_fashion_mnist", ["optim.name=lamb", "optim.base_lr=0.02"])
    assert given_lr.optim.base_lr == 0.02
