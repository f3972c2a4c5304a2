"""The checkpoint manager on its own (one process, a stand-in loop): which steps its triggers save
(step interval, epoch interval, the end, a signal mid-epoch and on an epoch's last step), the rotation
to ``train.keep_checkpoints``, the parts a checkpoint holds, and what loading hands back or refuses."""

import logging

import pytest
import torch

from largebatch.config import ConfigError, apply_overrides
from largebatch.dist.env import DistEnv
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.callbacks import CallbackList, StepEnd
from largebatch.train.checkpoint_manager import CheckpointManager, Preempted, ProcessRNG
from largebatch.train.precision import choose_precision
from largebatch.train.state import TrainState

ENV = DistEnv(0, 1, 0, 1, torch.device("cpu"), None)
STEPS_PER_EPOCH = 4


class Position:
    def sampler_record(self, step, epoch):
        return {"seed": 0, "epoch": epoch, "step_in_epoch": step % STEPS_PER_EPOCH}


class Loop:
    """What the manager's hooks read and call on the trainer."""

    def __init__(self, manager, epochs):
        self.manager, self.state, self.epochs, self.saved = manager, manager.state, epochs, []

    def finished(self):
        return self.state.epoch >= self.epochs

    def save_now(self):
        self.saved.append(self.state.step)
        self.manager.save()


def _manager(tmp_path, overrides=(), stop=lambda: 0, model=None):
    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), list(overrides))
    state, callbacks = TrainState(), CallbackList()
    parts = {"model": model or torch.nn.Linear(2, 2), "train_state": state, "rng": ProcessRNG(ENV)}
    prepared = []
    manager = CheckpointManager(
        cfg,
        ENV,
        tmp_path,
        choose_precision("fp32", ENV.device),
        Position(),
        state,
        parts,
        callbacks,
        prepare=lambda: prepared.append(state.step),
        stop_requested=stop,
    )
    callbacks.append(manager)
    return manager, prepared


def _run(manager, epochs):
    """The loop's calls to the manager for ``epochs`` epochs of STEPS_PER_EPOCH steps."""
    loop, st = Loop(manager, epochs), manager.state
    while not loop.finished():
        manager.on_epoch_start(loop)
        for i in range(STEPS_PER_EPOCH):
            st.step += 1
            manager.on_step_end(loop, StepEnd(torch.zeros(()), True, 0.1, st.epoch, i == STEPS_PER_EPOCH - 1))
        st.epoch += 1
        manager.on_epoch_end(loop)
    return loop


def test_step_epoch_and_end_triggers_and_the_rotation(tmp_path):
    manager, prepared = _manager(tmp_path, ["train.checkpoint_every_steps=3", "train.checkpoint_every_epochs=2"])
    loop = _run(manager, epochs=3)
    # steps 3, 6, 9 by the interval (12 is the epoch's last step: its end decides), epoch 2 at step 8,
    # the end at step 12
    assert loop.saved == prepared == [3, 6, 8, 9, 12]
    assert [ckpt_io.step_of(p) for p in ckpt_io.list_checkpoints(tmp_path)] == [9, 12]  # keep_checkpoints=2
    assert manager.state.checkpoint_s > 0


def test_a_signal_saves_then_stops_mid_epoch_or_at_the_epoch_end(tmp_path):
    level = {"now": 0}
    manager, _ = _manager(tmp_path / "a", stop=lambda: level["now"])
    loop, st = Loop(manager, 2), manager.state
    manager.on_epoch_start(loop)
    st.step = 1
    manager.on_step_end(loop, StepEnd(torch.zeros(()), True, 0.1, 0, False))
    level["now"] = 2  # SIGINT outranks SIGTERM
    st.step = 2
    with pytest.raises(Preempted) as stopped:
        manager.on_step_end(loop, StepEnd(torch.zeros(()), True, 0.1, 0, False))
    assert stopped.value.args == (2, "SIGINT") and loop.saved == [2]

    manager, _ = _manager(tmp_path / "b", stop=lambda: 1)
    loop, st = Loop(manager, 2), manager.state
    manager.on_epoch_start(loop)
    st.step = STEPS_PER_EPOCH
    assert manager.on_step_end(loop, StepEnd(torch.zeros(()), True, 0.1, 0, True)) is False  # left to the epoch end
    assert loop.saved == []
    st.epoch = 1
    with pytest.raises(Preempted) as stopped:
        manager.on_epoch_end(loop)
    assert stopped.value.args == (STEPS_PER_EPOCH, "SIGTERM") and loop.saved == [STEPS_PER_EPOCH]


def test_the_parts_and_what_loading_hands_back(tmp_path, caplog):
    manager, _ = _manager(tmp_path)
    manager.state.step, manager.state.epoch = 5, 1
    manager.save()
    path = ckpt_io.list_checkpoints(tmp_path)[-1]
    ckpt = ckpt_io.load_checkpoint(path)
    header = {"format", "config", "config_hash", "world_size", "precision", "scaler", "sampler"}
    assert set(ckpt) == header | {"model", "train_state", "rng", "checkpointing"} and ckpt["checkpointing"] == {}

    fresh, _ = _manager(tmp_path / "fresh")
    with caplog.at_level(logging.WARNING):
        fresh.load(path, {**ckpt, "precision": "bf16"}, plan=None)
    assert (fresh.state.step, fresh.state.epoch) == (5, 1)
    assert "was trained in bf16, this segment runs in fp32" in caplog.text
    for name, tensor in manager.parts["model"].state_dict().items():
        assert torch.equal(tensor, fresh.parts["model"].state_dict()[name])

    with pytest.raises(ConfigError, match="another config"):
        _manager(tmp_path / "other", ["train.seed=99"])[0].load(path, plan=None)
    with pytest.raises(ConfigError, match="does not fit the model the config builds"):
        _manager(tmp_path / "wide", model=torch.nn.Linear(3, 2))[0].load(path, plan=None)
    with pytest.raises(ConfigError, match="its 'train_state' state does not fit this run"):
        fresh.load(path, {**ckpt, "train_state": {"step": 1, "no_such_counter": 2}}, plan=None)
