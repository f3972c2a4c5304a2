"""LARS: SGD with momentum and a per-tensor trust ratio (You, Gitman, Ginsburg 2017, arXiv
1708.03888, Algorithm 1), written in PyTorch's momentum form. See techniques.md sec. 4.1-4.2.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Lars(torch.optim.Optimizer):
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

    State per parameter: ``momentum_buffer`` (like ``p``; absent while momentum is 0). Parameters
    whose ``.grad`` is None are skipped; ``.grad`` is never modified; sparse gradients are not
    supported.

    Non-finite gradients: if any gradient norm of the step is inf or NaN, the whole step is skipped
    (no parameter or buffer changes) and the integer ``self.skipped_steps`` is incremented. The
    decision costs one host sync per step (all norms are stacked and read once); it is saved in
    :meth:`state_dict`.

    Args:
        params: parameters or param-group dicts.
        lr: global learning rate, >= 0.
        momentum: in [0, 1).
        weight_decay: L2 coefficient added to the gradient before scaling, >= 0.
        trust_coefficient: eta, > 0; 0.001 as in the paper and the MLPerf reference.
        eps: added to the ratio's denominator, >= 0 (0 as in the paper; zero norms are guarded).
        nesterov: Nesterov momentum; needs momentum > 0.
        clip: apex LARC clipping mode (see above).
        foreach: use the ``torch._foreach_*`` path; None picks it for a group whose parameters all
            lie on one device (the ratios of a group are computed as one stacked tensor). Both
            paths do the same math.

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
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            trust_coefficient=trust_coefficient, eps=eps, nesterov=nesterov, clip=clip,
            foreach=foreach, layer_adaptation=True,
        )
        super().__init__(params, defaults)
        self.skipped_steps = 0

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

        work = []  # (group, params, grads, grad norms, foreach)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            foreach = group["foreach"]
            if foreach is None:
                foreach = len({p.device for p in params}) == 1
            if foreach:
                g_norms = list(torch._foreach_norm(grads))
            else:
                g_norms = [torch.linalg.vector_norm(g) for g in grads]
            work.append((group, params, grads, g_norms, foreach))
        if not work:
            return loss

        all_norms = [n for w in work for n in w[3]]
        device = all_norms[0].device
        # The one host sync of the step: skip everything if any gradient norm is inf or NaN.
        if not bool(torch.stack([n.to(device) for n in all_norms]).isfinite().all()):
            self.skipped_steps += 1
            return loss

        for group, params, grads, g_norms, foreach in work:
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            hyper = {k: group[k] for k in (
                "lr", "momentum", "weight_decay", "trust_coefficient", "eps", "nesterov", "clip",
                "layer_adaptation")}
            update_fn = _multi_tensor_lars if foreach else _single_tensor_lars
            bufs = update_fn(params, grads, g_norms, bufs, **hyper)
            if group["momentum"] != 0.0:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        return loss


def _trust_ratio(w_norm: Tensor, g_norm: Tensor, *, lr, weight_decay, trust_coefficient, eps,
                 clip) -> Tensor:
    """Elementwise over norms (0-dim or stacked 1-D): the LARS ratio, LARC-clipped if ``clip``."""
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    if clip:
        ratio = torch.clamp(ratio / lr, max=1.0)  # lr == 0 gives inf -> 1 (and a zero step)
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def _single_tensor_lars(params, grads, g_norms, bufs, *, lr, momentum, weight_decay,
                        trust_coefficient, eps, nesterov, clip, layer_adaptation):
    new_bufs = []
    for p, g, g_norm, buf in zip(params, grads, g_norms, bufs):
        d = torch.add(g, p, alpha=weight_decay) if weight_decay != 0.0 else g.clone()
        if layer_adaptation:
            d.mul_(_trust_ratio(torch.linalg.vector_norm(p), g_norm, lr=lr,
                                weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                                eps=eps, clip=clip))
        update = d
        if momentum != 0.0:
            buf = d.clone() if buf is None else buf.mul_(momentum).add_(d)
            update = d.add(buf, alpha=momentum) if nesterov else buf
        new_bufs.append(buf)
        p.add_(update, alpha=-lr)
    return new_bufs


def _multi_tensor_lars(params, grads, g_norms, bufs, *, lr, momentum, weight_decay,
                       trust_coefficient, eps, nesterov, clip, layer_adaptation):
    if weight_decay != 0.0:
        d = list(torch._foreach_add(grads, params, alpha=weight_decay))
    else:
        d = [g.clone() for g in grads]
    if layer_adaptation:
        ratios = _trust_ratio(torch.stack(torch._foreach_norm(params)), torch.stack(g_norms),
                              lr=lr, weight_decay=weight_decay,
                              trust_coefficient=trust_coefficient, eps=eps, clip=clip)
        torch._foreach_mul_(d, list(ratios.unbind()))
    update = d
    if momentum != 0.0:
        bufs = list(bufs)
        old = [i for i, b in enumerate(bufs) if b is not None]
        if old:
            torch._foreach_mul_([bufs[i] for i in old], momentum)
            torch._foreach_add_([bufs[i] for i in old], [d[i] for i in old])
        for i, b in enumerate(bufs):
            if b is None:
                bufs[i] = d[i].clone()
        update = torch._foreach_add(d, bufs, alpha=momentum) if nesterov else bufs
    torch._foreach_add_(params, update, alpha=-lr)
    return bufs
