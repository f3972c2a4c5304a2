"""Non-finite gradients in the real Trainer (one process, synthetic data): skipped and counted, or
the run stops with a message naming the step, the LR and the layer; too many skips stop it."""

import math
import tempfile

import pytest
import torch

from largebatch.config import apply_overrides
from largebatch.dist.env import DistEnv
from largebatch.plan import resolve
from largebatch.recipes import get_recipe
from largebatch.train.trainer import NonFiniteGradient, Trainer

STEP_RECIPE = "goyal2017_fashion_mnist_28px"  # step decay: the schedule these tests place

OVERRIDES = [
    "data.name=synthetic",
    "data.synthetic.train_samples=256",
    "data.synthetic.test_samples=64",
    "data.image_size_px=12",
    "train.global_batch_size=64",
    "train.bn.batch_size=16",
    "train.epochs=2",
    "train.checkpoint_every_epochs=100",
    "model.width=4",
    "schedule.warmup_epochs=0",
    "schedule.decay_epochs=[1.5]",
    "train.log_every_steps=1",
]


def run(extra, bad_steps):
    cfg = apply_overrides(get_recipe(STEP_RECIPE), OVERRIDES + extra)
    env = DistEnv(0, 1, 0, 1, torch.device("cpu"), None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, resolve(cfg, 1), env, tmp)
        weight = trainer.model.fc.weight
        weight.register_hook(lambda g: g * float("nan") if trainer.state.step in bad_steps else g)
        before = {}
        original = trainer.optimizer.step

        def step_spy(*a, **k):
            before[trainer.state.step] = True
            return original(*a, **k)

        trainer.optimizer.step = step_spy
        try:
            trainer.fit()
        finally:
            trainer.metrics.close()
        return trainer, before


def test_skip_policy_skips_and_counts():
    trainer, stepped = run([], bad_steps={2, 5})
    assert trainer.state.skipped_steps == 2 and trainer.state.step == 8
    assert sorted(stepped) == [0, 1, 3, 4, 6, 7]  # the optimizer never saw the two bad steps
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert math.isfinite(trainer.state.top1)


def test_stop_policy_names_step_lr_and_layer():
    with pytest.raises(NonFiniteGradient, match=r"step 3 \(epoch 0, LR 0\.1\): non-finite gradient in fc\.weight"):
        run(["train.nonfinite_policy=stop", "optim.base_lr=0.4"], bad_steps={3})


def test_too_many_skips_stop_the_run():
    with pytest.raises(NonFiniteGradient, match="more than train.max_nonfinite_steps=2"):
        run(["train.max_nonfinite_steps=2"], bad_steps={1, 2, 3})


def test_step_and_minute_checkpoint_intervals():
    """train.checkpoint_every_steps and _minutes write mid-epoch checkpoints (one process)."""
    for extra, expected in (
        (["train.checkpoint_every_steps=3"], [3, 6, 8]),
        (["train.checkpoint_every_minutes=0.000001"], [1, 2, 3, 4, 5, 6, 7, 8]),
    ):
        cfg = apply_overrides(get_recipe(STEP_RECIPE), OVERRIDES + extra)
        env = DistEnv(0, 1, 0, 1, torch.device("cpu"), None)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, resolve(cfg, 1), env, tmp)
            saved = []
            original = trainer.save
            trainer.save = lambda saved=saved, trainer=trainer, original=original: (
                saved.append(trainer.state.step),
                original(),
            )
            trainer.fit()
            trainer.metrics.close()
        # the end of the run (step 8) is always saved; the interval adds the others
        assert sorted(set(saved)) == expected, (extra, saved)


@pytest.mark.parametrize(
    "optim", [[], ["optim.name=lars", "optim.base_lr=2.0", "schedule.name=poly"]], ids=["sgd", "lars"]
)
def test_device_check_skips_like_the_host_check(optim):
    """train.nonfinite_check=device (the CUDA default: no host sync per step) applies the step and
    undoes it on the device where a gradient is not finite; the result equals the host check's."""
    host, _ = run(["train.nonfinite_check=host"] + optim, bad_steps={0, 2, 5})
    device, _ = run(["train.nonfinite_check=device"] + optim, bad_steps={0, 2, 5})
    assert device.device_guard and not host.device_guard
    if optim:  # one guard, the trainer's: the optimizer's own host-synced check is off in both modes
        assert device.optimizer.skip_nonfinite is False and host.optimizer.skip_nonfinite is False
        assert device.optimizer.skipped_steps == host.optimizer.skipped_steps == 0  # counted once, by the trainer
    assert host.state.skipped_steps == device.state.skipped_steps == 3
    for (name, a), b in zip(host.model.state_dict().items(), device.model.state_dict().values()):
        assert torch.equal(a, b), name
    a_state, b_state = host.optimizer.state_dict()["state"], device.optimizer.state_dict()["state"]
    for k in a_state:
        for key, v in a_state[k].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b_state[k][key]), (k, key)


def test_device_check_stop_policy_reports_the_first_bad_step():
    with pytest.raises(NonFiniteGradient, match=r"step 3 \(LR 0\.1\): non-finite gradient in fc\.weight"):
        run(["train.nonfinite_check=device", "train.nonfinite_policy=stop", "optim.base_lr=0.4"], bad_steps={3})


@pytest.mark.parametrize(
    "optim",
    [["optim.name=lamb", "optim.base_lr=0.002"], ["optim.name=rmsprop_warmup", "optim.base_lr=0.1"]],
    ids=["lamb", "rmsprop_warmup"],
)
def test_device_check_counts_bad_steps_once_and_takes_back_the_optimizers_counters(optim):
    """LAMB and RMSprop warm-up keep host step counters that an undone step advances; the guard takes
    them back at its next sync, so after the run they equal the host check's (bad steps 0, 2, 5 are
    each settled at the next log, after every step)."""
    host, _ = run(["train.nonfinite_check=host", "train.log_every_steps=1"] + optim, bad_steps={0, 2, 5})
    device, _ = run(["train.nonfinite_check=device", "train.log_every_steps=1"] + optim, bad_steps={0, 2, 5})
    assert host.state.skipped_steps == device.state.skipped_steps == 3
    assert host.optimizer.skip_nonfinite is False and device.optimizer.skip_nonfinite is False
    assert device.optimizer.skipped_steps == 0
    if optim[0].endswith("lamb"):
        counts = lambda opt: sorted(s["step"] for s in opt.state.values())  # noqa: E731
        assert counts(device.optimizer) == counts(host.optimizer) and max(counts(host.optimizer)) == 5
    else:
        assert device.optimizer.steps_done == host.optimizer.steps_done == 5
    # with a settle after every step, each undone step's count is taken back before the next step:
    # the two guards give the same weights
    for (name, a), b in zip(host.model.state_dict().items(), device.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("check", ["host", "device"])
def test_a_skipped_step_leaves_the_bn_statistics_as_they_were(check):
    # a NaN input makes the forward write NaN into the BN running statistics before the guard sees
    # the gradients; the skipped step must leave every buffer (and parameter) as it was
    cfg = apply_overrides(get_recipe(STEP_RECIPE), OVERRIDES + [f"train.nonfinite_check={check}"])
    env = DistEnv(0, 1, 0, 1, torch.device("cpu"), None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, resolve(cfg, 1), env, tmp)
        trainer.sampler.set_epoch(0)
        images, labels = next(iter(trainer.data.train_batches(trainer.sampler, seed=0)))
        trainer._train_step(images, labels)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        bad = images.clone()
        bad[0] = float("nan")
        trainer._train_step(bad, labels)
        trainer.guard.settle(trainer.state)
        after = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer._train_step(images, labels)  # and training goes on from there
        trainer.metrics.close()
    assert trainer.state.skipped_steps == 1
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # running_mean, running_var, num_batches_tracked, weights
    assert all(torch.isfinite(b).all() for b in trainer.model.buffers() if b.is_floating_point())
