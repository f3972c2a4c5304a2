"""The branches of ``largebatch critical-batch`` (:mod:`largebatch.study.branch`) as runs: the settings
of one branch, and the driver that runs the branches of several plans side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from pathlib import Path

from largebatch.study.launch import TrainProcess, stop

PRECISE_BN_IMAGES = 2048
"""Training images over which each evaluation's BN statistics are recomputed (precise BN)."""
POLL_S = 0.2
"""How often the driver looks at its running branches."""


def branch_overrides(
    n_train: int,
    checkpoint: Path,
    batch: int,
    lr: float,
    budget_images: int,
    val_size: int,
    seed: int = 0,
) -> list[str]:
    """The ``--set`` items of one branch: ``lr`` decaying linearly to 0 over ``budget_images // batch``
    steps from ``checkpoint``'s weights, one evaluation (with precise BN) at the end."""
    epochs = max(1, math.ceil(budget_images / max(1, n_train)))
    steps = max(1, budget_images // batch)
    steps_per_epoch = max(1, n_train // batch)  # the drop-last loader's (largebatch.schedules.lr)
    return [
        f"train.seed={seed}",
        "train.val_every_steps=0",
        f"train.val_at_steps=[{steps}]",
        f"train.init_from={checkpoint}",
        # precise BN before the evaluation: the checkpoint's moving averages lag weights that moved
        # fast at the reference's LR, and a branch's own lag its last steps; either would be read as loss
        "train.bn.statistics=precise",
        f"train.bn.precise_batches={max(1, math.ceil(PRECISE_BN_IMAGES / batch))}",
        f"train.global_batch_size={batch}",
        f"train.epochs={epochs}",
        f"train.stop_after_images={budget_images}",
        "train.batch_schedule=[]",
        f"optim.base_lr={lr}",
        f"optim.base_batch_size={batch}",
        "optim.lr_scaling=linear",
        "schedule.name=poly",
        "schedule.poly.power=1",
        "schedule.end_lr=0",
        f"schedule.decay_end_epochs={steps / steps_per_epoch!r}",
        "schedule.warmup_epochs=0",
        f"data.val_size={val_size}",
        f"train.eval_every_epochs={epochs}",
        f"train.checkpoint_every_epochs={epochs}",
        "train.checkpoint_every_steps=0",
        "train.checkpoint_every_minutes=0",
        "train.stop_at_val_top1=0",
        "train.val_target_top1=0",
        "train.keep_checkpoints=1",
    ]


Plan = Generator[list, list, object]
"""A plan for :class:`Driver`: yields lists of branch jobs, is sent back their run directories once
all of them finished, and returns its result."""


class Driver:
    """Runs generator plans side by side: each yields a list of branch jobs and is sent back their
    run directories once all of them finished; the branches of all plans run ``parallel`` at once.
    A job whose run directory has a ``summary.json`` is done already; two jobs of one run directory
    run once. ``start(job)`` starts a job's run and ``finish(job, process)`` reads it when it ended
    (and raises to stop everything: the runs still going are stopped, and a rerun resumes them)."""

    def __init__(
        self,
        *,
        parallel: int,
        run_dir_of: Callable[..., Path],
        start: Callable[[tuple], TrainProcess],
        finish: Callable[[tuple, TrainProcess], None],
    ) -> None:
        self.parallel, self.run_dir_of, self.start, self.finish = parallel, run_dir_of, start, finish

    def drive(self, plans: list[Plan]) -> list:
        """Run ``plans`` to their ends; returns each plan's return value."""
        self.plans, self.results = plans, [None] * len(plans)
        self.waiting: dict = {}  # plan index -> (its jobs, those not finished)
        self.queue: list = []
        for k in range(len(plans)):
            self._advance(k, None)
        running: list = []
        try:
            while self.queue or running:
                while self.queue and len(running) < self.parallel:
                    k, job = self.queue.pop(0)
                    running.append((k, job, self.start(job)))
                done = next((r for r in running if r[2].poll() is not None), None)
                if done is None:
                    time.sleep(POLL_S)
                    continue
                running.remove(done)
                k, job, process = done
                self.finish(job, process)
                jobs, left = self.waiting[k]
                left.discard(job)
                if not left:
                    del self.waiting[k]
                    self._advance(k, [self.run_dir_of(*x) for x in jobs])
        finally:  # an error or a signal: the others stop too (a rerun resumes them)
            stop([process for _, _, process in running])
        return self.results

    def _advance(self, k: int, sent) -> None:
        """Send plan ``k`` the run directories of its last jobs and queue its next ones not yet done."""
        while True:
            try:
                jobs = self.plans[k].send(sent)
            except StopIteration as stopped:
                self.results[k] = stopped.value
                return
            todo = list(  # once per run directory: two LRs of the grid may be one run
                {
                    self.run_dir_of(*job): job for job in jobs if not (self.run_dir_of(*job) / "summary.json").is_file()
                }.values()
            )
            if todo:
                self.waiting[k] = (jobs, set(todo))
                self.queue.extend((k, job) for job in todo)
                return
            sent = [self.run_dir_of(*job) for job in jobs]
