"""Goyal et al. 2017 LR schedule: the test vectors of and the momentum forms."""

import pytest
import torch

from largebatch.plan import linear_scaled_lr
from largebatch.schedules import LRSchedule, ScheduledLR, epoch_to_step, goyal_lr

IMAGENET_TRAIN = 1_281_167
STEPS_PER_EPOCH = IMAGENET_TRAIN // 8192  # 156, drop-last convention


def goyal_8k():
    return LRSchedule(
        kind="step",
        peak_lr=linear_scaled_lr(0.1, base_batch_size=256, global_batch_size=8192),
        warmup_start_lr=0.1,
        warmup_steps=epoch_to_step(5, STEPS_PER_EPOCH),
        total_steps=epoch_to_step(90, STEPS_PER_EPOCH),
        decay_steps=tuple(epoch_to_step(e, STEPS_PER_EPOCH) for e in (30, 60, 80)),
        decay_factor=0.1,
    )


def test_linear_scaling_rule():
    assert linear_scaled_lr(0.1, base_batch_size=256, global_batch_size=8192) == pytest.approx(3.2)
    assert linear_scaled_lr(0.1, base_batch_size=256, global_batch_size=256) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "step, lr",
    [
        (0, 0.1),
        (1, 0.103974),
        (156, 0.72),
        (390, 1.65),
        (779, 3.196026),
        (780, 3.2),
        (4679, 3.2),
        (4680, 0.32),
        (9359, 0.32),
        (9360, 0.032),
        (12479, 0.032),
        (12480, 0.0032),
        (14039, 0.0032),
    ],
)
def test_goyal_table(step, lr):
    """Goyal et al. 2017: kn = 8192, I = 156 iterations/epoch, T_w = 780."""
    assert STEPS_PER_EPOCH == 156
    sched = goyal_8k()
    assert sched.warmup_steps == 780
    assert sched(step) == pytest.approx(lr, abs=5e-7)


def test_warmup_is_linear_per_iteration():
    sched = goyal_8k()
    deltas = [sched(t + 1) - sched(t) for t in range(779)]
    assert max(deltas) - min(deltas) < 1e-12
    assert deltas[0] == pytest.approx(3.1 / 780)


def test_epoch_to_step_rounds():
    assert epoch_to_step(5, 156) == 780
    assert epoch_to_step(0.5, 117) == 58  # round(58.5) -> banker's rounding in Python
    assert epoch_to_step(2.0 / 3.0, 117) == 78


def test_negative_step_raises():
    with pytest.raises(ValueError, match="step"):
        goyal_lr(-1, peak_lr=1, warmup_start_lr=0.1, warmup_steps=10, decay_steps=[])


def test_no_warmup():
    assert goyal_lr(0, peak_lr=3.2, warmup_start_lr=0.1, warmup_steps=0, decay_steps=[5]) == 3.2
    assert goyal_lr(5, peak_lr=3.2, warmup_start_lr=0.1, warmup_steps=0, decay_steps=[5]) == pytest.approx(0.32)


def test_torch_sgd_is_form_9_and_equals_corrected_form_10():
    """torch.optim.SGD (u = m u + g; w -= lr u) needs no momentum correction: it produces the same
    trajectory as Goyal's form (10) *with* correction, under a changing LR; uncorrected (10) differs."""
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(30)]
    lrs = [goyal_lr(t, peak_lr=3.2, warmup_start_lr=0.1, warmup_steps=10, decay_steps=[20, 25]) for t in range(30)]
    m = 0.9
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([p], lr=lrs[0], momentum=m)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()

    def form10(correct: bool) -> torch.Tensor:
        w, v, prev = w0.clone(), torch.zeros(5, dtype=torch.float64), None
        for g, lr in zip(grads, lrs):
            factor = (lr / prev) if (correct and prev is not None) else 1.0
            v = m * factor * v + lr * g
            w = w - v
            prev = lr
        return w

    assert torch.allclose(p.detach(), form10(True), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(p.detach(), form10(False), rtol=1e-3)


@pytest.mark.parametrize(
    "step, lr",
    [(0, 0.0), (1, 0.00639), (782, 4.996805), (1565, 10.0), (1566, 9.998273), (7355, 2.500938), (13145, 1e-4)],
)
def test_mlperf_poly_vectors(step, lr):
    """the MLPerf Training ResNet-50 reference: B = 4096, 313 steps/epoch (ceil), warmup 5 epochs = 1565 steps from 0,
    42 epochs = 13146 steps, poly power 2 to 1e-4 over total - warmup + 1 steps."""
    sched = LRSchedule(
        kind="poly",
        peak_lr=10.0,
        warmup_start_lr=0.0,
        warmup_steps=5 * 313,
        total_steps=42 * 313,
        end_lr=1e-4,
        power=2.0,
    )
    assert sched(step) == pytest.approx(lr, abs=5e-6)


@pytest.mark.parametrize(
    "epoch, lr",
    [(0, 6.4), (39.9, 6.4), (40, 0.96), (69.9, 0.96), (70, 0.128), (84.9, 0.128), (85, 0.0128), (89.9, 0.0128)],
)
def test_akiba_slow_start_vectors(epoch, lr):
    """Akiba et al. 2017: B = 32768, eta_base = 12.8 -> 6.4 / 0.96 / 0.128 / 0.0128 at 0/40/70/85."""
    spe = 1_281_167 // 32768  # 39 steps per epoch
    sched = LRSchedule(
        kind="slow_start",
        peak_lr=linear_scaled_lr(0.1, base_batch_size=256, global_batch_size=32768),
        warmup_start_lr=0.0,
        warmup_steps=0,
        total_steps=90 * spe,
        decay_steps=tuple(epoch_to_step(e, spe) for e in (40, 70, 85)),
        factors=(0.5, 0.075, 0.01, 0.001),
    )
    assert sched(epoch_to_step(epoch, spe)) == pytest.approx(lr, rel=1e-9)


def test_cosine_ends_and_midpoint():
    sched = LRSchedule(kind="cosine", peak_lr=2.0, warmup_start_lr=0.0, warmup_steps=10, total_steps=109, end_lr=0.0)
    assert sched(5) == pytest.approx(1.0)
    assert sched(10) == pytest.approx(2.0)
    assert sched(60) == pytest.approx(1.0)  # half of D = 100 steps after warmup
    assert sched(110) == pytest.approx(0.0, abs=1e-12)


def test_slow_start_needs_matching_factors():
    with pytest.raises(ValueError, match="one more factor"):
        LRSchedule(
            kind="slow_start",
            peak_lr=1.0,
            warmup_start_lr=0.0,
            warmup_steps=0,
            total_steps=10,
            decay_steps=(5,),
            factors=(1.0,),
        )


def test_schedule_as_a_pytorch_lr_scheduler_follows_the_schedule_and_resumes():
    schedule = LRSchedule(kind="poly", peak_lr=2.0, warmup_start_lr=0.0, warmup_steps=3, total_steps=10, power=2.0)
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD([{"params": params}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=123.0)
    scheduler = ScheduledLR(opt, schedule)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    assert seen == [[schedule(t)] * 2 for t in range(6)] and seen[3][0] == 2.0 and seen[1][0] == pytest.approx(2 / 3)
    state = scheduler.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=5.0)
    resumed = ScheduledLR(opt2, schedule)
    resumed.load_state_dict(state)
    resumed.step()
    scheduler.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == schedule(7)
