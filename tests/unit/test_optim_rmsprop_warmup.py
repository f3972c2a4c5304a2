"""RMSprop warm-up (Akiba et al. 2017): the alpha_SGD table of, the two limits
(momentum SGD at alpha_sgd = 1, RMSprop with momentum at alpha_sgd = 0), the blend against the
equations written out here, foreach == single-tensor, skipped non-finite steps, exact resume."""

import copy
import math

import pytest
import torch

from largebatch.optim.rmsprop_warmup import RMSpropWarmup, akiba_alpha_sgd

SHAPES = [(7,), (3, 5), (2, 3, 2, 2), (1,)]


def make_params(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def grad_sequence(n_steps, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(n_steps)]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


@pytest.mark.parametrize(
    "epoch, printed, smooth",
    [
        (0, 0.009158, 0.009158),
        (5, 0.067668, 0.067668),
        (9, 0.335160, 0.335160),
        (10, 0.5, 0.5),
        (11, 0.9, 0.7),
        (12, 1.3, 0.9),
        (12.5, 1.0, 1.0),
        (13, 1.0, 1.0),
        (20, 1.0, 1.0),
    ],
)
def test_alpha_sgd_table(epoch, printed, smooth):
    assert akiba_alpha_sgd(epoch) == pytest.approx(printed, abs=1e-6)
    assert akiba_alpha_sgd(epoch, variant="printed") == pytest.approx(printed, abs=1e-6)
    assert akiba_alpha_sgd(epoch, variant="smooth") == pytest.approx(smooth, abs=1e-6)


def test_printed_variant_jumps_down_and_smooth_is_continuous():
    before, at = 12.5 - 1e-9, 12.5
    assert akiba_alpha_sgd(before) == pytest.approx(1.5, abs=1e-6)
    assert akiba_alpha_sgd(at) == 1.0
    assert akiba_alpha_sgd(before, variant="smooth") == pytest.approx(1.0, abs=1e-6)
    # smooth: the slope at the centre matches the exponential's, 1 / period
    h = 1e-6
    left = (akiba_alpha_sgd(10.0, variant="smooth") - akiba_alpha_sgd(10.0 - h, variant="smooth")) / h
    assert left == pytest.approx(1 / 5, rel=1e-4)


def test_alpha_sgd_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        akiba_alpha_sgd(1.0, variant="ramp")
    with pytest.raises(ValueError, match="period_epochs"):
        akiba_alpha_sgd(1.0, period_epochs=0.0)


@pytest.mark.parametrize("foreach", [False, True])
def test_alpha_one_is_torch_momentum_sgd(foreach):
    ours, ref = make_params(), make_params()
    opt = RMSpropWarmup(ours, lr=0.05, momentum=0.9, steps_per_epoch=3, alpha_sgd=1.0, foreach=foreach)
    sgd = torch.optim.SGD(ref, lr=0.05, momentum=0.9)
    for grads in grad_sequence(8):
        set_grads(ours, grads)
        set_grads(ref, grads)
        opt.step()
        sgd.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_alpha_zero_is_rmsprop_with_momentum(foreach):
    mu1, mu2, eps, rms_lr, eta = 0.9, 0.99, 1e-8, 3e-4, 0.7
    ours, ref = make_params(), [p.detach().clone() for p in make_params()]
    opt = RMSpropWarmup(
        ours,
        lr=eta,
        momentum=mu1,
        alpha=mu2,
        eps=eps,
        rmsprop_lr=rms_lr,
        steps_per_epoch=3,
        alpha_sgd=0.0,
        foreach=foreach,
    )
    m = [torch.zeros_like(p) for p in ref]
    d = [torch.zeros_like(p) for p in ref]
    for grads in grad_sequence(8):
        set_grads(ours, grads)
        opt.step()
        for i, g in enumerate(grads):
            m[i] = mu2 * m[i] + (1 - mu2) * g * g
            d[i] = mu1 * d[i] - rms_lr * g / (m[i].sqrt() + eps)
            ref[i] = ref[i] + d[i]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("integer_epochs", [False, True])
def test_blend_matches_written_out_equations(foreach, integer_epochs):
    """Scheduled alpha_sgd (steps_per_epoch=2, centre 2, period 2), an LR that changes every step
    and coupled weight decay."""
    mu1, mu2, eps, rms_lr, wd, spe = 0.8, 0.95, 1e-8, 1e-2, 1e-3, 2
    ours, ref = make_params(), [p.detach().clone() for p in make_params()]
    opt = RMSpropWarmup(
        ours,
        lr=0.1,
        momentum=mu1,
        alpha=mu2,
        eps=eps,
        rmsprop_lr=rms_lr,
        weight_decay=wd,
        steps_per_epoch=spe,
        center_epochs=2.0,
        period_epochs=2.0,
        integer_epochs=integer_epochs,
        foreach=foreach,
    )
    m = [torch.zeros_like(p) for p in ref]
    d = [torch.zeros_like(p) for p in ref]
    for t, grads in enumerate(grad_sequence(10)):
        eta = 0.1 * (1 + t) / 10
        e = t // spe if integer_epochs else t / spe
        a_sgd = 0.5 * math.exp(2 * (e - 2) / 2) if e < 2 else (0.5 + 2 * (e - 2) / 2 if e < 3 else 1.0)
        a_rms = (1 - a_sgd) * rms_lr / eta
        assert opt.current_alpha_sgd() == pytest.approx(a_sgd, abs=1e-15)
        for group in opt.param_groups:
            group["lr"] = eta
        set_grads(ours, grads)
        opt.step()
        for i, g in enumerate(grads):
            g = g + wd * ref[i]
            m[i] = mu2 * m[i] + (1 - mu2) * g**2
            d[i] = mu1 * d[i] - (a_sgd + a_rms / (m[i].sqrt() + eps)) * g
            ref[i] = ref[i] + eta * d[i]
    assert opt.steps_done == 10
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b, atol=1e-12, rtol=0)


def test_foreach_equals_single_tensor_and_skips_grad_none():
    runs = {}
    for foreach in (False, True):
        params = make_params()
        opt = RMSpropWarmup(
            [{"params": params[:2]}, {"params": params[2:], "lr": 0.3, "weight_decay": 1e-2}],
            lr=0.1,
            rmsprop_lr=1e-2,
            steps_per_epoch=2,
            center_epochs=1.0,
            period_epochs=2.0,
            foreach=foreach,
        )
        for grads in grad_sequence(7):
            set_grads(params, grads)
            params[1].grad = None  # a parameter without a gradient is left alone
            opt.step()
        assert params[1] not in opt.state
        torch.testing.assert_close(params[1].detach(), make_params()[1].detach(), atol=0, rtol=0)
        runs[foreach] = params
    for a, b in zip(runs[False], runs[True]):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_grads_are_not_modified(foreach):
    params = make_params()
    opt = RMSpropWarmup(params, lr=0.1, weight_decay=1e-2, steps_per_epoch=1, foreach=foreach)
    grads = grad_sequence(1)[0]
    set_grads(params, grads)
    opt.step()
    opt.step()
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("foreach", [False, True])
def test_non_finite_gradient_skips_the_whole_step(bad, foreach):
    params = make_params()
    opt = RMSpropWarmup(params, lr=0.1, steps_per_epoch=2, foreach=foreach)
    set_grads(params, grad_sequence(1)[0])
    opt.step()
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    grads = grad_sequence(1, seed=2)[0]
    grads[2][0, 1, 0, 1] = bad
    set_grads(params, grads)
    opt.step()
    assert opt.skipped_steps == 1 and opt.steps_done == 1
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    state_after = opt.state_dict()
    for k, s in state_before["state"].items():
        for name, v in s.items():
            assert torch.equal(state_after["state"][k][name], v)
    set_grads(params, grad_sequence(1, seed=3)[0])
    opt.step()
    assert opt.skipped_steps == 1 and opt.steps_done == 2


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_resumes_exactly(foreach):
    kwargs = dict(
        lr=0.1,
        rmsprop_lr=1e-2,
        weight_decay=1e-3,
        steps_per_epoch=3,
        center_epochs=1.0,
        period_epochs=2.0,
        foreach=foreach,
    )
    seq = grad_sequence(12)

    straight = make_params()
    opt = RMSpropWarmup(straight, **kwargs)
    for grads in seq:
        set_grads(straight, grads)
        opt.step()

    first = make_params()
    opt1 = RMSpropWarmup(first, **kwargs)
    for grads in seq[:5]:
        set_grads(first, grads)
        opt1.step()
    saved = copy.deepcopy(opt1.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt2 = RMSpropWarmup(resumed, **kwargs)
    opt2.load_state_dict(saved)
    assert opt2.steps_done == 5 and opt2.current_alpha_sgd() == opt1.current_alpha_sgd()
    for grads in seq[5:]:
        set_grads(resumed, grads)
        opt2.step()
    for a, b in zip(resumed, straight):
        assert torch.equal(a.detach(), b.detach())


def test_load_state_dict_without_counter_is_rejected():
    params = make_params()
    sd = torch.optim.SGD(params, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="steps_done"):
        RMSpropWarmup(params, lr=0.1, steps_per_epoch=1).load_state_dict(sd)


def test_step_returns_closure_loss():
    p = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    opt = RMSpropWarmup([p], lr=0.1, steps_per_epoch=1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 9.0
    assert opt.steps_done == 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("lr", -0.1),
        ("momentum", 1.0),
        ("alpha", -0.1),
        ("eps", 0.0),
        ("rmsprop_lr", -1.0),
        ("weight_decay", -1e-4),
        ("steps_per_epoch", 0),
        ("steps_per_epoch", 2.5),
        ("center_epochs", math.inf),
        ("period_epochs", 0.0),
        ("variant", "ramp"),
        ("alpha_sgd", -0.5),
    ],
)
def test_bad_arguments_raise_naming_them(name, value):
    kwargs = dict(lr=0.1, steps_per_epoch=10)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        RMSpropWarmup(make_params(), **kwargs)


def test_converges_on_a_quadratic():
    """0.5 * sum(c_i x_i^2), curvatures in [0.5, 2]; RMSprop first, momentum SGD from epoch 2."""
    torch.manual_seed(0)
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    c = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)
    opt = RMSpropWarmup([x], lr=0.1, rmsprop_lr=1e-2, steps_per_epoch=10, center_epochs=1.0, period_epochs=2.0)

    def loss_fn():
        return 0.5 * (c * x**2).sum()

    first = loss_fn().item()
    for _ in range(8 * 10):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < first / 100
