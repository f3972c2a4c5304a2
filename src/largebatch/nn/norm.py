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
buffers across processes too (:func:`average_bn_statistics`), so every rank evaluates with the
same statistics.

Where the evaluation statistics come from is ``statistics`` (``train.bn.statistics``):

* ``moving_average``: the exponential moving average above (momentum 0.1, Caffe2's 0.9), averaged
  across processes before evaluation and checkpoints.
* ``last_batch``: Akiba et al. 2017's "BN without moving averages": the running
  statistics are those of the last training step, i.e. the mean over every BN group of the step (all
  micro-batches: a process that accumulates A micro-batches of G groups averages its A x G groups),
  then averaged across processes before evaluation. With equal groups everywhere that is the average
  of the k simulated workers' last-batch statistics. Variances: ``mean`` (default; the literal reading)
  averages the workers' unbiased variances; ``pooled`` gives the unbiased variance of the union of the
  workers' last batches, ``mean_i(var_i) + mean_i(mu_i^2) - mu^2`` on biased variances, rescaled by
  N / (N - 1) for the N samples of the step.
* ``precise``: training keeps the moving average; before every evaluation
  :func:`recompute_bn_statistics` replaces it with population statistics over a number of training
  batches, sums and counts all-reduced over the processes, so every rank holds identical statistics.

Group-synchronized BN (``sync_group``): the statistics of each BN group are summed over a group of
``sync_ranks`` processes with all-reduce (Ying et al. 2018's distributed BN, "BN span"), forward and
backward, so it also runs on CPU with gloo where ``torch.nn.SyncBatchNorm`` refuses CPU tensors. On
CUDA with one BN group per forward it calls torch's own SyncBatchNorm function, which computes the
same thing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from largebatch.choices import BN_STATISTICS, VARIANCE_AVERAGINGS

VARIANCE_AVERAGING = VARIANCE_AVERAGINGS


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per group of ``bn_batch_size`` samples.

    Args:
        num_features: channels C.
        bn_batch_size: samples per BN group n on this process (the BN span is n x ``sync_ranks``);
            0 means the whole batch is one group (plain BN).
        statistics: ``moving_average``, ``last_batch`` or ``precise`` (module docstring).
        track_mean_sq: also keep the mean of the squared group means of the step (needed for the
            ``pooled`` variance averaging of ``last_batch``; a non-persistent buffer).
        **kwargs: as ``torch.nn.BatchNorm2d`` (eps, momentum, affine, track_running_stats).

    Attributes set after construction (see :func:`configure_bn`): ``sync_group`` (a process group,
    or None) and ``sync_ranks`` (its size).

    Shapes:
        input and output (N, C, H, W); in training N must be a multiple of n.

    Raises:
        ValueError: in training, when N is not a multiple of ``bn_batch_size``, or for an unknown
            ``statistics``.

    Source: Goyal et al. 2017, sec. 2.3 ("per-worker" BN over n samples); Hoffer et al. 2017 call
    the same computation on one device "ghost batch normalization".
    """

    def __init__(
        self,
        num_features: int,
        bn_batch_size: int = 0,
        *,
        statistics: str = "moving_average",
        track_mean_sq: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(num_features, **kwargs)
        if bn_batch_size < 0:
            raise ValueError(f"bn_batch_size must be >= 0, got {bn_batch_size}")
        if statistics not in BN_STATISTICS:
            raise ValueError(f"statistics={statistics!r} is unknown; accepted: {', '.join(BN_STATISTICS)}")
        self.bn_batch_size = bn_batch_size
        self.statistics = statistics
        self.sync_group = None
        self.sync_ranks = 1
        self.forwards_in_step = 0  # last_batch: training forwards since start_bn_step()
        self.pooled_applied = False  # last_batch + pooled: running_var already holds the pooled value
        self.spatial_size = 1  # H * W of the last training input (for the pooled variance)
        self.register_buffer("running_mean_sq", torch.zeros(num_features) if track_mean_sq else None, persistent=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_batch_size={self.bn_batch_size}"

    def _momentum(self) -> float:
        # Same rule as torch.nn.BatchNorm2d: momentum None means a cumulative moving average.
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _step_momentum(self) -> float:
        """Weight of this forward's statistics in the running buffers."""
        if self.statistics == "last_batch":
            # A running mean over the forwards of the step: 1, 1/2, 1/3, ... so after A micro-batches the
            # buffers hold the mean over all A x G groups of the step (no moving average).
            self.forwards_in_step += 1
            return 1.0 / self.forwards_in_step
        return self._momentum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.bn_batch_size
        batch = x.shape[0]
        sync = self.training and self.sync_group is not None and self.sync_ranks > 1
        simple = self.statistics == "moving_average" and self.running_mean_sq is None
        if not self.training or (not sync and simple and (n == 0 or batch == n)):
            return super().forward(x)
        n = n or batch
        if batch % n:
            raise ValueError(
                f"GhostBatchNorm2d got a batch of {batch} samples, not a multiple of bn_batch_size={n}; "
                f"make the per-forward batch a multiple of train.bn.batch_size"
            )
        self._check_input_dim(x)
        groups = batch // n
        self.spatial_size = x[0, 0].numel()
        track = self.track_running_stats and self.running_mean is not None
        momentum = 0.0
        if track:
            self.num_batches_tracked.add_(1)
            momentum = self._step_momentum()
            self.pooled_applied = False
            if self.running_mean_sq is not None:
                with torch.no_grad():
                    mu = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.detach().split(n)]).to(
                        self.running_mean_sq.dtype
                    )
                    if sync:  # every rank holds n samples of each group: the group mean is the mean
                        dist.all_reduce(mu, group=self.sync_group)
                        mu /= self.sync_ranks
                    self.running_mean_sq.mul_(1.0 - momentum).add_((mu * mu).mean(0), alpha=momentum)
        if sync:
            return self._forward_sync(x, n, groups, track, momentum)
        if track:
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
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _forward_sync(self, x, n, groups, track, momentum):
        if x.is_cuda and groups == 1 and self.affine:
            # torch's own: the same statistics (sums over the group's ranks), NCCL kernels.
            from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBN

            return _TorchSyncBN.apply(
                x,
                self.weight,
                self.bias,
                self.running_mean if track else None,
                self.running_var if track else None,
                self.eps,
                momentum,
                self.sync_group,
                self.sync_ranks,
            )
        weight = self.weight if self.affine else torch.ones(self.num_features, device=x.device, dtype=x.dtype)
        bias = self.bias if self.affine else torch.zeros(self.num_features, device=x.device, dtype=x.dtype)
        y, mean, var = _GroupSyncBN.apply(x, weight, bias, n, self.eps, self.sync_group, self.sync_ranks)
        if track:
            total = n * self.sync_ranks * x[0, 0].numel()
            with torch.no_grad():
                unbiased = var * (total / max(total - 1, 1))
                self.running_mean.mul_(1.0 - momentum).add_(mean.mean(0).to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1.0 - momentum).add_(unbiased.mean(0).to(self.running_var.dtype), alpha=momentum)
        return y


class _GroupSyncBN(torch.autograd.Function):
    """BN over groups whose samples lie on several processes: each of the G local chunks of n samples
    is one rank's share of a BN group; per-channel sums are all-reduced over ``group`` in the forward
    (sum x, sum x^2) and the backward (sum dy, sum dy * x_hat). Returns (y, mean (G, C), biased var
    (G, C)). Weight and bias gradients stay local (DDP all-reduces them)."""

    @staticmethod
    def forward(ctx, x, weight, bias, n, eps, group, ranks):
        chunks = x.split(n)
        c = x.shape[1]
        acc = torch.promote_types(x.dtype, torch.float32)  # float32 for fp16/bf16/fp32, float64 for float64
        spatial = x[0, 0].numel()
        sums = torch.empty(2, len(chunks), c, dtype=acc, device=x.device)
        for g, chunk in enumerate(chunks):
            sums[0, g] = chunk.sum(dim=(0, 2, 3), dtype=acc)
            sums[1, g] = (chunk.to(acc) * chunk.to(acc)).sum(dim=(0, 2, 3))
        dist.all_reduce(sums, group=group)
        count = n * spatial * ranks
        mean = sums[0] / count
        var = (sums[1] / count - mean * mean).clamp_(min=0.0)
        invstd = torch.rsqrt(var + eps)
        shape = (1, c, 1, 1)
        outs = []
        for g, chunk in enumerate(chunks):
            scale = (invstd[g] * weight.to(acc)).to(x.dtype)
            shift = (bias.to(acc) - mean[g] * invstd[g] * weight.to(acc)).to(x.dtype)
            outs.append(chunk * scale.view(shape) + shift.view(shape))
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.group, ctx.count = n, group, count
        y = torch.cat(outs) if len(outs) > 1 else outs[0]
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, mean, invstd = ctx.saved_tensors
        n, count = ctx.n, ctx.count
        shape = (1, x.shape[1], 1, 1)
        acc = mean.dtype
        chunks, dys = x.split(n), dy.split(n)
        sums = torch.empty(2, len(chunks), x.shape[1], dtype=acc, device=x.device)
        xhats = []
        for g, (chunk, d) in enumerate(zip(chunks, dys)):
            xhat = (chunk.to(acc) - mean[g].view(shape)) * invstd[g].view(shape)
            xhats.append(xhat)
            sums[0, g] = d.to(acc).sum(dim=(0, 2, 3))
            sums[1, g] = (d.to(acc) * xhat).sum(dim=(0, 2, 3))
        local = sums.sum(1)  # this rank's dbias and dweight
        dist.all_reduce(sums, group=ctx.group)
        dxs = []
        for g, (d, xhat) in enumerate(zip(dys, xhats)):
            k = (weight.to(acc) * invstd[g]).view(shape)
            dxs.append(
                (k * (d.to(acc) - (sums[0, g] / count).view(shape) - xhat * (sums[1, g] / count).view(shape))).to(
                    x.dtype
                )
            )
        dx = torch.cat(dxs) if len(dxs) > 1 else dxs[0]
        return dx, local[1].to(weight.dtype), local[0].to(weight.dtype), None, None, None, None


def set_bn_batch_size(model: nn.Module, bn_batch_size: int) -> int:
    """Set ``bn_batch_size`` on every :class:`GhostBatchNorm2d` of ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.bn_batch_size = bn_batch_size
            count += 1
    return count


def ghost_bn_modules(model: nn.Module) -> list[GhostBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, GhostBatchNorm2d)]


def configure_bn(
    model: nn.Module,
    *,
    statistics: str = "moving_average",
    variance_averaging: str = "mean",
    sync_group=None,
    sync_ranks: int = 1,
) -> int:
    """Set the BN variant of every :class:`GhostBatchNorm2d` of ``model``; returns how many.

    Args:
        statistics: ``moving_average``, ``last_batch`` or ``precise`` (module docstring).
        variance_averaging: ``mean`` or ``pooled``; ``pooled`` needs ``last_batch``.
        sync_group: process group whose ranks share BN statistics (group-synchronized BN), or None.
        sync_ranks: its size.

    Raises:
        ValueError: for an unknown value or ``pooled`` without ``last_batch``.
    """
    if statistics not in BN_STATISTICS:
        raise ValueError(f"train.bn.statistics={statistics!r} is unknown; accepted: {', '.join(BN_STATISTICS)}")
    if variance_averaging not in VARIANCE_AVERAGING:
        raise ValueError(f"train.bn.variance_averaging={variance_averaging!r} is unknown; accepted: mean, pooled")
    if variance_averaging == "pooled" and statistics != "last_batch":
        raise ValueError("train.bn.variance_averaging=pooled applies to train.bn.statistics=last_batch only")
    modules = ghost_bn_modules(model)
    for m in modules:
        m.statistics = statistics
        m.sync_group, m.sync_ranks = sync_group, sync_ranks
        want_sq = variance_averaging == "pooled"
        if want_sq and m.running_mean_sq is None:
            m.running_mean_sq = torch.zeros_like(m.running_mean)
        elif not want_sq:
            m.running_mean_sq = None
    return len(modules)


def start_bn_step(model: nn.Module) -> None:
    """Mark the start of an optimizer step (``last_batch`` statistics average the step's forwards)."""
    for m in ghost_bn_modules(model):
        m.forwards_in_step = 0


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    if not tensors or not (dist.is_available() and dist.is_initialized()):
        return
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


@torch.no_grad()
def average_bn_statistics(model: nn.Module, *, samples_per_step: int = 0) -> None:
    """Average the BN running statistics (and every other floating buffer) across all processes,
    so every rank evaluates and checkpoints the same ones. Variances are averaged arithmetically
    (the mean of the per-worker unbiased variances), except for ``last_batch`` modules with a
    ``running_mean_sq`` buffer (``pooled``), which then hold the unbiased variance of the union of the
    step's ``samples_per_step`` samples (module docstring). Idempotent: a second call changes nothing.
    """
    _all_reduce_mean([b for b in model.buffers() if b.is_floating_point()])
    for m in ghost_bn_modules(model):
        if m.running_mean_sq is None or m.pooled_applied or m.running_var is None:
            continue
        # torch's running_var is unbiased over the m = n * sync_ranks * H * W values of a group; back
        # to biased, pool (variance of the union = mean of variances + variance of the means), then
        # unbiased over the samples_per_step * H * W values of the step.
        per_group = m.bn_batch_size * m.sync_ranks * m.spatial_size
        biased = m.running_var * (per_group - 1) / per_group if per_group > 1 else m.running_var.clone()
        pooled = (biased + m.running_mean_sq - m.running_mean * m.running_mean).clamp_(min=0.0)
        total = max(samples_per_step * m.spatial_size, 2)
        m.running_var.copy_(pooled * total / (total - 1))
        m.pooled_applied = True


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Precise BN: replace the running statistics of every BN layer by population statistics over
    ``inputs`` (this rank's share of a number of training batches), with the per-channel sums of x
    and x^2 and the counts all-reduced over all processes, so every rank ends with identical
    statistics: mean = sum x / N, var = (sum x^2 / N - mean^2) * N / (N - 1) (unbiased, as torch's
    running_var), N the number of values per channel over all ranks.

    The forwards run in training mode, so each layer sees the activations of training (earlier layers
    normalized with batch statistics), as in fvcore's ``update_bn_stats`` and Wu & Johnson 2021,
    "Rethinking Batch in BatchNorm"; unlike them the sums are synchronized across ranks. Weights,
    ``num_batches_tracked`` and the training flag are left as they were. Returns the number of
    forward passes run on this rank.
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]
    if not layers:
        return 0
    device = layers[0].running_mean.device
    sums = torch.zeros(len(layers), 3, max(m.num_features for m in layers), dtype=torch.float64, device=device)

    def hook(index):
        def pre(module, args):
            x = args[0]
            c = x.shape[1]
            sums[index, 0, :c] += x.sum(dim=(0, 2, 3), dtype=torch.float64)
            sums[index, 1, :c] += (x * x).sum(dim=(0, 2, 3), dtype=torch.float64)
            sums[index, 2, :c] += x.numel() // c

        return pre

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    tracked = [m.num_batches_tracked.clone() for m in layers]
    was_training = model.training
    model.train()
    passes = 0
    try:
        for x in inputs:
            model(x)
            passes += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    _set_population_statistics(layers, sums, tracked)
    return passes


def _set_population_statistics(layers: list, sums: torch.Tensor, tracked: list) -> None:
    """Write each layer's mean and unbiased variance from ``sums`` (layer x [sum x, sum x^2, count]
    x channel) and restore its ``num_batches_tracked``.

    Raises:
        ValueError: a channel saw at most one value (no batch ran).
    """
    for i, m in enumerate(layers):
        c = m.num_features
        count = sums[i, 2, :c]
        if not bool((count > 1).all()):
            raise ValueError("precise BN saw no data: train.bn.precise_batches must be >= 1")
        mean = sums[i, 0, :c] / count
        var = (sums[i, 1, :c] / count - mean * mean).clamp_(min=0.0) * count / (count - 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
        m.num_batches_tracked.copy_(tracked[i])
        if isinstance(m, GhostBatchNorm2d):
            m.pooled_applied = False
