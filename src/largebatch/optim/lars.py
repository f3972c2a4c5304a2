"""LARS: SGD with momentum and a per-tensor trust ratio (You, Gitman, Ginsburg 2017, arXiv
1708.03888, Algorithm 1), written in PyTorch's momentum form. See You et al. 2017 (LARS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from largebatch.optim._common import Settings, all_finite, guarded, norms, use_foreach


class Lars(Settings, torch.optim.Optimizer):
    r"""LARS with the learning rate outside the momentum buffer (PyTorch form).

    For each parameter tensor ``p`` with gradient ``g`` (a "layer" is one tensor; weights and
    biases get separate ratios), weight decay ``wd`` of its group and trust coefficient ``eta``::

        ratio = eta ||p|| / (||g|| + wd ||p|| + eps)     # 1 if ||p|| == 0 or ||g|| == 0
        d     = ratio (g + wd p)
        buf   = momentum buf + d                          # first step: buf = d
        p    -= lr (d + momentum buf)   if nesterov  else  lr buf

    Norms are Frobenius norms over the whole tensor. This is form (9) of Goyal et al. 2017
    (sec. 3, Remark 2). The paper's Algorithm 1 is form (10), LR inside the buffer:
    ``v = m v + lr ratio (g + wd p); p -= v``, which is only right for a changing LR with Goyal's
    momentum correction ``v = m (lr_t / lr_{t-1}) v + ...``. Here ``v = lr buf``, so the two agree
    exactly and a schedule may write ``group["lr"]`` freely: no correction is needed (tested).

    ``clip=True`` is apex's LARC clipping mode: the ratio is ``min(ratio / lr, 1)``, so the
    effective step size is ``min(lr, eta ||p|| / (||g|| + wd ||p|| + eps))``. apex's default
    coefficient for that mode is 0.02; ours stays 0.001 (the paper's), so pass
    ``trust_coefficient=0.02`` to reproduce apex.

    Per-group keys: ``lr``, ``momentum``, ``weight_decay``, ``trust_coefficient``, ``eps``,
    ``nesterov``, ``clip``, ``foreach`` and ``layer_adaptation`` (default True). A group with
    ``layer_adaptation=False`` uses ratio 1 (plain SGD with momentum and its own weight decay): the
    MLPerf exclusion of norm layers and biases, set by :mod:`largebatch.optim.param_groups`.

    State per parameter: ``momentum_buffer`` (like ``p``, created as zeros at its first step;
    absent while momentum is 0). Parameters
    whose ``.grad`` is None are skipped; ``.grad`` is never modified; sparse gradients are not
    supported.

    Non-finite gradients: if any gradient norm of the step is inf or NaN, the whole step is skipped
    (no parameter or buffer changes) and the integer ``self.skipped_steps`` is incremented. The
    decision costs one host sync per step (all norms are stacked and read once; a norm that overflows
    float32 counts as non-finite). ``skip_nonfinite=False`` removes the check and its sync, for a
    caller that guards steps itself (the trainer always does, on the host or on the device).

    Args:
        params: parameters or param-group dicts.
        lr: global learning rate, >= 0.
        momentum: in [0, 1).
        weight_decay: L2 coefficient added to the gradient before scaling, >= 0.
        trust_coefficient: eta, > 0; 0.001 as in the paper and the MLPerf reference.
        eps: added to the ratio's denominator, >= 0 (0 as in the paper; zero norms are guarded).
        nesterov: Nesterov momentum; needs momentum > 0.
        clip: apex LARC clipping mode (see above).
        foreach: use the ``torch._foreach_*`` path, whose trust ratios for a whole group are one
            stacked tensor from foreach norms; None picks it when all of a group's parameters
            are on one CUDA device, and the in-place single-tensor path otherwise (faster on CPU,
            see :mod:`largebatch.optim._common`). Both paths do the same math.
        skip_nonfinite: skip a step whose gradients hold inf or NaN (one host sync per step).

    ``copy.deepcopy`` and ``pickle`` keep every setting and counter.

    Raises:
        ValueError: for an argument out of its range.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        nesterov: bool = False,
        clip: bool = False,
        foreach: bool | None = None,
        skip_nonfinite: bool = True,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr={lr} is invalid; accepted: lr >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} is invalid; accepted: 0 <= momentum < 1")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay={weight_decay} is invalid; accepted: weight_decay >= 0")
        if not trust_coefficient > 0.0:
            raise ValueError(f"trust_coefficient={trust_coefficient} is invalid; accepted: > 0")
        if not eps >= 0.0:
            raise ValueError(f"eps={eps} is invalid; accepted: eps >= 0")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0; accepted: momentum in (0, 1)")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
            clip=clip,
            foreach=foreach,
            layer_adaptation=True,
        )
        super().__init__(params, defaults)
        self.skipped_steps = 0
        self.skip_nonfinite = bool(skip_nonfinite)

    _settings = ("skipped_steps", "skip_nonfinite")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["skipped_steps"] = self.skipped_steps
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.skipped_steps = int(state_dict.pop("skipped_steps", 0))
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        """One LARS step over all groups; returns ``closure()``'s loss (None without closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = []  # (group, params, grads, foreach)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                if any(p.grad.is_sparse for p in params):
                    raise RuntimeError("Lars does not support sparse gradients")
                work.append((group, params, [p.grad for p in params], use_foreach(params, group["foreach"])))
        if not work:
            return loss
        g_norms = norms([g for _, _, grads, _ in work for g in grads])
        # The one host sync of the step: skip everything if any gradient norm is inf or NaN. A trainer
        # that undoes non-finite steps on the device itself turns it off (skip_nonfinite = False).
        if self.skip_nonfinite and not all_finite(g_norms):
            self.skipped_steps += 1
            return loss

        start = 0
        for group, params, grads, foreach in work:
            group_norms, start = g_norms[start : start + len(params)], start + len(params)
            hyper = {
                k: group[k]
                for k in (
                    "lr",
                    "momentum",
                    "weight_decay",
                    "trust_coefficient",
                    "eps",
                    "nesterov",
                    "clip",
                    "layer_adaptation",
                )
            }
            if group["momentum"] != 0.0:
                for p in params:
                    if "momentum_buffer" not in self.state[p]:  # v_0 = 0, so step 1 gives buf = d
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            update_fn = _multi_tensor_lars if foreach else _single_tensor_lars
            update_fn(params, grads, group_norms, bufs, **hyper)
        return loss


def _trust_ratio(w_norm: Tensor, g_norm: Tensor, *, lr, weight_decay, trust_coefficient, eps, clip) -> Tensor:
    """Elementwise over norms (0-dim or stacked 1-D): the LARS ratio, LARC-clipped if ``clip``."""
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    if clip:
        ratio = torch.clamp(ratio / lr, max=1.0)  # lr == 0 gives inf -> 1 (and a zero step)
    return guarded(ratio, w_norm, g_norm)


def _trust_ratio_float(w_norm: float, g_norm: float, *, lr, weight_decay, trust_coefficient, eps, clip) -> float:
    """:func:`_trust_ratio` on host floats, for the single-tensor path."""
    if not (w_norm > 0 and g_norm > 0):
        return 1.0
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    if clip:
        ratio = min(ratio / lr, 1.0) if lr > 0 else 1.0
    return ratio


def _single_tensor_lars(
    params,
    grads,
    g_norms,
    bufs,
    *,
    lr,
    momentum,
    weight_decay,
    trust_coefficient,
    eps,
    nesterov,
    clip,
    layer_adaptation,
):
    """One tensor at a time, in place, no full-size temporary. With r the ratio and
    d = r (g + wd p): buf = m buf + r g + (r wd) p, then p -= lr buf, or with Nesterov
    p = p (1 - lr wd r) - lr r g - lr m buf; without momentum p = p (1 - lr wd r) - lr r g.

    The norms are read to the host as floats (free on CPU, where this path is the default; on
    CUDA one sync per tensor, which is why CUDA defaults to the foreach path): a ratio computed
    with a handful of 0-dim tensor ops per tensor costs more than the update of a small tensor."""
    g_norms = torch.stack(g_norms).tolist() if g_norms else []
    for p, g, g_norm, buf in zip(params, grads, g_norms, bufs):
        r = 1.0
        if layer_adaptation:
            w_norm = torch.linalg.vector_norm(p, dtype=torch.promote_types(p.dtype, torch.float32))
            r = _trust_ratio_float(
                w_norm.item(),
                g_norm,
                lr=lr,
                weight_decay=weight_decay,
                trust_coefficient=trust_coefficient,
                eps=eps,
                clip=clip,
            )
        if momentum != 0.0:
            buf.mul_(momentum).add_(g, alpha=r)
            if weight_decay != 0.0:
                buf.add_(p, alpha=r * weight_decay)
            if not nesterov:
                p.add_(buf, alpha=-lr)
                continue
        if weight_decay != 0.0:
            p.mul_(1.0 - lr * weight_decay * r)
        p.add_(g, alpha=-lr * r)
        if momentum != 0.0:  # Nesterov: p -= lr (d + m buf)
            p.add_(buf, alpha=-lr * momentum)


def _multi_tensor_lars(
    params,
    grads,
    g_norms,
    bufs,
    *,
    lr,
    momentum,
    weight_decay,
    trust_coefficient,
    eps,
    nesterov,
    clip,
    layer_adaptation,
):
    """The whole group per op; the group's ratios are one stacked tensor from foreach norms."""
    if weight_decay != 0.0:
        d = torch._foreach_add(grads, params, alpha=weight_decay)
    else:
        d = torch._foreach_mul(grads, 1.0)
    if layer_adaptation:
        w_norms = torch.stack(norms(params)).to(g_norms[0].device)
        ratios = _trust_ratio(
            w_norms,
            torch.stack(g_norms),
            lr=lr,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            clip=clip,
        )
        torch._foreach_mul_(d, list(ratios.unbind()))
    update = d
    if momentum != 0.0:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, d)
        update = torch._foreach_add(d, bufs, alpha=momentum) if nesterov else bufs
    torch._foreach_add_(params, update, alpha=-lr)
