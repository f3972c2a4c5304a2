"""LAMB: Adam moments with a per-tensor trust ratio (You et al. 2019, arXiv 1904.00962, Alg. 2).

The paper's variant with phi(z) = z: no clipping of the trust ratio, no global gradient
pre-normalization (that is NVIDIA's "NVLAMB", a different optimizer). See techniques.md sec. 6.1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Lamb(torch.optim.Optimizer):
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
    incremented. Deciding that costs one host sync per step (per device). ``skipped_steps`` is
    saved in :meth:`state_dict`.

    Args:
        params: parameters or param-group dicts.
        lr: learning rate eta, > 0 (any schedule writes ``group["lr"]``).
        betas: (b1, b2), each in [0, 1).
        eps: added to sqrt(v_hat), >= 0; default 1e-6 as in the TF-Addons implementation.
        weight_decay: decoupled weight decay lambda, >= 0.
        bias_correction: divide the moments by (1 - b^t).
        foreach: use the ``torch._foreach_*`` path; None picks it when all of a group's
            parameters are on one device type. Both paths do the same math.

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
    ):
        if not lr >= 0.0:  # 0 is legal: a warmup from 0 (MLPerf) starts there
            raise ValueError(f"lr={lr!r} is invalid; accepted: lr >= 0")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={betas!r} is invalid; accepted: two values in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"eps={eps!r} is invalid; accepted: eps >= 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay={weight_decay!r} is invalid; accepted: weight_decay >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, foreach=foreach, layer_adaptation=True)
        super().__init__(params, defaults)
        self.skipped_steps = 0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["skipped_steps"] = self.skipped_steps
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

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
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = len({p.device.type for p in params}) == 1
            work.append((group, params, [p.grad for p in params], foreach))
        if not work:
            return loss
        if not _all_finite([_norms(grads, foreach) for _, _, grads, foreach in work]):
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
            update = _foreach_lamb if foreach else _single_tensor_lamb
            update(params, grads, [self.state[p]["exp_avg"] for p in params],
                   [self.state[p]["exp_avg_sq"] for p in params], bc1, bc2, lr=group["lr"],
                   b1=b1, b2=b2, eps=group["eps"], weight_decay=group["weight_decay"],
                   layer_adaptation=group["layer_adaptation"])
        return loss


def _norms(tensors: list[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        return list(torch._foreach_norm(tensors))
    return [torch.linalg.vector_norm(t) for t in tensors]


def _all_finite(norm_lists: list[list[Tensor]]) -> bool:
    """True if every norm is finite; one host sync per device."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for norms in norm_lists:
        for n in norms:
            by_device.setdefault(n.device, []).append(n.isfinite())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


def _trust_ratio(w_norm: Tensor, u_norm: Tensor) -> Tensor:
    """||x|| / ||u||, or 1 where either norm is 0 (elementwise over stacked norms)."""
    return torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)


def _single_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2, *, lr, b1, b2, eps,
                        weight_decay, layer_adaptation):
    for p, g, m, v, c1, c2 in zip(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / c2).sqrt_().add_(eps)
        u = (m / c1).div_(denom)
        if weight_decay != 0:
            u.add_(p, alpha=weight_decay)
        if layer_adaptation:
            u.mul_(_trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)))
        p.add_(u, alpha=-lr)


def _foreach_lamb(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2, *, lr, b1, b2, eps,
                  weight_decay, layer_adaptation):
    torch._foreach_mul_(exp_avgs, b1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - b2)
    denom = torch._foreach_div(exp_avg_sqs, bc2)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    u = torch._foreach_div(exp_avgs, bc1)
    torch._foreach_div_(u, denom)
    if weight_decay != 0:
        torch._foreach_add_(u, params, alpha=weight_decay)
    if layer_adaptation:
        # All of the group's ratios in one vectorized op; stack promotes mixed dtypes.
        ratios = _trust_ratio(torch.stack(torch._foreach_norm(params)),
                              torch.stack(torch._foreach_norm(u)))
        torch._foreach_mul_(u, ratios.unbind(0))
    torch._foreach_add_(params, u, alpha=-lr)
