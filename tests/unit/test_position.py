"""StepPosition: one accounting of epochs, stages and LR for fixed and scheduled batches, against
closed forms (drop-last steps per epoch, fractional epochs, warmup and decays at their epochs, each
stage's peak LR in samples of the nominal epoch)."""

import signal

import pytest

from largebatch.config import apply_overrides
from largebatch.plan import resolve_stages
from largebatch.recipes import get_recipe
from largebatch.train.position import StepPosition

STEP_RECIPE = "goyal2017_fashion_mnist_28px"  # step decay: the schedule these tests place

BASE = [
    "data.name=synthetic",
    "data.synthetic.train_samples=512",
    "train.bn.batch_size=16",
    "optim.base_lr=0.1",
    "optim.base_batch_size=64",
    "schedule.warmup_epochs=0.5",
    "schedule.decay_epochs=[2.5]",
    "train.epochs=3",
]


def position(extra, n=512, world=2):
    cfg = apply_overrides(get_recipe(STEP_RECIPE), BASE + extra)
    return StepPosition(cfg, resolve_stages(cfg, world), n)


def test_fixed_batch_steps_epochs_and_lr():
    pos = position(["train.global_batch_size=96"])
    assert pos.epoch_steps == [5, 5, 5] and pos.epoch_start == [0, 5, 10, 15] and pos.total_steps == 15  # 512 // 96
    assert (
        pos.epoch_position(0) == 0.0 and pos.epoch_position(7) == pytest.approx(1.4) and pos.epoch_position(15) == 3.0
    )
    peak = 0.1 * 96 / 64
    warmup = round(0.5 * 5)  # 2 steps, from the base LR
    assert pos.lr_at(0) == pytest.approx(0.1) and pos.lr_at(1) == pytest.approx(0.1 + (peak - 0.1) / warmup)
    assert pos.lr_at(warmup) == pytest.approx(peak)
    decay = round(2.5 * 5)
    assert pos.lr_at(decay - 1) == pytest.approx(peak) and pos.lr_at(decay) == pytest.approx(peak * 0.1)
    assert pos.step_in_epoch(7, 1) == 2 and pos.is_epoch_end(10, 1) and not pos.is_epoch_end(9, 1)
    assert [pos.stage_of(e).index for e in range(3)] == [0, 0, 0]


def test_batch_schedule_counts_each_epochs_steps_and_places_the_lr_in_samples():
    pos = position(
        [
            "train.global_batch_size=64",
            "train.batch_schedule=[{start_epoch: 0, global_batch_size: 64}, "
            "{start_epoch: 1, global_batch_size: 256}, {start_epoch: 2, global_batch_size: 208, peak_lr: 0.05, bn_batch_size: 8}]",
        ]
    )
    assert pos.epoch_steps == [8, 2, 2] and pos.epoch_start == [0, 8, 10, 12]
    assert [pos.stage_of(e).index for e in range(3)] == [0, 1, 2]
    assert pos.epoch_position(9) == pytest.approx(1.5) and pos.epoch_position(11) == pytest.approx(2.5)
    # warmup over the first half epoch (256 samples = 4 steps of 64) from the base LR to stage 0's peak 0.1
    assert pos.lr_at(0) == pytest.approx(0.1) and pos.lr_at(4) == pytest.approx(0.1)
    # stage 1 (epoch 1): the linear rule's peak for 256, 0.4; stage 2 its own peak 0.05, decayed at epoch 2.5
    assert pos.lr_at(8) == pytest.approx(0.4) and pos.lr_at(9) == pytest.approx(0.4)
    assert pos.lr_at(10) == pytest.approx(0.05) and pos.lr_at(11) == pytest.approx(0.005)


def test_a_million_epochs_lay_out_in_linear_time():
    """epoch_start summed a prefix per epoch (quadratic): 10**4 epochs took 0.7 s, 10**6 hours."""
    extra = [
        "train.epochs=1000000",
        "train.global_batch_size=64",
        "train.batch_schedule=[{start_epoch: 0, global_batch_size: 64}, {start_epoch: 500000, global_batch_size: 256}]",
    ]

    def too_slow(signum, frame):
        raise TimeoutError("laying out 10**6 epochs took over 30 s: not linear")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(30)  # about 0.5 s; the quadratic sum took hours
    try:
        pos = position(extra)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert pos.epoch_start[:3] == [0, 8, 16] and pos.epoch_start[500_001] == 500_000 * 8 + 2
    assert pos.total_steps == 500_000 * 8 + 500_000 * 2 == pos.epoch_start[-1] and len(pos.epoch_start) == 1_000_001
    assert pos.stage_of(499_999).index == 0 and pos.stage_of(500_000).index == 1
    assert pos.epoch_position(8) == 1.0 and pos.epoch_position(500_000 * 8 + 1) == pytest.approx(500_000.5)
    assert pos.epoch_position(pos.total_steps) == 1_000_000.0
