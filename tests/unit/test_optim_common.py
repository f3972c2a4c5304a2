"""Shared optimizer pieces: path choice, gradient norms (no false overflow in float16), the
non-finite check, the zero-norm guard, and scratch reuse."""

import pytest
import torch

from largebatch.optim._common import Scratch, all_finite, guarded, norms, use_foreach
from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.rmsprop_warmup import RMSpropWarmup


def test_default_path_is_single_tensor_on_cpu_and_explicit_choice_wins():
    params = [torch.zeros(3), torch.zeros(2, 2)]
    assert use_foreach(params, None) is False
    assert use_foreach(params, True) is True and use_foreach(params, False) is False


def test_norms_keep_order_and_accumulate_float16_in_float32():
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # finite, but its norm (120000) is not
    small = torch.tensor([3.0, 4.0], dtype=torch.float64)
    out = norms([big, small, torch.tensor([1.0, 0.0])])
    assert out[0].dtype == torch.float32 and out[0].item() == pytest.approx(120000.0)
    assert out[1].dtype == torch.float64 and out[1].item() == 5.0
    assert out[2].item() == 1.0
    assert all_finite(out)
    assert not all_finite(out + [torch.tensor(float("nan"))])
    assert not all_finite([torch.tensor(float("inf"))])


@pytest.mark.parametrize(
    "make",
    [
        lambda p: Lars([p], lr=0.1),
        lambda p: Lamb([p], lr=0.1),
        lambda p: RMSpropWarmup([p], lr=0.1, steps_per_epoch=10),
    ],
)
def test_large_finite_float16_gradient_is_not_skipped(make):
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    p.grad = torch.full((4,), 60000.0, dtype=torch.float16)
    opt = make(p)
    opt.step()
    # The step ran (its state exists); what float16 state does with such values is not the point.
    assert opt.skipped_steps == 0 and len(opt.state[p]) > 0
    p.grad[0] = float("inf")
    opt.step()
    assert opt.skipped_steps == 1


def test_guard_gives_one_where_a_norm_is_zero():
    ratio = torch.tensor([0.5, 0.5, 0.5])
    out = guarded(ratio, torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert out.tolist() == [0.5, 1.0, 1.0]


def test_scratch_reuses_one_buffer_per_slot():
    s = Scratch()
    a = s.like(torch.zeros(3, 4))
    b = s.like(torch.zeros(5))
    assert a.shape == (3, 4) and b.shape == (5,) and a.data_ptr() == b.data_ptr()
    c = s.like(torch.zeros(5), slot=1)
    assert c.data_ptr() != b.data_ptr()
    d = s.like(torch.zeros(100))  # grows
    assert d.numel() == 100
