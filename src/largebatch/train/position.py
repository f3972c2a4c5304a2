"""Where a run is: its epochs, batch stages and LR position, in one accounting for fixed and scheduled
batches.

Each epoch has ``N // B_e`` optimizer steps (drop last), with ``B_e`` the global batch of the stage that
the epoch belongs to (one stage without ``train.batch_schedule``); epoch ``e`` starts at step
``epoch_start[e]``. The LR of a step is a pure function of the step:

* fixed batch: the schedule at the step (warmup and decays placed at ``round(epoch * steps_per_epoch)``);
* a batch schedule (Mikami et al. 2018, sec. 3.1): the schedule at the position in samples of the
  nominal epoch (``N`` per epoch), with the peak LR of the step's stage, so warmup and decay boundaries
  sit at the same epochs whatever the batch of each stage.

A checkpoint needs only the step: everything here is derived from it and the config.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from largebatch.config import Config
from largebatch.data import GlobalBatchSampler
from largebatch.plan import Stage
from largebatch.schedules import LRSchedule, build_schedule


class StepPosition:
    """Epoch boundaries, stages and the LR of every step of a run of ``cfg.train.epochs`` epochs over
    ``num_train`` training samples.

    Attributes:
        epoch_steps: optimizer steps of each epoch (list of ``epochs`` ints).
        epoch_start: the step each epoch starts at (``epochs + 1`` ints; the last is ``total_steps``).
        steps_per_epoch: steps of the first epoch (of every epoch without a batch schedule).
        total_steps: steps of the whole run.
        schedule: the first stage's :class:`LRSchedule` (in steps without a batch schedule, in
            samples with one).
    """

    def __init__(self, cfg: Config, stages: list[Stage], num_train: int) -> None:
        epochs = cfg.train.epochs
        self.stages, self.num_train, self.epochs, self.seed = stages, num_train, epochs, cfg.train.seed
        self.batch_schedule = bool(cfg.train.batch_schedule)
        self._stage_starts = [st.start_epoch for st in stages]  # increasing (largebatch.plan checks it)
        self.epoch_steps = [num_train // self.stage_of(e).plan.global_batch_size for e in range(epochs)]
        self.epoch_start = list(accumulate(self.epoch_steps, initial=0))  # linear: 10**6 epochs start at once
        self.steps_per_epoch = self.epoch_steps[0]
        self.total_steps = self.epoch_start[-1]
        unit = num_train if self.batch_schedule else self.steps_per_epoch  # samples or steps per epoch
        self.stage_schedules: list[LRSchedule] = [
            build_schedule(
                cfg.schedule, peak_lr=st.plan.peak_lr, base_lr=cfg.optim.base_lr, steps_per_epoch=unit, epochs=epochs
            )
            for st in (stages if self.batch_schedule else stages[:1])
        ]
        self.schedule = self.stage_schedules[0]

    def stage_of(self, epoch: int) -> Stage:
        """The batch stage that ``epoch`` belongs to."""
        i = bisect_right(self._stage_starts, epoch) - 1
        if i < 0:
            raise IndexError(f"epoch {epoch} is before the first batch stage (epoch {self._stage_starts[0]})")
        return self.stages[i]

    def epoch_position(self, step: int) -> float:
        """Fractional epoch reached after ``step`` optimizer steps (epoch + share of its steps done)."""
        epoch = (
            bisect_right(self.epoch_start, step, 0, self.epochs) - 1  # the last epoch starting at or before step
            if step < self.total_steps
            else self.epochs
        )
        if epoch >= self.epochs:
            return float(epoch)
        return epoch + (step - self.epoch_start[epoch]) / self.epoch_steps[epoch]

    def lr_at(self, step: int) -> float:
        """LR of optimizer step ``step``."""
        if not self.batch_schedule:
            return self.schedule(step)
        position = self.epoch_position(step)
        stage = self.stage_of(min(int(position), self.epochs - 1))
        return self.stage_schedules[stage.index](position * self.num_train)

    def step_in_epoch(self, step: int, epoch: int) -> int:
        """Steps of ``epoch`` done at ``step``."""
        return step - self.epoch_start[min(epoch, self.epochs)]

    def is_epoch_end(self, step: int, epoch: int) -> bool:
        return step == self.epoch_start[epoch + 1]

    def sampler(self, stage: Stage, env) -> GlobalBatchSampler:
        """This rank's sampler of ``stage``. The shuffle of an epoch depends on (seed, epoch) only, so a
        stage change keeps one permutation per epoch; only how it is cut into global batches changes."""
        return GlobalBatchSampler(
            self.num_train, stage.plan.global_batch_size, world_size=env.world_size, rank=env.rank, seed=self.seed
        )

    def sampler_record(self, step: int, epoch: int) -> dict:
        """Where the sample order stands after ``step`` (for a checkpoint's reader; resuming derives it
        from the step): seed, epoch, step within the epoch, batch stage and its global batch."""
        stage = self.stage_of(min(epoch, self.epochs - 1))
        return {
            "seed": self.seed,
            "epoch": epoch,
            "step_in_epoch": self.step_in_epoch(step, epoch),
            "stage": stage.index,
            "global_batch_size": stage.plan.global_batch_size,
        }

    def describe(self, global_batch_size: int) -> list[str]:
        """Log lines: steps per epoch (or per stage), warmup and decays."""
        n = self.num_train
        if self.batch_schedule:
            lines = [
                f"batch stage {st.index} from epoch {st.start_epoch}: {st.plan.describe()}; "
                f"{n // st.plan.global_batch_size} steps/epoch"
                for st in self.stages
            ]
            return lines + [
                f"{n} training samples, {self.total_steps} steps in {self.epochs} epochs; warmup and decay "
                f"positions in epochs of samples seen"
            ]
        return [
            f"{n} training samples, {self.steps_per_epoch} steps/epoch (drop last "
            f"{n - self.steps_per_epoch * global_batch_size}), {self.total_steps} steps in {self.epochs} epochs, "
            f"warmup {self.schedule.warmup_steps} steps, decay at steps {list(self.schedule.decay_steps)}"
        ]
