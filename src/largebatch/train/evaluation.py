"""Evaluation of the test split and of the held-out validation split, and what the run records of it:
top-1, the best top-1, the time to ``train.target_top1`` and the steps to the validation target
(Shallue et al. 2018 sec. 3.2: steps to a validation target)."""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.dist import DistEnv, all_reduce_sum

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    env: DistEnv,
    *,
    channels_last: bool,
    batch_size: int,
    split: str = "test",
    autocast_dtype: torch.dtype | None = None,
    flip: bool = False,
) -> dict:
    """Top-1 (and top-5 when there are more than 10 classes) and mean loss on the ``test`` split (or
    the held-out ``val`` split); every sample is counted exactly once across ranks (sums
    all-reduced). ``autocast_dtype``: the forward pass in that autocast (the run's precision); the
    loss and the counts are summed in fp64. ``flip``: test-time augmentation, the logits are the mean
    of the image's and its left-right mirror's (``train.eval_flip``). Returns ``{"loss", "count", "top1"[, "top5"]}``
    (top-1 and top-5 in percent)."""
    model.eval()
    topk = (1, 5) if data.num_classes > 10 else (1,)
    sums = torch.zeros(2 + len(topk), dtype=torch.float64, device=env.device)  # loss, count, correct@k
    batches = data.eval_batches(world_size=env.world_size, rank=env.rank, batch_size=batch_size, split=split)
    for images, labels in batches:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(env.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images).float()
            if flip:
                logits = (logits + model(images.flip(3)).float()) / 2
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += labels.numel()
        pred = logits.topk(max(topk), dim=1).indices
        hits = pred == labels[:, None]
        for i, k in enumerate(topk):
            sums[2 + i] += hits[:, :k].any(dim=1).sum()
    all_reduce_sum(sums)
    model.train()
    loss, count = sums[0].item(), sums[1].item()
    out = {"loss": loss / count, "count": int(count), "top1": 100.0 * sums[2].item() / count}
    if len(topk) > 1:
        out["top5"] = 100.0 * sums[3].item() / count
    return out


class Evaluator:
    """Evaluates the run's model and records the result in its ``TrainState`` and metrics.

    ``prepare()`` is called first at every evaluation (it settles the non-finite guard and the BN
    statistics); ``position`` gives the fractional epoch and the LR of a step for the records."""

    def __init__(
        self,
        model: nn.Module,
        data,
        env: DistEnv,
        train_cfg,
        metrics,
        position,
        *,
        channels_last: bool,
        autocast_dtype: torch.dtype | None,
        prepare,
    ) -> None:
        self.model, self.data, self.env, self.cfg, self.metrics, self.position = (
            model,
            data,
            env,
            train_cfg,
            metrics,
            position,
        )
        self.prepare = prepare
        self.kwargs = dict(
            channels_last=channels_last,
            batch_size=train_cfg.eval_batch_size,
            autocast_dtype=autocast_dtype,
            flip=train_cfg.eval_flip,
        )

    def _record_val(self, state, v: dict) -> None:
        state.val_top1 = v["top1"]
        state.best_val_top1 = max(state.best_val_top1 or 0.0, v["top1"])
        target = self.cfg.stop_at_val_top1 or self.cfg.val_target_top1
        if target and state.steps_to_val_target is None and v["top1"] >= target:
            state.steps_to_val_target, state.images_to_val_target = state.step, state.images_seen
            log.info(
                "validation top-1 %.2f%% reached the target %.2f%% at step %d (%d images)",
                v["top1"],
                target,
                state.step,
                state.images_seen,
            )

    def reached_val_stop(self, state) -> bool:
        """True when ``train.stop_at_val_top1`` is set and the validation target has been reached."""
        return bool(self.cfg.stop_at_val_top1) and state.steps_to_val_target is not None

    def _where(self, state) -> dict:
        return dict(
            step=state.step,
            epoch=self.position.epoch_position(state.step),
            lr=self.position.lr_at(max(state.step - 1, 0)),
        )

    def validation(self, state, *, wall_clock) -> bool:
        """Evaluate the validation split only (``train.val_every_steps``); True when the run should stop
        at the validation target."""
        t0 = time.perf_counter()
        self.prepare()
        v = evaluate(self.model, self.data, self.env, split="val", **self.kwargs)
        self._record_val(state, v)
        self.metrics.write("eval", **self._where(state), val_top1=v["top1"], val_loss=v["loss"], wall_s=wall_clock())
        log.info("eval step %d: validation top-1 %.2f%%, loss %.4f", state.step, v["top1"], v["loss"])
        state.eval_s += time.perf_counter() - t0
        return self.reached_val_stop(state)

    def full(self, state, *, wall_clock) -> None:
        """The test split (and the validation split, if held out), recorded and logged."""
        t0 = time.perf_counter()
        self.prepare()
        result = evaluate(self.model, self.data, self.env, **self.kwargs)
        val = {}
        if self.data.num_val:
            v = evaluate(self.model, self.data, self.env, split="val", **self.kwargs)
            val = {"val_top1": v["top1"], "val_loss": v["loss"]}
            self._record_val(state, v)
        state.top1 = result["top1"]
        state.best_top1 = max(state.best_top1, result["top1"])
        wall = wall_clock()
        target = self.cfg.target_top1
        if target and state.time_to_target_s is None and result["top1"] >= target:
            state.time_to_target_s = wall
        self.metrics.write(
            "eval",
            **self._where(state),
            loss=result["loss"],
            top1=result["top1"],
            top5=result.get("top5"),
            wall_s=wall,
            **val,
        )
        log.info(
            "eval epoch %d step %d: top-1 %.2f%%%s, loss %.4f (%d images)%s",
            state.epoch,
            state.step,
            result["top1"],
            f", top-5 {result['top5']:.2f}%" if "top5" in result else "",
            result["loss"],
            result["count"],
            f"; validation top-1 {val['val_top1']:.2f}%" if val else "",
        )
        state.eval_s += time.perf_counter() - t0
