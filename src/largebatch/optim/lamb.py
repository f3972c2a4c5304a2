"""LAMB: Adam moments with a per-tensor trust ratio (You et al. 2019, arXiv 1904.00962, Alg. 2).

The paper's variant with phi(z) = z: no clipping of the trust ratio, no global gradient
pre-normalization (that is NVIDIA's "NVLAMB", a different optimizer). See You et al. 2019 (LAMB).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from largebatch.optim._common import Scratch, Settings, all_finite, guarded, norms, use_foreach


class Lamb(Settings, torch.optim.Optimizer):
    r"""LAMB, layer-wise adaptive moments (You et al. 2019, Algorithm 2).

    For each parameter tensor ``x`` with gradient ``g``, at its step ``t`` (1-indexed)::

        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
        m_hat = m / (1 - b1^t) ;  v_hat = v / (1 - b2^t)      # skipped if not bias_correction
        u = m_hat / (sqrt(v_hat) + eps) + weight_decay * x    # decoupled weight decay
        ratio = ||x|| / ||u||  (1 if ||x|| == 0 or ||u|| == 0, or if the group's
                                ``layer_adaptation`` is False)
        x -= lr * ratio * u

    Norms are Frobenius norms over the whole tensor. Per-group keys: ``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``bias_correction``, ``foreach`` and ``layer_adaptation`` (default True; the
    param-group policy in :mod:`largebatch.optim.param_groups` sets it False for norm layers and
    biases). Exclusion from weight decay is a group with ``weight_decay=0``.

    State per parameter: ``step`` (a Python ``int``, so the bias corrections are host floats and
    need no device sync), ``exp_avg`` (m) and ``exp_avg_sq`` (v), both shaped and typed like the
    parameter. Parameters whose ``.grad`` is None are skipped; ``.grad`` is never modified.

    Non-finite gradients: if the norm of any gradient of the step is inf or NaN, the whole step
    is skipped (no parameter, moment or step-counter change) and ``self.skipped_steps`` is
    incremented. Deciding that costs one host sync per step (per device); a norm that overflows
    float32 counts as non-finite. ``skipped_steps`` is saved in :meth:`state_dict`.
    ``skip_nonfinite=False`` removes the check and its sync, for a caller that guards steps itself.
    ``copy.deepcopy`` and ``pickle`` keep every setting and counter.

    Args:
        params: parameters or param-group dicts.
        lr: learning rate eta, > 0 (any schedule writes ``group["lr"]``).
        betas: (b1, b2), each in [0, 1).
        eps: added to sqrt(v_hat), >= 0; default 1e-6 as in the TF-Addons implementation.
        weight_decay: decoupled weight decay lambda, >= 0.
        bias_correction: divide the moments by (1 - b^t).
        foreach: use the ``torch._foreach_*`` path, whose trust ratios for a whole group are one
            stacked tensor from foreach norms; None picks it when all of a group's parameters
            are on one CUDA device, and the single-tensor path otherwise (faster on CPU, see
            :mod:`largebatch.optim._common`). Both paths do the same math.
        skip_nonfinite: skip a step whose gradients hold inf or NaN (one host sync per step).

    Raises:
        ValueError: for an argument out of its range.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        foreach: bool | None = None,
        skip_nonfinite: bool = True,
    ):
        if not lr >= 0.0:  # 0 is legal: a warmup from 0 (MLPerf) starts there
            raise ValueError(f"lr={lr!r} is invalid; accepted: lr >= 0")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={betas!r} is invalid; accepted: two values in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"eps={eps!r} is invalid; accepted: eps >= 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay={weight_decay!r} is invalid; accepted: weight_decay >= 0")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            foreach=foreach,
            layer_adaptation=True,
        )
        super().__init__(params, defaults)
        self.skipped_steps = 0
        self.skip_nonfinite = bool(skip_nonfinite)
        self._scratch = Scratch()

    _settings = ("skipped_steps", "skip_nonfinite")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["skipped_steps"] = self.skipped_steps
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def forget_steps(self, n: int) -> None:
        """Take back ``n`` steps of every parameter's bias-correction count ``t`` (see
        :meth:`largebatch.optim._common.Settings.forget_steps`); a state created by an undone step is
        zeros with ``t = 0`` again."""
        for state in self.state.values():
            if "step" in state:
                state["step"] = max(0, state["step"] - n)

    @torch.no_grad()
    def step(self, closure=None):
        """One LAMB update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                if any(p.grad.is_sparse for p in params):
                    raise RuntimeError("Lamb does not support sparse gradients")
                work.append((group, params, [p.grad for p in params], use_foreach(params, group["foreach"])))
        if not work:
            return loss
        # The one host sync of the step: skip everything if any gradient norm is inf or NaN.
        if self.skip_nonfinite and not all_finite(norms([g for _, _, grads, _ in work for g in grads])):
            self.skipped_steps += 1
            return loss
        for group, params, grads, foreach in work:
            steps = []
            for p in params:
                state = self.state[p]
                if not state:  # lazy init, after the finiteness check: a skipped step leaves no state
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                steps.append(state["step"])
            b1, b2 = group["betas"]
            if group["bias_correction"]:
                bc1 = [1.0 - b1**t for t in steps]
                bc2 = [1.0 - b2**t for t in steps]
            else:
                bc1 = bc2 = [1.0] * len(steps)
            if foreach:
                update = _foreach_lamb
            else:
                update = functools.partial(_single_tensor_lamb, scratch=self._scratch)
            update(
                params,
                grads,
                [self.state[p]["exp_avg"] for p in params],
                [self.state[p]["exp_avg_sq"] for p in params],
                bc1,
                bc2,
                lr=group["lr"],
                b1=b1,
                b2=b2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                layer_adaptation=group["layer_adaptation"],
            )
        return loss


def _single_tensor_lamb(
    params, grads, exp_avgs, exp_avg_sqs, bc1, bc2, *, lr, b1, b2, eps, weight_decay, layer_adaptation, scratch
):
    """One tensor at a time; u lives in a reused scratch buffer; the two norms of the ratio are read
    to the host (one sync per tensor on CUDA, which is why CUDA defaults to the foreach path).
    m_hat / (sqrt(v_hat) + eps) is computed as m / (c1 sqrt(v) / sqrt(c2) + c1 eps), one division."""
    for p, g, m, v, c1, c2 in zip(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2):
        m.lerp_(g, 1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        u = scratch.like(p)
        torch.sqrt(v, out=u)
        u.mul_(c1 / math.sqrt(c2)).add_(c1 * eps)  # c1 (sqrt(v_hat) + eps)
        torch.div(m, u, out=u)
        if weight_decay != 0:
            u.add_(p, alpha=weight_decay)
        ratio = 1.0
        if layer_adaptation:  # host floats: free on CPU, where this path is the default
            acc = torch.promote_types(p.dtype, torch.float32)
            w_norm, u_norm = torch.stack(
                [torch.linalg.vector_norm(p, dtype=acc), torch.linalg.vector_norm(u, dtype=acc)]
            ).tolist()
            ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        p.add_(u, alpha=-lr * ratio)


def _foreach_lamb(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2, *, lr, b1, b2, eps, weight_decay, layer_adaptation):
    """The whole group per op; the group's ratios are one stacked tensor from foreach norms."""
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - b2)
    u = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_mul_(u, [c1 / math.sqrt(c2) for c1, c2 in zip(bc1, bc2)])
    torch._foreach_add_(u, [c1 * eps for c1 in bc1])  # c1 (sqrt(v_hat) + eps)
    u = torch._foreach_div(exp_avgs, u)
    if weight_decay != 0:
        torch._foreach_add_(u, params, alpha=weight_decay)
    if layer_adaptation:
        w_norms, u_norms = torch.stack(norms(params)), torch.stack(norms(u))
        ratios = guarded(w_norms / u_norms, w_norms, u_norms)
        torch._foreach_mul_(u, list(ratios.unbind(0)))
    torch._foreach_add_(params, u, alpha=-lr)
