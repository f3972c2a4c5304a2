"""What the BN layers need from the training loop, in one object set at construction.

Ghost BN and its variants (docs/bn.md) are layer state; the loop owes them four calls:

* :meth:`BNPolicy.begin_step` before each optimizer step (last-batch statistics restart per step,
  Akiba et al. 2017 sec. 3.3);
* :meth:`BNPolicy.set_stage` when a batch schedule changes the per-process BN batch (Mikami et al.
  2018 sec. 3.1);
* :meth:`BNPolicy.before_eval` before every evaluation: precise BN recomputes population statistics
  (``train.bn.statistics=precise``), then every rank's statistics are averaged, so all ranks evaluate
  the same model;
* :meth:`BNPolicy.before_checkpoint` before every checkpoint: the averaged statistics are the saved ones.
"""

from __future__ import annotations

import torch
from torch import nn

from largebatch.data import GlobalBatchSampler, derive_seed
from largebatch.nn import average_bn_statistics, recompute_bn_statistics, set_bn_batch_size, start_bn_step
from largebatch.plan import Plan


class BNPolicy:
    """Args: the (unwrapped) model, the run's data, the ``train`` config section, the plan of the
    first stage, the distributed environment, the memory format and the autocast dtype of the run."""

    def __init__(
        self,
        model: nn.Module,
        data,
        train_cfg,
        plan: Plan,
        env,
        *,
        channels_last: bool,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.model, self.data, self.cfg, self.plan, self.env = model, data, train_cfg, plan, env
        self.channels_last, self.autocast_dtype = channels_last, autocast_dtype

    def begin_step(self) -> None:
        start_bn_step(self.model)

    def set_stage(self, plan: Plan) -> None:
        self.plan = plan
        set_bn_batch_size(self.model, plan.bn_local_batch_size)

    def before_checkpoint(self) -> None:
        average_bn_statistics(self.model, samples_per_step=self.plan.global_batch_size)

    def before_eval(self, epoch: int, steps_per_epoch: int) -> None:
        if self.cfg.bn.statistics == "precise":
            self._precise_bn(epoch, steps_per_epoch)
        self.before_checkpoint()

    def _precise_bn(self, epoch: int, steps_per_epoch: int) -> None:
        """Population BN statistics over train.bn.precise_batches global batches of the current epoch's
        stage (at most one epoch), drawn with their own shuffle and augmentation seed."""
        k = min(self.cfg.bn.precise_batches, steps_per_epoch)
        sampler = GlobalBatchSampler(
            self.data.num_train,
            self.plan.global_batch_size,
            world_size=self.env.world_size,
            rank=self.env.rank,
            seed=derive_seed(self.cfg.seed, "precise_bn"),
        )
        sampler.set_epoch(epoch)
        seed = derive_seed(self.cfg.seed, "precise_bn_augment")

        def micro_batches():
            for step, (images, _labels) in enumerate(self.data.train_batches(sampler, seed=seed)):
                if step >= k:
                    break
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                yield from images.chunk(self.plan.accumulation_steps)

        with (
            torch.no_grad(),
            torch.autocast(self.env.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None),
        ):
            recompute_bn_statistics(self.model, micro_batches())
