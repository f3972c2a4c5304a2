"""Sampling: one shuffle per epoch divided among all workers (Goyal et al. 2017, Remark 4).

The permutation of epoch e depends only on (seed, e). It is cut into global batches of B samples
(the tail of N mod B samples is dropped, so every step has the full global batch), and process r of
W takes the r-th contiguous slice of B / W samples of each global batch. Consequences:

* within an epoch the per-rank slices are disjoint and their union is the epoch's sample set
  (a permutation of ``steps_per_epoch * B`` distinct indices);
* the global batch of step s, and its order, do not depend on the number of processes W. With ghost
  BN groups taken as contiguous runs of ``bn_batch_size`` samples, the samples of each BN group are
  the same for any W too, so a run on 2 processes computes the same mathematics as one on 1 or 256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``(seed, "shuffle", epoch)``), stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class GlobalBatchSampler:
    """Yields, for one rank, the index tensor of its slice of every global batch of an epoch.

    Args:
        num_samples: N, the size of the training set.
        global_batch_size: B.
        world_size: W processes; B must be a multiple of W.
        rank: this process, 0 <= rank < W.
        seed: base seed of the per-epoch shuffle.
        shuffle: False gives the identity order (for tests).

    Raises:
        ValueError: if B does not split over W, or N < B (an epoch would have no step).

    Usable as a DataLoader ``batch_sampler`` (it yields lists when ``as_lists`` is set).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        *,
        world_size: int,
        rank: int,
        seed: int,
        shuffle: bool = True,
        as_lists: bool = False,
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} does not split over {world_size} workers")
        if num_samples < global_batch_size:
            raise ValueError(
                f"the training set has {num_samples} samples, fewer than train.global_batch_size="
                f"{global_batch_size}; lower the global batch or use more data (data.train_subset)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.as_lists = as_lists
        self.per_worker_batch_size = global_batch_size // world_size
        self.steps_per_epoch = num_samples // global_batch_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's shuffle; iteration starts at step ``start_step`` of it (for resume)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside [0, {self.steps_per_epoch}]")
        self.epoch = epoch
        self.start_step = start_step

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The (steps_per_epoch, B) global batches of ``epoch`` (all ranks)."""
        used = self.steps_per_epoch * self.global_batch_size
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
            order = torch.randperm(self.num_samples, generator=g)[:used]
        else:
            order = torch.arange(used)
        return order.view(self.steps_per_epoch, self.global_batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = self.epoch_order(self.epoch)
        lo = self.rank * self.per_worker_batch_size
        hi = lo + self.per_worker_batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            idx = batches[step, lo:hi]
            yield idx.tolist() if self.as_lists else idx


def eval_shard(num_samples: int, *, world_size: int, rank: int) -> torch.Tensor:
    """Indices of the evaluation samples of ``rank``: ``rank, rank + W, ...``. Every sample is
    evaluated exactly once across ranks (no padding, unlike ``DistributedSampler``)."""
    return torch.arange(rank, num_samples, world_size)
