"""The gradient noise scale of McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
measured during data-parallel training from what the all-reduce already has.

The simple noise scale is ``B_simple = tr(Sigma) / |G|^2`` (sec. 2.2, eq. 2.8 there): Sigma the
per-example gradient covariance, G the true gradient. Two gradient estimates of different batch
sizes give unbiased estimates of both (appendix A.1, eq. A.2):

    |G|^2   ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

In data-parallel training ``G_small`` is one worker's gradient of its per-worker batch
(B_small = B / W) and ``G_big`` the all-reduced gradient of the global batch (B_big = B). A DDP
communication hook wraps whichever all-reduce the run uses and takes the squared norm of every
bucket before (this worker's gradient) and after (the average) the communication: two extra passes
over the gradients per step, no extra communication, no host sync. The two estimates are smoothed
separately with exponential moving averages over steps and divided when logged (as the paper does,
since their ratio is biased for single steps); at each log interval one all-reduce of two scalars
averages the workers' estimates.

With ``train.noise_scale_small_batch=worker`` (the default) it needs at least 2 workers; with 1 the
noise scale is not measured. With ``micro_batch`` the small batches are the micro-batches of the
gradient accumulation (one BN group each by default): each micro-batch's gradient is the difference
of the accumulated gradients before and after its backward pass (:class:`MicroBatchNorms`), so
``B_small`` is the BN batch (32 in the main job, not one worker's 256), every step averages
``accumulation_steps - 1`` small-batch norms per worker (the last micro-batch's backward runs the
all-reduce, which overwrites its local sum), and one process is enough. Ghost BN makes the samples of
a BN group dependent; with micro-batches of one BN group the "examples" of the estimate are whole
groups, each of ``B_small`` images (docs/noise_scale.md).
"""

# No postponed annotations: DDP checks a hook's annotations at registration.

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def two_batch_estimates(
    small_sq: float | torch.Tensor, big_sq: float | torch.Tensor, b_small: float, b_big: float
) -> tuple[Any, Any]:
    """Unbiased estimates (|G|^2, tr(Sigma)) from the squared norms of two gradient estimates of
    batch sizes ``b_small`` < ``b_big`` (McCandlish et al. 2018, eq. A.2).

    Raises:
        ValueError: unless 0 < b_small < b_big.
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    g_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g_sq, trace


@dataclass
class NoiseScaleEstimator:
    """Exponential moving averages of the per-step estimates of |G|^2 and tr(Sigma).

    Args:
        decay: EMA decay per step (0.99 averages about the last 100 steps); the averages are
            bias-corrected like Adam's, so early values are not pulled toward 0.
    """

    decay: float = 0.99
    g_sq: Any = 0.0
    trace: Any = 0.0
    weight: Any = 0.0
    steps: int = 0

    def update(self, small_sq, big_sq, b_small: float, b_big: float) -> None:
        """One step: squared norms (floats or 0-dim tensors, kept on the device) of a worker's
        gradient (batch ``b_small``) and of the all-reduced gradient (batch ``b_big``)."""
        self.update_estimates(*two_batch_estimates(small_sq, big_sq, b_small, b_big))

    def update_estimates(self, g_sq, trace) -> None:
        """One step's unbiased estimates of |G|^2 and tr(Sigma) (:func:`two_batch_estimates`)."""
        d = self.decay
        new_g, new_t, new_w = (
            d * self.g_sq + (1 - d) * g_sq,
            d * self.trace + (1 - d) * trace,
            d * self.weight + (1 - d),
        )
        if isinstance(g_sq, torch.Tensor):  # a skipped (non-finite) step leaves the averages; no host sync
            ok = torch.isfinite(g_sq) & torch.isfinite(trace)
            new_g, new_t = torch.where(ok, new_g, self.g_sq), torch.where(ok, new_t, self.trace)
            new_w = torch.where(ok, new_w, torch.as_tensor(self.weight, dtype=new_g.dtype, device=new_g.device))
        self.g_sq, self.trace, self.weight = new_g, new_t, new_w
        self.steps += 1

    def state_dict(self) -> dict:
        """The averages as plain floats (for a checkpoint; one host sync)."""
        return {"g_sq": float(self.g_sq), "trace": float(self.trace), "weight": float(self.weight), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output; ``decay`` stays this estimator's (it is an operational key)."""
        self.g_sq, self.trace, self.weight = float(state["g_sq"]), float(state["trace"]), float(state["weight"])
        self.steps = int(state["steps"])

    def values(self) -> tuple[float, float, float]:
        """(B_simple, |G|^2, tr(Sigma)) from the smoothed estimates (NaN before any step; B_simple
        is infinite where the smoothed |G|^2 is not positive)."""
        if self.steps == 0:
            return float("nan"), float("nan"), float("nan")
        weight = float(self.weight)
        if weight == 0:
            return float("nan"), float("nan"), float("nan")
        g_sq, trace = float(self.g_sq) / weight, float(self.trace) / weight
        return (trace / g_sq if g_sq > 0 else float("inf")), g_sq, trace


@dataclass
class NoiseScaleHookState:
    """State of :func:`noise_scale_hook`: the wrapped hook and this step's squared norms."""

    inner_state: Any
    inner_hook: Callable
    local_sq: torch.Tensor | None = None
    global_sq: torch.Tensor | None = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's (worker |g|^2, all-reduced |g|^2), summed over buckets; resets them."""
        out = (self.local_sq, self.global_sq)
        self.local_sq = self.global_sq = None
        return out


def _sq_norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dtype=torch.float32).square()


def noise_scale_hook(state: NoiseScaleHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Squared norm of the bucket before (this worker) and after (all workers' average) the wrapped
    hook's all-reduce, accumulated into ``state``."""
    local = _sq_norm(bucket.buffer())
    state.local_sq = local if state.local_sq is None else state.local_sq + local

    def after(fut: torch.futures.Future) -> torch.Tensor:
        value = fut.value()
        reduced = value[0] if isinstance(value, list) else value
        sq = _sq_norm(reduced)
        state.global_sq = sq if state.global_sq is None else state.global_sq + sq
        return reduced

    return state.inner_hook(state.inner_state, bucket).then(after)


def wrap_hook(pair: tuple[Any, Callable] | None, process_group=None) -> tuple[NoiseScaleHookState, Callable]:
    """The (state, hook) to register instead of ``pair`` (None: DDP's own all-reduce, which
    PyTorch's ``allreduce_hook`` reproduces)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    inner_state, inner_hook = pair if pair is not None else (process_group, default_hooks.allreduce_hook)
    return NoiseScaleHookState(inner_state=inner_state, inner_hook=inner_hook), noise_scale_hook


class MicroBatchNorms:
    """Squared norms of each micro-batch's gradient, taken from the accumulated gradients.

    A micro-batch's loss is its mean loss divided by the number of micro-batches ``accum``, so its
    gradient ``g_k`` adds ``g_k / accum`` to ``p.grad``; ``accum`` times the difference before and
    after its backward pass is ``g_k``. The trainer calls :meth:`after_micro_batch` after every
    backward pass but the last (whose all-reduce replaces the local sum) and :meth:`finish` after the
    last. Costs two passes over the gradients per micro-batch and one copy of them.
    """

    def __init__(self) -> None:
        self._prev: list[torch.Tensor] | None = None
        self._sum: torch.Tensor | None = None
        self._count = 0

    @staticmethod
    def _grads(params) -> list[torch.Tensor]:
        return [p.grad for p in params if p.grad is not None]

    def after_micro_batch(self, params, accum: int) -> None:
        grads = self._grads(params)
        if not grads:
            return
        if self._prev is None:
            norms = torch._foreach_norm(grads)
            self._prev = [g.detach().clone() for g in grads]
        else:
            diffs = torch._foreach_sub(grads, self._prev)
            norms = torch._foreach_norm(diffs)
            torch._foreach_copy_(self._prev, grads)
        sq = torch.stack([n.float() for n in norms]).square().sum() * float(accum) ** 2
        self._sum = sq if self._sum is None else self._sum + sq
        self._count += 1

    def finish(self, params) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean squared norm of this step's micro-batch gradients, squared norm of the step's
        all-reduced gradient), device tensors; None when no micro-batch was measured. Resets."""
        grads = self._grads(params)
        out = None
        if self._sum is not None and self._count and grads:
            big = torch.stack([n.float() for n in torch._foreach_norm(grads)]).square().sum()
            out = (self._sum / self._count, big)
        self._prev, self._sum, self._count = None, None, 0
        return out


class NoiseScaleMonitor:
    """The trainer's side of the measurement: the hook's per-step norms fed to a
    :class:`NoiseScaleEstimator`, averaged over ranks for the log and the checkpoint.

    ``hook`` is the :class:`NoiseScaleHookState` registered on DDP (None: not measured);
    ``micro`` the :class:`MicroBatchNorms` of ``train.noise_scale_small_batch=micro_batch`` (None:
    the worker's gradient is the small batch)."""

    def __init__(self, decay: float, device: torch.device, world_size: int) -> None:
        self.estimator = NoiseScaleEstimator(decay=decay)
        self.hook: NoiseScaleHookState | None = None
        self.micro: MicroBatchNorms | None = None
        self.device, self.world_size = device, world_size
        self._steps: list[torch.Tensor] = []  # micro_batch: this rank's per-step (|G|^2, tr(Sigma)) since the last log

    @property
    def measuring(self) -> bool:
        return self.hook is not None or self.micro is not None

    def after_step(self, plan, grad_scale_sq: torch.Tensor | None, step_norms=None) -> None:
        """Take the step's norms from the hook, or ``step_norms`` from :meth:`MicroBatchNorms.finish`
        (device tensors: no sync); under fp16 loss scaling ``grad_scale_sq`` unscales them."""
        if self.micro is not None:
            if step_norms is None:
                return
            small_sq, big_sq = step_norms
            b_small = plan.micro_batch_size
        elif self.hook is not None:
            small_sq, big_sq = self.hook.take()
            b_small = plan.per_worker_batch_size
        else:
            return
        if small_sq is None or big_sq is None:
            return
        if grad_scale_sq is not None:
            small_sq, big_sq = small_sq / grad_scale_sq, big_sq / grad_scale_sq
        g_sq, trace = two_batch_estimates(small_sq, big_sq, b_small, plan.global_batch_size)
        self.estimator.update_estimates(g_sq, trace)
        if self.micro is not None:
            self._steps.append(torch.stack([torch.as_tensor(g_sq), torch.as_tensor(trace)]).double())

    def step_estimates(self) -> list[list[float]]:
        """micro_batch: every step's [|G|^2, tr(Sigma)] since the last call, averaged over ranks (NaN
        for a skipped step); [] otherwise. Collective: every rank calls it."""
        if self.micro is None:
            return []
        n = torch.tensor([len(self._steps)], device=self.device)
        if dist.is_available() and dist.is_initialized():  # every rank saw the same steps
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
        steps, self._steps = self._steps[: int(n)], self._steps[int(n) :]
        if not steps:
            return []
        values = torch.stack(steps).to(self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
            values /= self.world_size
        return values.tolist()

    def state(self) -> dict | None:
        """The averages (g_sq, trace, weight) averaged over ranks, or None when not measured: what is
        logged and what a checkpoint keeps, so a resumed run, on any number of workers, goes on from
        the same smoothed estimate. Collective: every rank calls it."""
        if not self.measuring or self.estimator.steps == 0:
            return None
        state = self.estimator.state_dict()
        values = torch.tensor([state["g_sq"], state["trace"], state["weight"]], dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
        g_sq, trace, weight = (values / self.world_size).tolist()
        return {**state, "g_sq": g_sq, "trace": trace, "weight": weight}

    def values(self) -> dict:
        """{noise_scale, grad_sq_norm, grad_cov_trace} of :meth:`state`, or {} when not measured."""
        state = self.state()
        if state is None or state["weight"] == 0:
            return {}
        g_sq, trace = state["g_sq"] / state["weight"], state["trace"] / state["weight"]
        out = {
            "noise_scale": trace / g_sq if g_sq > 0 else float("inf"),
            "grad_sq_norm": g_sq,
            "grad_cov_trace": trace,
        }
        if self.micro is not None:
            out["noise_scale_small_batch"] = "micro_batch"
            out["noise_scale_steps"] = self.step_estimates()
        return out
