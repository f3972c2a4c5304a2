"""``train.precision``: which arithmetic a run trains in, and ``auto``'s choice of it.

``auto`` (the default) trains in bf16 autocast where the device runs bf16 natively and in fp32
elsewhere:

* CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and newer: A100, H100, H200), else fp32
  (fp16 with dynamic loss scaling stays an explicit choice, ``train.precision=fp16``, for V100s);
* CPU: bf16 when torch's own CPU capability query reports AVX-512 BF16 (``vdpbf16ps``: AMD Zen 4
  and newer, Intel Cooper Lake and Sapphire Rapids) or AMX tiles (Intel Sapphire Rapids and newer),
  else fp32. Without them bf16 is emulated by conversions to fp32 and runs several times *slower*
  than fp32 (measured 8x on an AVX2-only AMD EPYC, see benchmarks/README.md).

Setting ``LARGEBATCH_CPU_BF16=1`` (or ``0``) overrides the CPU query, for tests and for a CPU that
torch misreports. The choice and its reason are logged and written to ``env.json`` and
``summary.json`` (``precision``, ``precision_reason``). What bf16 changes is in docs/precision.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PRECISION_ENV = "LARGEBATCH_CPU_BF16"
"""Environment variable that overrides torch's CPU bf16 query (``1``: native, ``0``: not)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The arithmetic a run uses: ``precision`` (fp32, bf16 or fp16) and why (one line)."""

    requested: str
    precision: str
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def as_dict(self) -> dict:
        return {"precision_requested": self.requested, "precision": self.precision, "precision_reason": self.reason}


def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16 on this CPU, what torch reports), from torch's CPU capability query
    (``torch.cpu._is_avx512_bf16_supported`` and ``_is_amx_tile_supported``; a torch without
    them counts as no) unless ``LARGEBATCH_CPU_BF16`` overrides it."""
    forced = os.environ.get(PRECISION_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{PRECISION_ENV}={forced}"
    cpu = getattr(torch, "cpu", None)

    def query(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except RuntimeError:
            return False

    avx512_bf16, amx = query("_is_avx512_bf16_supported"), query("_is_amx_tile_supported")
    capability = torch.backends.cpu.get_cpu_capability()
    found = [name for name, ok in (("AVX-512 BF16", avx512_bf16), ("AMX", amx)) if ok]
    if found:
        return True, f"CPU has {' and '.join(found)} (torch's CPU capability: {capability})"
    return False, f"CPU lacks AVX-512 BF16 and AMX (torch's CPU capability: {capability}): bf16 would be emulated"


def choose_precision(
    requested: str, device: torch.device, *, cpu_bf16: tuple[bool, str] | None = None, cuda_bf16: bool | None = None
) -> PrecisionChoice:
    """Resolve ``train.precision`` for ``device``.

    Args:
        requested: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: the training device.
        cpu_bf16: (native, description) in place of :func:`cpu_bf16_support` (tests).
        cuda_bf16: in place of ``torch.cuda.is_bf16_supported()`` (tests).

    Raises:
        ValueError: for an unknown ``requested``.
    """
    if requested in ("fp32", "bf16", "fp16"):
        return PrecisionChoice(requested, requested, "set by train.precision")
    if requested != "auto":
        raise ValueError(f"train.precision={requested!r} is unknown; accepted: auto, fp32, bf16, fp16")
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        name = torch.cuda.get_device_name(device) if cuda_bf16 is None else "the CUDA device"
        if native:
            return PrecisionChoice("auto", "bf16", f"{name} runs bf16 natively")
        return PrecisionChoice("auto", "fp32", f"{name} lacks native bf16 (train.precision=fp16 adds loss scaling)")
    if device.type == "cpu":
        native, why = cpu_bf16_support() if cpu_bf16 is None else cpu_bf16
        return PrecisionChoice("auto", "bf16" if native else "fp32", why)
    return PrecisionChoice("auto", "fp32", f"no native-bf16 query for device type {device.type!r}")
