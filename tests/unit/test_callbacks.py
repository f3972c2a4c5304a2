"""The trainer's callbacks and the checkpoint assembled from its parts (one process, synthetic data):
every callback sees every step, a stopping callback ends the run inside the epoch and the later ones
do not see that step, and a checkpoint holds exactly the header, each part's and each callback's
``state_dict()``, which ``load`` hands back."""

import tempfile
from pathlib import Path

import pytest
import torch

from largebatch.config import apply_overrides
from largebatch.dist.env import DistEnv
from largebatch.plan import resolve
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.callbacks import Callback, CallbackList, StepEnd
from largebatch.train.loop import TrainState
from largebatch.train.trainer import Trainer

OVERRIDES = [
    "data.name=synthetic",
    "data.synthetic.train_samples=256",
    "data.synthetic.test_samples=64",
    "data.image_size_px=12",
    "train.global_batch_size=64",
    "train.bn.batch_size=16",
    "train.epochs=2",
    "model.width=4",
    "schedule.warmup_epochs=0",
    "train.log_every_steps=1",
]
ENV = DistEnv(0, 1, 0, 1, torch.device("cpu"), None)


class Recorder(Callback):
    name = "recorder"

    def __init__(self, stop_at_step=None):
        self.events, self.stop_at_step, self.loaded = [], stop_at_step, None

    def on_epoch_start(self, loop):
        self.events.append(("epoch_start", loop.state.epoch))

    def on_step_end(self, loop, step):
        self.events.append(("step", loop.state.step, step.epoch, step.epoch_end))
        return loop.state.step == self.stop_at_step

    def on_epoch_end(self, loop):
        self.events.append(("epoch_end", loop.state.epoch))

    def on_stop_in_epoch(self, loop):
        self.events.append(("stop", loop.state.step))

    def state_dict(self):
        return {"steps_seen": sum(e[0] == "step" for e in self.events)}

    def load_state_dict(self, state):
        self.loaded = state


def _trainer(tmp, extra=()):
    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), OVERRIDES + list(extra))
    return Trainer(cfg, resolve(cfg, 1), ENV, Path(tmp))


def test_every_step_and_epoch_reaches_the_callbacks_in_order():
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(tmp)
        rec = Recorder()
        trainer.callbacks.append(rec)
        trainer.fit()
    steps = [e for e in rec.events if e[0] == "step"]
    assert [s[1] for s in steps] == list(range(1, 9))  # 256 / 64 = 4 steps per epoch, 2 epochs
    assert [s[3] for s in steps] == [False, False, False, True] * 2
    assert rec.events[0] == ("epoch_start", 0) and rec.events[5] == ("epoch_end", 1)
    assert rec.events[-1] == ("epoch_end", 2)


def test_a_stopping_callback_ends_the_run_inside_the_epoch_and_later_callbacks_miss_that_step():
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(tmp)
        stopper, after = Recorder(stop_at_step=3), Recorder()
        trainer.callbacks.insert(0, stopper)
        trainer.callbacks.append(after)
        state = trainer.fit()
        saved = ckpt_io.list_checkpoints(Path(tmp))
    assert state.step == 3 and state.epoch == 0
    assert stopper.events[-1] == ("stop", 3) and after.events[-1] == ("stop", 3)
    assert [e[1] for e in after.events if e[0] == "step"] == [1, 2]
    assert [int(p.name[9:17]) for p in saved] == [3]  # the checkpoint callback wrote the run's last step


def test_checkpoint_is_assembled_from_parts_and_callbacks_and_load_hands_them_back():
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(tmp, ["train.epochs=1"])
        trainer.callbacks.append(Recorder())
        trainer.fit()
        payload = trainer.checkpoint_payload()
        header = {"config", "config_hash", "world_size", "precision", "sampler", "scaler"}
        parts = set(trainer.checkpoint_parts())
        assert parts == {"model", "optimizer", "train_state", "rng"}
        assert set(payload) == header | parts | {"noise_scale", "evaluation", "checkpointing", "log", "recorder"}
        assert payload["recorder"] == {"steps_seen": 4}
        assert payload["train_state"]["step"] == 4

        path, ckpt = ckpt_io.latest_valid_checkpoint(Path(tmp))
        fresh = _trainer(Path(tmp) / "again", ["train.epochs=1"])
        rec = Recorder()
        fresh.callbacks.append(rec)
        fresh.load(path, ckpt)
        assert rec.loaded == {"steps_seen": 4}
        rec.loaded = None
        fresh.load(path, {k: v for k, v in ckpt.items() if k != "recorder"})  # an older file: nothing to hand back
        assert rec.loaded is None
        assert fresh.state.step == 4 and fresh.state.epoch == 1
        for name, tensor in trainer.model.state_dict().items():
            assert torch.equal(tensor, fresh.model.state_dict()[name]), name
        fresh.metrics.close()


def test_callback_list_stops_at_the_first_callback_that_asks():
    calls = []

    class Ask(Callback):
        def __init__(self, tag, answer):
            self.tag, self.answer = tag, answer

        def on_step_end(self, loop, step):
            calls.append(self.tag)
            return self.answer

    cbs = CallbackList([Ask("a", False), Ask("b", True), Ask("c", False)])
    assert cbs.step_end(None, StepEnd(torch.zeros(()), True, 0.1, 0, False)) is True
    assert calls == ["a", "b"]


def test_train_state_round_trips_and_refuses_unknown_counters():
    st = TrainState(step=7, epoch=2, best_top1=81.5, skipped_steps=1)
    other = TrainState()
    other.load_state_dict(st.state_dict())
    assert other == st
    with pytest.raises(TypeError):
        other.load_state_dict({"step": 1, "no_such_counter": 3})
