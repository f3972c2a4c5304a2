"""Pieces shared by :class:`Lars`, :class:`Lamb` and :class:`RMSpropWarmup`: the choice between the
single-tensor and the foreach path, gradient norms, the one-sync non-finite check, the zero-norm
guard of a trust ratio, and reusable scratch memory for the single-tensor paths.

Why the single-tensor path is the CPU default (as in torch.optim): a ``torch._foreach_*`` op on CPU
is a loop over the tensors, so a chain of foreach ops streams the whole model through memory once
per op, while the single-tensor path runs the whole chain on one tensor while it is still in cache.
On resnet50 (25.6M parameters, 2 cores) that makes torch.optim.SGD about 3x faster with
``foreach=False`` (benchmarks/optimizer_step.py). On CUDA the foreach path launches a few fused
kernels per op instead of one kernel per tensor, which is what matters there.
"""

from __future__ import annotations

import torch
from torch import Tensor


def use_foreach(params: list[Tensor], foreach: bool | None) -> bool:
    """The group's path: ``foreach`` if given, else foreach only when every tensor is on one CUDA
    device (torch.optim's default rule)."""
    if foreach is not None:
        return foreach
    return all(p.is_cuda for p in params) and len({p.device for p in params}) == 1


def norms(tensors: list[Tensor]) -> list[Tensor]:
    """Frobenius norm of each tensor as a 0-dim tensor, accumulated and returned in at least
    float32 (a float16 gradient with a norm above 65504 would otherwise read as inf), float64
    tensors in float64. One ``torch._foreach_norm`` call per dtype; order is kept."""
    out: list[Tensor | None] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        acc = torch.promote_types(dtype, torch.float32)
        for i, n in zip(idx, torch._foreach_norm([tensors[i] for i in idx], 2, dtype=acc)):
            out[i] = n
    return out  # type: ignore[return-value]


def all_finite(values: list[Tensor]) -> bool:
    """True if every 0-dim tensor in ``values`` is finite. One host sync per device, which on CPU
    costs nothing and on CUDA is the single sync of an optimizer step."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for v in values:
        by_device.setdefault(v.device, []).append(v)
    return all(bool(torch.stack(vs).isfinite().all()) for vs in by_device.values())


def guarded(ratio: Tensor, w_norm: Tensor, other_norm: Tensor) -> Tensor:
    """``ratio`` where both norms are > 0, else 1: the zero-norm guard of LARS and LAMB (a freshly
    zero-initialized tensor, or one without gradient, is updated with ratio 1). Elementwise, so it
    works on 0-dim norms and on a group's stacked norms alike."""
    return torch.where((w_norm > 0) & (other_norm > 0), ratio, torch.ones_like(ratio))


class Scratch:
    """Reusable flat buffers for the temporaries of a single-tensor path, one per (slot, dtype,
    device), grown to the largest tensor seen. On CPU a fresh multi-megabyte temporary per tensor
    per step costs page faults; reusing one buffer avoids them. Not optimizer state: never saved."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def like(self, t: Tensor, slot: int = 0) -> Tensor:
        """An uninitialized contiguous tensor shaped like ``t``, valid until the next call with the
        same slot, dtype and device."""
        key = (slot, t.dtype, t.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < t.numel():
            buf = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
            self._buffers[key] = buf
        return buf[: t.numel()].view(t.shape)


class Settings:
    """Mixin for optimizers that keep settings and counters outside ``torch.optim.Optimizer``'s own
    ``defaults``/``state``/``param_groups``. ``Optimizer.__getstate__`` keeps only those three, so
    without this a ``copy.deepcopy`` or ``pickle`` round trip drops every other attribute and the
    copy's ``step()`` fails. The names in ``_settings`` travel with the copy; the scratch buffers
    (never state) are made anew."""

    _settings: tuple[str, ...] = ()

    def forget_steps(self, n: int) -> None:
        """Take back ``n`` steps from the optimizer's own step counters: called by a guard that let
        ``n`` non-finite steps run and undid their tensors on the device (the trainer's
        ``train.nonfinite_check=device``), once it learns ``n`` at its next host sync. No counter here."""

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["largebatch_settings"] = {name: getattr(self, name) for name in self._settings}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        settings = state.pop("largebatch_settings", {})
        super().__setstate__(state)
        for name, value in settings.items():
            setattr(self, name, value)
        self._scratch = Scratch()
