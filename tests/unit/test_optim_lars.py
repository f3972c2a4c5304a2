"""Lars: paper test vectors through a real step, the form (9) = corrected form (10) equivalence,
foreach = single-tensor, state_dict round trip, non-finite skipping, convergence, SGD reduction."""

import copy

import pytest
import torch

from largebatch.optim.lars import Lars

F64 = torch.float64
EXACT = dict(rtol=1e-12, atol=1e-15)  # p_before - p_after rounds at ~1e-16 for ||p|| ~ 1


def unit(n, seed):
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return v / v.norm()


def first_step(w_norm, g_norm, *, lr=1.0, weight_decay=0.0, layer_adaptation=True, **kwargs):
    """One step with momentum 0 on a tensor of norm ``w_norm`` and gradient of norm ``g_norm``.

    Returns (applied update p_before - p_after, p_before, g)."""
    p = torch.nn.Parameter(w_norm * unit(10, 0))
    p.grad = g_norm * unit(10, 1)
    before, g = p.detach().clone(), p.grad.clone()
    opt = Lars(
        [{"params": [p], "layer_adaptation": layer_adaptation}],
        lr=lr,
        momentum=0.0,
        weight_decay=weight_decay,
        **kwargs,
    )
    opt.step()
    return before - p.detach(), before, g


# the papers (eta = 0.001): (||w||, ||g||, wd) -> ratio, given to 5 significant digits.
@pytest.mark.parametrize("w_norm,g_norm,wd,ratio", [(1.0, 0.01, 1e-4, 0.0990099), (2.0, 0.5, 5e-4, 0.0039920)])
def test_paper_trust_ratio_vectors(w_norm, g_norm, wd, ratio):
    lr = 0.7
    update, p, g = first_step(w_norm, g_norm, lr=lr, weight_decay=wd, trust_coefficient=0.001)
    torch.testing.assert_close(update, lr * ratio * (g + wd * p), rtol=2e-5, atol=0)


@pytest.mark.parametrize("w_norm,g_norm", [(0.0, 0.3), (1.5, 0.0)])
def test_zero_norm_guard_gives_ratio_one(w_norm, g_norm):
    lr, wd = 0.5, 1e-2
    update, p, g = first_step(w_norm, g_norm, lr=lr, weight_decay=wd)
    torch.testing.assert_close(update, lr * (g + wd * p), **EXACT)


def test_excluded_group_gets_ratio_one():
    # Same tensors as the first paper vector, whose adapted ratio would be 0.099.
    lr, wd = 0.7, 1e-4
    update, p, g = first_step(1.0, 0.01, lr=lr, weight_decay=wd, layer_adaptation=False)
    torch.testing.assert_close(update, lr * (g + wd * p), **EXACT)


def test_larc_clip_vector():
    # the papers: eta 0.02, lr 3.2, ||w|| 1, ||g|| 0.01, wd 1e-4: local lr 1.980198,
    # scale min(1.980198 / 3.2, 1) = 0.618812.
    lr, wd = 3.2, 1e-4
    update, p, g = first_step(1.0, 0.01, lr=lr, weight_decay=wd, trust_coefficient=0.02, clip=True)
    torch.testing.assert_close(update, lr * 0.618812 * (g + wd * p), rtol=1e-6, atol=0)
    # Effective LR = min(lr, local lr) = 1.980198.
    torch.testing.assert_close(update, 1.980198 * (g + wd * p), rtol=1e-6, atol=0)


def test_larc_clip_caps_ratio_at_one():
    lr, wd = 1.0, 1e-4  # local lr 1.98 > lr: the plain SGD step
    update, p, g = first_step(1.0, 0.01, lr=lr, weight_decay=wd, trust_coefficient=0.02, clip=True)
    torch.testing.assert_close(update, lr * (g + wd * p), **EXACT)


def quadratic_grads(params, t):
    """Gradient of sum_i 0.5 ||A_i p_i - b_i||^2 with A_i, b_i fixed per tensor and step t."""
    grads = []
    for i, p in enumerate(params):
        gen = torch.Generator().manual_seed(1000 * t + i)
        n = p.numel()
        a = torch.randn(n, n, generator=gen, dtype=F64) / n**0.5
        b = torch.randn(n, generator=gen, dtype=F64)
        x = p.detach().reshape(-1)
        grads.append((a.T @ (a @ x - b)).reshape(p.shape))
    return grads


def lr_schedule(t):
    """Linear warm-up 0.1 -> 2.0 over 10 steps, then step decay x0.1 at 20 and 30."""
    if t < 10:
        return 0.1 + (2.0 - 0.1) * t / 10
    return 2.0 * 0.1 ** ((t >= 20) + (t >= 30))


@pytest.mark.parametrize("nesterov", [False, True])
def test_pytorch_form_equals_paper_form_with_momentum_correction(nesterov):
    m, wd, eta, steps = 0.9, 1e-3, 0.02, 40
    init = [
        torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1)),
        torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(2)),
    ]
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = Lars(params, lr=lr_schedule(0), momentum=m, weight_decay=wd, trust_coefficient=eta, nesterov=nesterov)

    def paper(correct):
        # Algorithm 1 (form 10): v = m (lr_t / lr_{t-1}) v + lr_t ratio (g + wd w); w -= v.
        # Nesterov in the same form: w -= m v + lr_t ratio (g + wd w).
        ws, vs, prev = [x.clone() for x in init], [torch.zeros_like(x) for x in init], None
        for t in range(steps):
            lr = lr_schedule(t)
            scale = lr / prev if correct and prev is not None else 1.0
            for w, v, g in zip(ws, vs, quadratic_grads(ws, t)):
                ratio = eta * w.norm() / (g.norm() + wd * w.norm())
                step = lr * ratio * (g + wd * w)
                v.mul_(m * scale).add_(step)
                w.sub_(step + m * v if nesterov else v)
            prev = lr
        return ws

    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_schedule(t)
        for p, g in zip(params, quadratic_grads(params, t)):
            p.grad = g
        opt.step()
    for p, w in zip(params, paper(correct=True)):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)
    gap = max((p.detach() - w).abs().max().item() for p, w in zip(params, paper(correct=False)))
    assert gap > 1e-3


MIXED_SHAPES = [(7,), (4, 6), (3, 2, 3, 3), (5,)]


def mixed_params():
    gen = torch.Generator().manual_seed(3)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=F64)) for s in MIXED_SHAPES]
    with torch.no_grad():
        ps[3].zero_()  # a zero tensor: ratio 1 by the guard
    return ps


def set_random_grads(params, t):
    gen = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=F64) * (0.01 + p.ndim)


def run(params, opt, steps, start=0):
    for t in range(start, start + steps):
        set_random_grads(params, t)
        opt.step()


def make_opt(params, **kwargs):
    groups = [{"params": params[:3]}, {"params": params[3:], "layer_adaptation": False, "weight_decay": 0.0}]
    options = dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02)
    return Lars(groups, **{**options, **kwargs})


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("clip", [False, True])
def test_foreach_equals_single_tensor(momentum, nesterov, clip):
    """The in-place single-tensor path (buf = m buf + r g + r wd p) and the foreach path
    (d = r (g + wd p)) agree, with and without momentum, Nesterov and LARC clipping."""
    a, b = mixed_params(), mixed_params()
    kwargs = dict(momentum=momentum, nesterov=nesterov, clip=clip)
    run(a, make_opt(a, foreach=False, **kwargs), 6)
    run(b, make_opt(b, foreach=True, **kwargs), 6)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip(foreach):
    a, b = mixed_params(), mixed_params()
    opt_a = make_opt(a, nesterov=True, foreach=foreach)
    run(a, opt_a, 10)

    opt_b = make_opt(b, nesterov=True, foreach=foreach)
    run(b, opt_b, 4)
    saved = copy.deepcopy(opt_b.state_dict())
    b_saved = [p.detach().clone() for p in b]
    b = [torch.nn.Parameter(x) for x in b_saved]
    opt_b = make_opt(b, nesterov=True, foreach=foreach)
    opt_b.load_state_dict(saved)
    run(b, opt_b, 6, start=4)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_grads_unchanged_and_none_grads_skipped(foreach):
    params = mixed_params()
    opt = make_opt(params, foreach=foreach)
    run(params, opt, 2)
    set_random_grads(params, 2)
    params[1].grad = None
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    frozen, buf = params[1].detach().clone(), opt.state[params[1]]["momentum_buffer"].clone()
    opt.step()
    for p, g in zip(params, grads):
        if g is not None:
            assert torch.equal(p.grad, g)
    assert torch.equal(params[1].detach(), frozen)
    assert torch.equal(opt.state[params[1]]["momentum_buffer"], buf)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_skips_whole_step(foreach, bad):
    params = mixed_params()
    opt = make_opt(params, foreach=foreach)
    run(params, opt, 3)
    weights = [p.detach().clone() for p in params]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in params]
    set_random_grads(params, 3)
    params[2].grad[0, 1, 2, 0] = bad
    opt.step()
    assert opt.skipped_steps == 1
    for p, w, buf in zip(params, weights, bufs):
        assert torch.equal(p.detach(), w)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)
    assert opt.state_dict()["skipped_steps"] == 1
    run(params, opt, 1, start=4)  # finite again: the step is taken
    assert opt.skipped_steps == 1 and not torch.equal(params[0].detach(), weights[0])


def test_step_returns_closure_loss():
    p = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = Lars([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert opt.step() is None


@pytest.mark.parametrize("foreach", [False, True])
def test_converges_on_quadratic(foreach):
    # min 0.5/N ||W Z + c - Y||^2 over W (adapted) and c (excluded), poly-2 LR decay.
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 64, generator=gen, dtype=F64)
    w_true, c_true = (torch.randn(4, n, generator=gen, dtype=F64) for n in (8, 1))
    y = w_true @ z + c_true
    w = torch.nn.Parameter(torch.randn(4, 8, generator=gen, dtype=F64))
    c = torch.nn.Parameter(torch.zeros(4, 1, dtype=F64))
    opt = Lars(
        [{"params": [w]}, {"params": [c], "layer_adaptation": False}], lr=1.0, trust_coefficient=0.01, foreach=foreach
    )

    def loss():
        return 0.5 * ((w @ z + c - y) ** 2).sum() / z.shape[1]

    start, steps = loss().item(), 300
    for t in range(steps):
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = (1 - t / steps) ** 2
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < start / 100


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_no_adaptation_is_sgd_with_momentum(nesterov, foreach):
    a, b = mixed_params(), mixed_params()
    kwargs = dict(lr=0.3, momentum=0.9, weight_decay=1e-2, nesterov=nesterov, foreach=foreach)
    opt_a = Lars([{"params": a, "layer_adaptation": False}], **kwargs)
    opt_b = torch.optim.SGD(b, **kwargs)
    for t in range(8):
        lr = 0.3 * (t + 1) / 8
        opt_a.param_groups[0]["lr"] = opt_b.param_groups[0]["lr"] = lr
        run(a, opt_a, 1, start=t)
        run(b, opt_b, 1, start=t)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
        (dict(lr=0.1, trust_coefficient=0.0), "trust_coefficient"),
        (dict(lr=0.1, eps=-1e-8), "eps"),
        (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
    ],
)
def test_invalid_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Lars([torch.nn.Parameter(torch.zeros(2))], **kwargs)
