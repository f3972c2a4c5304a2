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

Needs at least 2 workers (the gradient of one worker is the only small batch); with 1 the noise
scale is not measured. Ghost BN makes the samples of a BN group dependent, so "per-example" is
approximate there (docs/noise_scale.md).
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
        g_sq, trace = two_batch_estimates(small_sq, big_sq, b_small, b_big)
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


class NoiseScaleMonitor:
    """The trainer's side of the measurement: the hook's per-step norms fed to a
    :class:`NoiseScaleEstimator`, averaged over ranks for the log and the checkpoint.

    ``hook`` is the :class:`NoiseScaleHookState` registered on DDP (None: not measured)."""

    def __init__(self, decay: float, device: torch.device, world_size: int) -> None:
        self.estimator = NoiseScaleEstimator(decay=decay)
        self.hook: NoiseScaleHookState | None = None
        self.device, self.world_size = device, world_size

    def after_step(self, plan, grad_scale_sq: torch.Tensor | None) -> None:
        """Take the step's norms from the hook (device tensors: no sync); under fp16 loss scaling
        ``grad_scale_sq`` unscales them."""
        if self.hook is None:
            return
        local_sq, global_sq = self.hook.take()
        if local_sq is not None and global_sq is not None:
            if grad_scale_sq is not None:
                local_sq, global_sq = local_sq / grad_scale_sq, global_sq / grad_scale_sq
            self.estimator.update(local_sq, global_sq, plan.per_worker_batch_size, plan.global_batch_size)

    def state(self) -> dict | None:
        """The averages (g_sq, trace, weight) averaged over ranks, or None when not measured: what is
        logged and what a checkpoint keeps, so a resumed run, on any number of workers, goes on from
        the same smoothed estimate. Collective: every rank calls it."""
        if self.hook is None or self.estimator.steps == 0:
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
        return {
            "noise_scale": trace / g_sq if g_sq > 0 else float("inf"),
            "grad_sq_norm": g_sq,
            "grad_cov_trace": trace,
        }
