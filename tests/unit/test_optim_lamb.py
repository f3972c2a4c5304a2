"""LAMB against its equations (You et al. 2019, Alg. 2;), written out here."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from largebatch.optim import param_groups
from largebatch.optim.lamb import Lamb

F64 = torch.float64


def reference_step(x, g, m, v, t, *, lr, b1, b2, eps, wd, adapt, bias_correction=True):
    """One LAMB step on plain tensors; returns the new (x, m, v)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
    u = m_hat / (v_hat.sqrt() + eps) + wd * x
    x_norm, u_norm = x.norm().item(), u.norm().item()
    ratio = x_norm / u_norm if adapt and x_norm > 0 and u_norm > 0 else 1.0
    return x - lr * ratio * u, m, v


def make_params(shapes, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("lr", dict(lr=-1.0)),
        ("betas", dict(lr=1.0, betas=(1.0, 0.999))),
        ("betas", dict(lr=1.0, betas=(0.9, -0.1))),
        ("eps", dict(lr=1.0, eps=-1e-8)),
        ("weight_decay", dict(lr=1.0, weight_decay=-0.01)),
    ],
)
def test_argument_checks(name, kwargs):
    with pytest.raises(ValueError, match=f"{name}=.*accepted"):
        Lamb(make_params([(2,)]), **kwargs)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_two_steps_match_equations(foreach, bias_correction):
    w, b = make_params([(3, 4), (4,)])
    hp = dict(lr=0.1, b1=0.9, b2=0.99, eps=1e-6)
    opt = Lamb(
        [{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.1, "layer_adaptation": False}],
        lr=hp["lr"],
        betas=(hp["b1"], hp["b2"]),
        eps=hp["eps"],
        bias_correction=bias_correction,
        foreach=foreach,
    )
    expected = {
        "w": (w.detach().clone(), torch.zeros_like(w), torch.zeros_like(w)),
        "b": (b.detach().clone(), torch.zeros_like(b), torch.zeros_like(b)),
    }
    for t in (1, 2):
        set_grads([w, b], seed=t)
        for name, p, wd, adapt in (("w", w, 0.01, True), ("b", b, 0.1, False)):
            x, m, v = expected[name]
            expected[name] = reference_step(
                x, p.grad, m, v, t, **hp, wd=wd, adapt=adapt, bias_correction=bias_correction
            )
        opt.step()
        for name, p in (("w", w), ("b", b)):
            x, m, v = expected[name]
            torch.testing.assert_close(p.detach(), x, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v, rtol=1e-12, atol=1e-14)
            assert opt.state[p]["step"] == t


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_norm_guard(foreach):
    """A zero weight gets ratio 1 (moves by lr * u); a zero update leaves the weight in place."""
    zero, w = nn.Parameter(torch.zeros(5, dtype=F64)), make_params([(5,)])[0]
    opt = Lamb([zero, w], lr=0.5, weight_decay=0.0, foreach=foreach)
    zero.grad = torch.arange(1.0, 6.0, dtype=F64)
    w.grad = torch.zeros(5, dtype=F64)
    w0 = w.detach().clone()
    opt.step()
    u = zero.grad / (zero.grad.abs() + 1e-6)  # t = 1: m_hat = g, v_hat = g^2
    torch.testing.assert_close(zero.detach(), -0.5 * u, rtol=1e-15, atol=0)
    assert torch.equal(w.detach(), w0)
    assert torch.isfinite(zero).all() and torch.isfinite(w).all()


def run(params, groups_kwargs, foreach, steps=4):
    opt = Lamb([dict(params=[p], **kw) for p, kw in zip(params, groups_kwargs)], lr=0.05, foreach=foreach)
    for t in range(steps):
        set_grads(params, seed=100 + t)
        opt.step()
    return opt


def test_foreach_equals_single_tensor():
    shapes = [(7,), (3, 5), (2, 3, 2, 2), (4, 4), (6,), (2, 2, 1, 3)]
    kwargs = [dict(weight_decay=wd, layer_adaptation=adapt) for wd in (0.0, 0.01) for adapt in (True, False)]
    kwargs += [dict(weight_decay=0.01), dict(weight_decay=0.0)]
    single, multi = make_params(shapes), make_params(shapes)
    for ps in (single, multi):
        with torch.no_grad():
            ps[2].zero_()  # a zero 4-D tensor in an adapted, decayed group
    # One group per tensor, covering every (weight decay, adaptation) pair.
    opts = [run(single, kwargs, foreach=False), run(multi, kwargs, foreach=True)]
    for a, b in zip(single, multi):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opts[0].state[a][key], opts[1].state[b][key], rtol=1e-12, atol=1e-12)
    # And several tensors in one group, so the stacked trust ratios are exercised.
    for wd in (0.0, 0.01):
        for adapt in (True, False):
            single, multi = make_params(shapes, seed=1), make_params(shapes, seed=1)
            for ps in (single, multi):
                with torch.no_grad():
                    ps[3].zero_()
            for ps, foreach in ((single, False), (multi, True)):
                opt = Lamb([{"params": ps, "layer_adaptation": adapt}], lr=0.05, weight_decay=wd, foreach=foreach)
                for t in range(3):
                    set_grads(ps, seed=200 + t)
                    opt.step()
            for a, b in zip(single, multi):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_grads_unchanged_and_none_grads_skipped(foreach):
    a, b, c = make_params([(3, 3), (3,), (2,)])
    opt = Lamb([a, b, c], lr=0.1, weight_decay=0.01, foreach=foreach)
    set_grads([a, b], seed=3)
    grads = [a.grad.clone(), b.grad.clone()]
    c0 = c.detach().clone()
    opt.step()
    assert torch.equal(a.grad, grads[0]) and torch.equal(b.grad, grads[1])
    assert torch.equal(c.detach(), c0) and c not in opt.state


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_gradient_skips_the_whole_step(foreach, bad):
    params, clean = make_params([(3, 3), (4,)]), make_params([(3, 3), (4,)])
    opt = Lamb(params, lr=0.1, weight_decay=0.01, foreach=foreach)
    ref = Lamb(clean, lr=0.1, weight_decay=0.01, foreach=foreach)
    set_grads(params, seed=1)
    set_grads(clean, seed=1)
    opt.step()
    ref.step()
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    set_grads(params, seed=2)
    params[1].grad[2] = bad  # only one value of one tensor
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, p0) for p, p0 in zip(params, before[1]))
    for i, p in enumerate(params):
        assert opt.state[p]["step"] == 1
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], before[0]["state"][i][key])
    set_grads(params, seed=3)
    set_grads(clean, seed=3)
    opt.step()
    ref.step()
    assert all(torch.equal(p, q) for p, q in zip(params, clean))
    assert opt.skipped_steps == 1 and ref.skipped_steps == 0


def test_first_step_non_finite_creates_no_state():
    p = make_params([(3,)])[0]
    opt = Lamb([p], lr=0.1)
    p.grad = torch.tensor([1.0, math.inf, 0.0], dtype=F64)
    opt.step()
    assert opt.skipped_steps == 1 and len(opt.state) == 0


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_is_bitwise(foreach):
    def build(params):
        return Lamb(
            [{"params": params[:2], "weight_decay": 0.01}, {"params": params[2:], "layer_adaptation": False}],
            lr=0.05,
            foreach=foreach,
        )

    def steps(opt, params, seeds):
        for s in seeds:
            set_grads(params, seed=s)
            opt.step()

    shapes = [(4, 3), (2, 3, 2, 2), (5,)]
    straight = make_params(shapes, dtype=torch.float32)
    opt = build(straight)
    steps(opt, straight, range(3))
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in straight], "optim": opt.state_dict()}, buf)
    steps(opt, straight, range(3, 6))

    buf.seek(0)
    saved = torch.load(buf)
    resumed = [nn.Parameter(t) for t in saved["params"]]
    opt2 = build(resumed)
    opt2.load_state_dict(saved["optim"])
    steps(opt2, resumed, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert opt2.state[resumed[0]]["step"] == 6


def test_converges_on_quadratic():
    """0.5 * sum(h * (x - x_star)^2) with curvatures spread 100x; LR decays linearly to 0."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(8, 4)
    targets = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    curv = {n: torch.logspace(-1, 1, p.numel()).reshape(p.shape) for n, p in model.named_parameters()}

    def loss_fn():
        return sum(0.5 * (curv[n] * (p - targets[n]) ** 2).sum() for n, p in model.named_parameters())

    opt = Lamb(param_groups(model, weight_decay=0.0), lr=0.05)
    initial, total = loss_fn().item(), 300
    for t in range(total):
        opt.zero_grad()
        loss_fn().backward()
        for g in opt.param_groups:
            g["lr"] = 0.05 * (1 - t / total)
        opt.step()
    assert loss_fn().item() < initial / 100


@pytest.mark.parametrize("foreach", [False, True])
def test_no_adaptation_no_decay_is_adam(foreach):
    """With ratio 1 and no weight decay, LAMB is Adam: x -= lr * m_hat / (sqrt(v_hat) + eps).

    torch.optim.Adam computes m / bc1 / (sqrt(v) / sqrt(bc2) + eps) = m_hat / (sqrt(v_hat) + eps),
    the same eps placement, so the two agree to rounding.
    """
    shapes = [(3, 4), (5,), (2, 2, 2, 2)]
    lamb_params, adam_params = make_params(shapes), make_params(shapes)
    lamb = Lamb([{"params": lamb_params, "layer_adaptation": False}], lr=0.01, eps=1e-6, foreach=foreach)
    adam = torch.optim.Adam(adam_params, lr=0.01, betas=(0.9, 0.999), eps=1e-6, foreach=foreach)
    for t in range(5):
        set_grads(lamb_params, seed=t)
        set_grads(adam_params, seed=t)
        lamb.step()
        adam.step()
    for a, b in zip(lamb_params, adam_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_closure_loss_is_returned_and_default_group_keys():
    p = make_params([(2,)])[0]
    opt = Lamb([p], lr=0.1)
    assert opt.param_groups[0]["layer_adaptation"] is True

    def closure():
        loss = (p**2).sum()
        loss.backward()
        return loss

    expected = (p.detach() ** 2).sum()
    assert torch.equal(opt.step(closure), expected) and opt.state[p]["step"] == 1


def test_zero_lr_is_accepted_and_leaves_weights():
    """A warmup from 0 (MLPerf) starts with lr = 0: legal, and the first step moves nothing."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4))
    before = p.detach().clone()
    p.grad = torch.randn(3, 4)
    opt = Lamb([p], lr=0.0, weight_decay=0.01)
    opt.step()
    assert torch.equal(p.detach(), before)
