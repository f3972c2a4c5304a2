"""RMSprop warm-up: a per-element blend of RMSprop and momentum SGD (Akiba, Suzuki, Fukuda 2017,
"Extremely Large Minibatch SGD: Training ResNet-50 on ImageNet in 15 Minutes", arXiv 1711.04325,
sec. 3.1 [S]).

Training starts as RMSprop and moves to momentum SGD as ``alpha_sgd`` rises from about 0 to 1 over
the first ``center_epochs + period_epochs / 2`` epochs; per element, with ``eta`` the group's LR::

    m         = mu2 * m + (1 - mu2) * g**2
    delta     = mu1 * delta - (alpha_sgd + alpha_rms / (sqrt(m) + eps)) * g
    theta     = theta + eta * delta
    alpha_rms = (1 - alpha_sgd) * rmsprop_lr / eta

Status of the pieces. The update and the ``alpha_sgd`` schedule are taken from two secondary
sources that agree (a reading note that reproduces the paper's equations, and Tokyo Tech's Chainer
re-implementation); the PDF itself was not checked [S]. The paper note gives no formula for
``alpha_rms``: the coupling above, and ``rmsprop_lr = 3e-4, mu1 = 0.9, mu2 = 0.99, eps = 1e-8``, come
from the re-implementation alone [S, not confirmed in the paper]. With it the RMSprop part of a
step is ``(1 - alpha_sgd) * rmsprop_lr * g / (sqrt(m) + eps)`` whatever the SGD LR is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from largebatch.config import ALPHA_VARIANTS
from largebatch.optim._common import Scratch, Settings, all_finite, norms, use_foreach

__all__ = ["RMSpropWarmup", "akiba_alpha_sgd"]

VARIANTS = ALPHA_VARIANTS


def akiba_alpha_sgd(
    epoch: float, *, center_epochs: float = 10.0, period_epochs: float = 5.0, variant: str = "printed"
) -> float:
    """Weight of the SGD term at ``epoch`` (fractional), shaped like the ELU activation::

        e < c:              0.5 * exp(2 * (e - c) / p)
        c <= e < c + p / 2: 0.5 + 2 * (e - c) / p     (variant="printed")
                            0.5 + (e - c) / p         (variant="smooth")
        otherwise:          1

    with ``c = center_epochs`` (10 in the paper) and ``p = period_epochs`` (5). The ``printed`` branch
    is what both secondary sources show; it is discontinuous: it climbs to 1.5 just before
    ``c + p / 2`` and falls back to 1 there. ``smooth`` has the slope of the exponential at ``c``
    (``1 / p``) and reaches 1 exactly at ``c + p / 2``; it is our inference [U].

    Raises:
        ValueError: if ``period_epochs <= 0`` or ``variant`` is not ``printed`` or ``smooth``.
    """
    if not period_epochs > 0:
        raise ValueError(f"period_epochs={period_epochs!r} must be > 0")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; accepted: printed, smooth")
    x = (epoch - center_epochs) / period_epochs
    if x < 0:
        return 0.5 * math.exp(2.0 * x)
    if x < 0.5:
        return 0.5 + (2.0 * x if variant == "printed" else x)
    return 1.0


class RMSpropWarmup(Settings, torch.optim.Optimizer):
    """Akiba et al.'s RMSprop warm-up (equations in the module docstring).

    Per-group options: ``lr`` (``eta``, the SGD LR, written by the trainer each step), ``momentum``
    (``mu1``), ``alpha`` (``mu2``), ``eps``, ``rmsprop_lr``, ``weight_decay``, ``foreach``.
    ``alpha_rms`` is computed per group from the group's current ``lr``; when ``lr == 0`` the RMSprop
    term is dropped (``alpha_rms = 0``, no division by zero) and only ``delta`` moves.

    Weight decay is coupled, as in Goyal et al. 2017 eq. (8): ``g = grad + weight_decay * theta``
    is used everywhere above, in the second moment too. ``p.grad`` is never modified.

    Epochs: the optimizer counts the steps it has taken (``steps_done``, saved by
    :meth:`state_dict`) and uses ``e = steps_done / steps_per_epoch``, a fractional epoch, so
    ``alpha_sgd`` changes every step [U: our reading]. The Chainer re-implementation updated it once
    per integer epoch; ``integer_epochs=True`` does that (``e = steps_done // steps_per_epoch``).
    ``alpha_sgd`` (a float) pins the weight to a constant, for tests and ablations. A trainer whose
    steps per epoch change (a batch-size schedule) sets ``epoch_position`` (fractional epochs of
    samples seen) before each step instead; it takes precedence over the step count.

    Non-finite gradients: before each step the norms of all gradients are checked (one host sync
    per step; a norm that overflows float32 counts as non-finite); if any is inf or NaN the whole
    step is skipped (no weight, state or counter change) and ``skipped_steps`` is incremented.
    ``skip_nonfinite=False`` removes the check and its sync, for a caller that guards steps itself.
    ``copy.deepcopy`` and ``pickle`` keep every setting and counter.

    ``foreach``: None picks the ``torch._foreach_*`` path when all of a group's parameters are on
    one CUDA device and the single-tensor path otherwise (faster on CPU, see
    :mod:`largebatch.optim._common`); both do the same math.

    Raises:
        ValueError: for an argument outside its accepted range (the message names it).
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        alpha: float = 0.99,
        eps: float = 1e-8,
        rmsprop_lr: float = 3e-4,
        weight_decay: float = 0.0,
        *,
        steps_per_epoch: int,
        center_epochs: float = 10.0,
        period_epochs: float = 5.0,
        variant: str = "printed",
        integer_epochs: bool = False,
        alpha_sgd: float | None = None,
        foreach: bool | None = None,
        skip_nonfinite: bool = True,
    ):
        checks = [
            ("lr", lr, lr >= 0, ">= 0"),
            ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
            ("alpha", alpha, 0 <= alpha < 1, "in [0, 1)"),
            ("eps", eps, eps > 0, "> 0"),
            ("rmsprop_lr", rmsprop_lr, rmsprop_lr >= 0, ">= 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            (
                "steps_per_epoch",
                steps_per_epoch,
                isinstance(steps_per_epoch, int) and steps_per_epoch >= 1,
                "an int >= 1",
            ),
            ("center_epochs", center_epochs, math.isfinite(center_epochs), "finite"),
            ("period_epochs", period_epochs, period_epochs > 0 and math.isfinite(period_epochs), "finite and > 0"),
            ("variant", variant, variant in VARIANTS, "printed or smooth"),
            ("alpha_sgd", alpha_sgd, alpha_sgd is None or 0 <= alpha_sgd < math.inf, "None or a finite float >= 0"),
        ]
        for name, value, ok, accepted in checks:
            if not ok:
                raise ValueError(f"{name}={value!r} is out of range; accepted: {accepted}")
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, rmsprop_lr=rmsprop_lr, weight_decay=weight_decay
        )
        defaults["foreach"] = foreach
        super().__init__(params, defaults)
        self.steps_per_epoch = steps_per_epoch
        self.center_epochs = center_epochs
        self.period_epochs = period_epochs
        self.variant = variant
        self.integer_epochs = integer_epochs
        self.alpha_sgd = alpha_sgd
        self.steps_done = 0
        self.skipped_steps = 0
        self.epoch_position: float | None = None
        self.skip_nonfinite = bool(skip_nonfinite)
        self._scratch = Scratch()

    _settings = (
        "steps_per_epoch",
        "center_epochs",
        "period_epochs",
        "variant",
        "integer_epochs",
        "alpha_sgd",
        "steps_done",
        "skipped_steps",
        "epoch_position",
        "skip_nonfinite",
    )

    def current_alpha_sgd(self) -> float:
        """The ``alpha_sgd`` the next :meth:`step` will use (for logging)."""
        if self.alpha_sgd is not None:
            return float(self.alpha_sgd)
        if self.epoch_position is not None:  # set by a trainer whose steps per epoch change
            epoch = float(math.floor(self.epoch_position)) if self.integer_epochs else self.epoch_position
        elif self.integer_epochs:
            epoch = float(self.steps_done // self.steps_per_epoch)
        else:
            epoch = self.steps_done / self.steps_per_epoch
        return akiba_alpha_sgd(
            epoch, center_epochs=self.center_epochs, period_epochs=self.period_epochs, variant=self.variant
        )

    def forget_steps(self, n: int) -> None:
        """Take back ``n`` of ``steps_done`` (see :meth:`largebatch.optim._common.Settings.forget_steps`)."""
        self.steps_done = max(0, self.steps_done - n)

    def state_dict(self) -> dict:
        """``torch.optim`` state plus the counters ``steps_done`` and ``skipped_steps``."""
        sd = super().state_dict()
        sd["steps_done"] = self.steps_done
        sd["skipped_steps"] = self.skipped_steps
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Inverse of :meth:`state_dict`; raises ``ValueError`` if ``steps_done`` is missing."""
        state_dict = dict(state_dict)
        if "steps_done" not in state_dict:
            raise ValueError("state_dict has no 'steps_done'; it was not saved by RMSpropWarmup")
        steps_done = int(state_dict.pop("steps_done"))
        skipped_steps = int(state_dict.pop("skipped_steps", 0))
        super().load_state_dict(state_dict)
        self.steps_done = steps_done
        self.skipped_steps = skipped_steps

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if self.skip_nonfinite and grads and not all_finite(norms(grads)):  # the one host sync per step
            self.skipped_steps += 1
            return loss
        alpha_sgd = self.current_alpha_sgd()
        for group in self.param_groups:
            params, grads, square_avgs, deltas = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropWarmup does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                square_avgs.append(state["square_avg"])
                deltas.append(state["delta"])
            if not params:
                continue
            lr = group["lr"]
            # alpha_rms * eta = (1 - alpha_sgd) * rmsprop_lr: undefined at eta = 0, and moot there.
            alpha_rms = (1.0 - alpha_sgd) * group["rmsprop_lr"] / lr if lr != 0 else 0.0
            if use_foreach(params, group["foreach"]):
                update = _update_foreach
            else:
                update = functools.partial(_update_single, scratch=self._scratch)
            update(
                params,
                grads,
                square_avgs,
                deltas,
                lr=lr,
                alpha_sgd=alpha_sgd,
                alpha_rms=alpha_rms,
                momentum=group["momentum"],
                alpha=group["alpha"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
            )
        self.steps_done += 1
        return loss


def _update_single(
    params, grads, square_avgs, deltas, *, lr, alpha_sgd, alpha_rms, momentum, alpha, eps, weight_decay, scratch
):
    """One tensor at a time; the decayed gradient and sqrt(m) + eps live in reused scratch buffers."""
    for p, g, m, delta in zip(params, grads, square_avgs, deltas):
        if weight_decay != 0:
            g = torch.add(g, p, alpha=weight_decay, out=scratch.like(p, 0))  # p.grad stays as it is
        m.mul_(alpha).addcmul_(g, g, value=1.0 - alpha)
        delta.mul_(momentum).add_(g, alpha=-alpha_sgd)
        if alpha_rms != 0:
            denom = torch.sqrt(m, out=scratch.like(p, 1)).add_(eps)
            delta.addcdiv_(g, denom, value=-alpha_rms)
        p.add_(delta, alpha=lr)


def _update_foreach(
    params, grads, square_avgs, deltas, *, lr, alpha_sgd, alpha_rms, momentum, alpha, eps, weight_decay
):
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1.0 - alpha)
    torch._foreach_mul_(deltas, momentum)
    torch._foreach_add_(deltas, grads, alpha=-alpha_sgd)
    if alpha_rms != 0:
        denoms = torch._foreach_sqrt(square_avgs)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(deltas, grads, denoms, value=-alpha_rms)
    torch._foreach_add_(params, deltas, alpha=lr)
