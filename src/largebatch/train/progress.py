"""The training log of the loop: rank 0's progress bar (:class:`Progress`) and the loss and
throughput of each ``train.log_every_steps`` interval (:class:`IntervalLog`), which
:class:`~largebatch.train.callbacks.LogCallback` drives."""

from __future__ import annotations

import logging
import math
import sys
import time

import torch

from largebatch.dist import all_reduce_sum

log = logging.getLogger(__name__)


class Progress:
    """A live tqdm bar on rank 0's terminal, counting optimizer steps (``total_steps``, starting at
    ``initial``); in a log file (not a TTY) the interval log says it instead."""

    def __init__(self, env, total_steps: int, initial: int) -> None:
        self.bar = None
        if env.is_main:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                leave=False,
                disable=not sys.stderr.isatty(),
            )

    @property
    def live(self) -> bool:
        return self.bar is not None and not self.bar.disable

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class IntervalLog:
    """The training loss and throughput of each ``train.log_every_steps`` interval: summed on the
    device without a host sync, reduced across ranks once per interval (the one sync of the interval).
    The ``train`` record holds the mean loss (nats per image), the LR, images per second over all
    ranks and the training wall clock in seconds."""

    def __init__(self, env, metrics, progress: Progress, total_steps: int) -> None:
        self.env, self.metrics, self.progress, self.total_steps = env, metrics, progress, total_steps
        self.loss = torch.zeros((), device=env.device)
        self.steps, self.counted, self.t0 = 0, 0, time.perf_counter()

    def add(self, step_loss: torch.Tensor, ok: bool | torch.Tensor) -> None:
        """One step's summed micro-batch losses; a skipped step (``ok`` false) is not averaged."""
        if isinstance(ok, torch.Tensor):  # the device guard: no sync here
            self.loss += torch.where(ok, step_loss, torch.zeros_like(step_loss))
            self.counted = self.counted + ok.to(torch.int64)
        elif ok:
            self.loss += step_loss
            self.counted += 1
        self.steps += 1

    def flush(
        self, state, epoch: int, lr: float, global_batch_size: int, epoch_position: float, wall_clock, noise_values
    ) -> None:
        """Reduce, check, write the ``train`` record and the bar or log line, and start a new interval.

        Raises:
            FloatingPointError: the interval's mean loss is not finite.
        """
        loss = all_reduce_sum(self.loss.detach().clone()).item() / (max(int(self.counted), 1) * self.env.world_size)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {state.step} (epoch {epoch}, LR {lr:g}); lower "
                f"optim.base_lr or lengthen schedule.warmup_epochs"
            )
        now = time.perf_counter()
        ips = self.steps * global_batch_size / (now - self.t0)
        noise = noise_values()
        self.metrics.write(
            "train",
            step=state.step,
            epoch=epoch_position,
            lr=lr,
            loss=loss,
            images_per_s=ips,
            wall_s=wall_clock(),
            **noise,
        )
        if self.progress.live:
            self.progress.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.4g}", img_s=f"{ips:.0f}")
        else:
            log.info(
                "step %d/%d epoch %d: loss %.4f, lr %.4g, %.0f images/s",
                state.step,
                self.total_steps,
                epoch,
                loss,
                lr,
                ips,
            )
        self.loss.zero_()
        self.steps, self.counted, self.t0 = 0, 0, now
