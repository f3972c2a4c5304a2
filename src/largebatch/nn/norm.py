"""Batch normalization with the BN batch of the large-batch papers.

Goyal et al. 2017 (sec. 2.3, 5.1) compute BN statistics over each worker's n = 32 images and never
across workers: the BN batch size is part of the loss being optimized, so it must stay fixed while
the global batch grows. :class:`GhostBatchNorm2d` lets one process stand in for several such
workers: in training it splits its batch of N = G x n samples into G contiguous groups of n and
normalizes each group with that group's own mean and (biased) variance, which is exactly what G
separate workers holding those samples would compute (forward and backward; tested).

Running statistics: G separate workers would each keep their own exponential moving average; here
the buffer is updated once per forward with the *average over groups* of the group means and of the
group unbiased variances, i.e. ``r <- (1 - m) r + m * mean_g(stat_g)``, which equals the average of
the G workers' running statistics when they start equal. At evaluation the trainer averages the
buffers across processes too (``largebatch.dist.average_buffers``), so every rank evaluates with the
same statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per group of ``bn_batch_size`` samples.

    Args:
        num_features: channels C.
        bn_batch_size: samples per BN group n; 0 means the whole batch is one group (plain BN).
        **kwargs: as ``torch.nn.BatchNorm2d`` (eps, momentum, affine, track_running_stats).

    Shapes:
        input and output (N, C, H, W); in training N must be a multiple of n.

    Raises:
        ValueError: in training, when N is not a multiple of ``bn_batch_size``.

    Source: Goyal et al. 2017, sec. 2.3 ("per-worker" BN over n samples); Hoffer et al. 2017 call
    the same computation on one device "ghost batch normalization".
    """

    def __init__(self, num_features: int, bn_batch_size: int = 0, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if bn_batch_size < 0:
            raise ValueError(f"bn_batch_size must be >= 0, got {bn_batch_size}")
        self.bn_batch_size = bn_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_batch_size={self.bn_batch_size}"

    def _momentum(self) -> float:
        # Same rule as torch.nn.BatchNorm2d: momentum None means a cumulative moving average.
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.bn_batch_size
        batch = x.shape[0]
        if not self.training or n == 0 or batch == n:
            return super().forward(x)
        if batch % n:
            raise ValueError(
                f"GhostBatchNorm2d got a batch of {batch} samples, not a multiple of bn_batch_size={n}; "
                f"make the per-forward batch a multiple of train.bn_batch_size"
            )
        self._check_input_dim(x)
        groups = batch // n
        track = self.track_running_stats and self.running_mean is not None
        momentum = 0.0
        if track:
            self.num_batches_tracked.add_(1)
            momentum = self._momentum()
            # One copy of the running buffers per group; each group's batch_norm call updates its own
            # copy in place, and the copies are averaged afterwards (see the module docstring).
            mean_rows = self.running_mean.unsqueeze(0).repeat(groups, 1)
            var_rows = self.running_var.unsqueeze(0).repeat(groups, 1)
        # A Python loop of native batch_norm calls over contiguous views; measured against a single
        # call over a (n, G*C, H, W) fold in benchmarks/ghost_bn.py, where the loop was faster on CPU.
        outs = [
            F.batch_norm(
                chunk,
                mean_rows[g] if track else None,
                var_rows[g] if track else None,
                self.weight,
                self.bias,
                True,
                momentum,
                self.eps,
            )
            for g, chunk in enumerate(x.split(n))
        ]
        if track:
            with torch.no_grad():
                self.running_mean.copy_(mean_rows.mean(0))
                self.running_var.copy_(var_rows.mean(0))
        return torch.cat(outs)


def set_bn_batch_size(model: nn.Module, bn_batch_size: int) -> int:
    """Set ``bn_batch_size`` on every :class:`GhostBatchNorm2d` of ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.bn_batch_size = bn_batch_size
            count += 1
    return count
