"""train.precision=auto: bf16 where the device runs it natively, fp32 elsewhere; both branches."""

import pytest
import torch

from largebatch.config import ConfigError, apply_overrides
from largebatch.plan import resolve
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.train.precision import PRECISION_ENV, choose_precision, cpu_bf16_support

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_is_the_default_and_validated():
    cfg = get_recipe(DEFAULT_RECIPE)
    assert cfg.train.precision == "auto"
    with pytest.raises(ConfigError, match="train.precision='fp8'.*one of auto, fp32, bf16, fp16"):
        resolve(apply_overrides(cfg, ["train.precision=fp8"]), 2)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_the_capability_query(native, expected):
    choice = choose_precision("auto", CPU, cpu_bf16=(native, "the forced query"))
    assert choice.precision == expected and choice.reason == "the forced query"
    assert choice.autocast_dtype == (torch.bfloat16 if native else None)
    assert choice.as_dict() == {
        "precision_requested": "auto",
        "precision": expected,
        "precision_reason": "the forced query",
    }


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support(native, expected):
    choice = choose_precision("auto", CUDA, cuda_bf16=native)
    assert choice.precision == expected
    assert ("runs bf16 natively" in choice.reason) == native
    if not native:
        assert "train.precision=fp16" in choice.reason  # loss-scaled fp16 stays the explicit option


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_on_every_device(requested):
    for device in (CPU, CUDA):
        choice = choose_precision(requested, device, cpu_bf16=(not requested == "bf16", "x"), cuda_bf16=False)
        assert choice.precision == requested and choice.reason == "set by train.precision"
    assert choose_precision("fp16", CPU).autocast_dtype is torch.float16


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="train.precision='tf32' is unknown; accepted: auto, fp32, bf16, fp16"):
        choose_precision("tf32", CPU)


def test_cpu_query_is_torchs_own_unless_overridden(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    native, reason = cpu_bf16_support()
    assert native == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert torch.backends.cpu.get_cpu_capability() in reason
    for forced, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(PRECISION_ENV, forced)
        assert cpu_bf16_support() == (expected, f"{PRECISION_ENV}={forced}")
        assert choose_precision("auto", CPU).precision == ("bf16" if expected else "fp32")
    monkeypatch.setenv(PRECISION_ENV, "maybe")  # not 0 or 1: torch's query decides
    assert cpu_bf16_support() == (native, reason)
