"""The one non-finite guard of a training step: a gradient holding NaN or Inf never reaches the weights.

Three modes, chosen once per run (``train.nonfinite_check``, ``train.precision``):

* ``scaler`` (fp16): ``torch.amp.GradScaler`` skips the step and lowers the loss scale, as PyTorch does;
* ``host`` (the CPU default): the all-reduced gradients' norms are checked before the step, one host
  sync per step (free on CPU), and a bad step is skipped;
* ``device`` (the CUDA default): the step runs and is undone on the device where it was not finite,
  with no host sync; counting and ``train.nonfinite_policy`` wait for the next point that syncs anyway
  (a log interval, an evaluation, a checkpoint).

The optimizers' own checks are off (``skip_nonfinite=False``): this guard is the only one, and it
counts a bad step once, in ``TrainState.skipped_steps``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from largebatch.optim._common import Settings, all_finite, norms

log = logging.getLogger(__name__)


class NonFiniteGradient(FloatingPointError):
    """A gradient held a NaN or Inf and the policy (or the number of skips) says stop."""


class NonFiniteGuard:
    """Applies the optimizer step under the guard; see the module docstring for the modes.

    Args:
        model: the (unwrapped) model whose gradients are checked.
        optimizer: its optimizer.
        train_cfg: the ``train`` config section (``nonfinite_check``, ``nonfinite_policy``, ``max_nonfinite_steps``).
        device: the training device.
        scaler: the fp16 ``GradScaler``, or None.
        lr_at: ``step -> LR``, for the messages.
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, train_cfg, device: torch.device, scaler, lr_at
    ) -> None:
        self.model, self.optimizer, self.cfg, self.device, self.scaler, self.lr_at = (
            model,
            optimizer,
            train_cfg,
            device,
            scaler,
            lr_at,
        )
        check = train_cfg.nonfinite_check
        self.mode = (
            "scaler"
            if scaler is not None
            else "device"
            if check == "device" or (check == "auto" and device.type == "cuda")
            else "host"
        )
        self._snapshot: list[torch.Tensor] | None = None
        self._pending_skips = torch.zeros((), dtype=torch.int32, device=device)
        self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self._first_bad_mask: torch.Tensor | None = None
        self._names: list[str] = []
        self._buffers: list[torch.Tensor] = []
        self._buffers_before: list[torch.Tensor] = []

    def begin_step(self) -> None:
        """Before the step's forward passes: keep the model's buffers (BN running statistics and
        counters, which the forward updates) so that a skipped step leaves them as they were."""
        buffers = list(self.model.buffers())
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            self._buffers, self._buffers_before = buffers, [b.detach().clone() for b in buffers]
        elif buffers:
            torch._foreach_copy_(self._buffers_before, [b.detach() for b in buffers])

    def _restore_buffers(self, ok: torch.Tensor | None = None) -> None:
        """Set the buffers back to their values at :meth:`begin_step` (where ``ok`` is false)."""
        with torch.no_grad():
            for b, old in zip(self._buffers, self._buffers_before):
                if ok is None:
                    b.copy_(old)
                else:
                    torch.where(ok, b, old, out=b)

    @property
    def on_device(self) -> bool:
        return self.mode == "device"

    def step(self, state) -> bool | torch.Tensor:
        """The optimizer step of ``state.step`` under the guard; True/False (host, scaler) or a device
        bool tensor (device mode: no sync) saying whether it was applied."""
        if self.mode == "scaler":
            self.scaler.step(self.optimizer)  # skips a non-finite step itself and lowers the scale
            self.scaler.update()
            return True
        if self.mode == "device":
            return self._device_step(state.step)
        if self.gradients_finite(state):
            self.optimizer.step()
            return True
        self._restore_buffers()  # the forward of the skipped step moved the BN running statistics
        return False

    # ------------------------------------------------------------------ host mode
    def gradients_finite(self, state) -> bool:
        """Check the all-reduced gradients; apply train.nonfinite_policy to a NaN or Inf. One host
        sync per step (free on CPU; on CUDA it is the one sync of the step, as GradScaler's)."""
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if all_finite(norms([g for _, g in named])):
            return True
        bad = [n for n, g in named if not bool(torch.isfinite(g).all())]
        where = (
            f"step {state.step} (epoch {state.epoch}, LR {self.lr_at(state.step):g}): non-finite gradient in "
            f"{_names(bad)}"
        )
        self._count(state, 1, where, at_sync=False)
        return False

    # ------------------------------------------------------------------ device mode
    def _state_tensors(self) -> list[torch.Tensor]:
        """The optimizer's floating state tensors (momentum buffers, moments), persistent objects."""
        return [
            v
            for state in self.optimizer.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
        ]

    def _device_step(self, step_index: int) -> torch.Tensor:
        """The optimizer step with no host sync: whether every gradient is finite stays a device tensor
        ``ok``; the step runs, and every parameter and floating optimizer-state tensor is then set back
        to its value before the step where ``ok`` is false (state created by this step back to zeros,
        the state before a first step). Counting and the policy wait for :meth:`settle`."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        self._names = [n for n, _ in named]
        finite = torch.stack([n.isfinite() for n in norms([p.grad for _, p in named])])
        ok = finite.all()
        states = self._state_tensors()
        before = [p.detach() for p in self.model.parameters()] + states
        if (
            self._snapshot is None
            or len(self._snapshot) != len(before)
            or any(a.shape != b.shape for a, b in zip(self._snapshot, before))
        ):
            self._snapshot = [t.clone() for t in before]
        else:
            torch._foreach_copy_(self._snapshot, before)
        known = {id(t) for t in states}
        self.optimizer.step()
        for t, old in zip(before, self._snapshot):
            torch.where(ok, t, old, out=t)
        self._restore_buffers(ok)
        for t in self._state_tensors():
            if id(t) not in known:
                torch.where(ok, t, torch.zeros((), dtype=t.dtype, device=t.device), out=t)
        step = torch.tensor(step_index, device=ok.device)
        first = self._first_bad_step < 0
        self._first_bad_mask = (
            torch.where(first & ~ok, ~finite, self._first_bad_mask)
            if self._first_bad_mask is not None and self._first_bad_mask.numel() == finite.numel()
            else ~finite & ~ok
        )
        self._first_bad_step = torch.where(first & ~ok, step, self._first_bad_step)
        self._pending_skips = self._pending_skips + (~ok).int()
        return ok

    def settle(self, state) -> None:
        """Apply train.nonfinite_policy to the steps skipped on the device since the last call (one
        sync, made where the loop syncs anyway: at log intervals, evaluations and checkpoints)."""
        if self.mode != "device":
            return
        pending, first = torch.stack(
            [self._pending_skips.to(torch.int64).cpu(), self._first_bad_step.to(torch.int64).cpu()]
        ).tolist()
        if pending == 0:
            return
        mask = self._first_bad_mask.tolist() if self._first_bad_mask is not None else []
        bad = [n for n, m in zip(self._names, mask) if m]
        where = f"step {first} (LR {self.lr_at(first):g}): non-finite gradient in {_names(bad) or 'a layer'}"
        if isinstance(self.optimizer, Settings):
            # The undone steps still advanced the optimizer's host counters (LAMB's bias-correction t,
            # RMSprop warm-up's epoch count); take them back now. The steps between the bad one and
            # this sync used a count higher by one, the price of not syncing every step.
            self.optimizer.forget_steps(pending)
        self._pending_skips = torch.zeros((), dtype=torch.int32, device=self.device)
        self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._first_bad_mask = None
        self._count(state, pending, where, at_sync=True)

    # ------------------------------------------------------------------ the policy
    def _count(self, state, n: int, where: str, *, at_sync: bool) -> None:
        t = self.cfg
        if t.nonfinite_policy == "stop":
            if at_sync:
                state.skipped_steps += n
                raise NonFiniteGradient(
                    f"{where}; stopping (train.nonfinite_policy=stop; found at the next sync "
                    f"point, the step and any after it were not applied)"
                )
            raise NonFiniteGradient(
                f"{where}; stopping (train.nonfinite_policy=stop); "
                f"lower optim.base_lr or lengthen schedule.warmup_epochs"
            )
        state.skipped_steps += n
        if at_sync:
            log.warning(
                "%s; %d step(s) skipped since the last report (%d of at most %d)",
                where,
                n,
                state.skipped_steps,
                t.max_nonfinite_steps,
            )
        else:
            log.warning("%s; step skipped (%d of at most %d)", where, state.skipped_steps, t.max_nonfinite_steps)
        if state.skipped_steps > t.max_nonfinite_steps:
            raise NonFiniteGradient(
                f"{where}; {state.skipped_steps} steps skipped, more than "
                f"train.max_nonfinite_steps={t.max_nonfinite_steps}: stopping; lower optim.base_lr or "
                f"lengthen schedule.warmup_epochs"
            )


def _names(bad: list[str]) -> str:
    return f"{', '.join(bad[:5])}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}"
