"""The CPU's peak floating-point rate, derived from its vector width, FMA pipes and clock.

peak FLOP/s = cores x FMA pipes per core x fp32 lanes per pipe x 2 FLOPs per FMA x clock

* lanes: 8 fp32 lanes in a 256-bit pipe, 16 in a 512-bit one;
* AMD Zen 2, 3 and 4 (family 0x17 and 0x19) have two 256-bit FMA pipes per core; Zen 4 runs
  AVX-512 instructions on them in two halves, so its fp32 peak per cycle is Zen 3's (32 FLOPs);
  Zen 5 (family 0x1a) has two full 512-bit pipes (64 FLOPs);
* Intel cores with AVX-512 are counted with two 512-bit FMA pipes (Xeon Scalable Gold/Platinum,
  Ice Lake-SP, Sapphire Rapids; some Silver and Bronze parts have one), AVX2-only cores with two
  256-bit pipes;
* bf16: ``vdpbf16ps`` (AVX-512 BF16) multiplies pairs of bf16 into fp32 sums, two FMAs per fp32
  lane: twice the fp32 peak. AMX tiles (``amx_bf16``): 1024 bf16 FLOPs per cycle per core. Without
  either, bf16 is computed by fp32 FMAs after conversions: at most the fp32 peak;
* clock: ``cpu MHz`` of /proc/cpuinfo, the nominal clock a VM reports; cores boost above it (an
  EPYC 7763 from 2.45 to 3.5 GHz), so the peak at the boost clock is up to that ratio higher.

The derivation is an upper bound on arithmetic only: memory bandwidth, the FP adder pipes and
non-FMA work (BN, ReLU, pooling) are not in it.
"""

from __future__ import annotations

import os
from pathlib import Path


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (part.strip() for part in line.split(":", 1))
                info.setdefault(key, value)
    except OSError:
        pass
    return info


def fma_layout(vendor: str, family: int, flags: set[str]) -> tuple[int, int, str]:
    """(FMA pipes per core, fp32 lanes per pipe, why) for a CPU."""
    if vendor == "AuthenticAMD":
        if family >= 0x1A:
            return 2, 16, "AMD Zen 5: two 512-bit FMA pipes"
        if family in (0x17, 0x19):
            zen4 = "avx512f" in flags
            return (
                2,
                8,
                (
                    "AMD Zen 4: two 256-bit FMA pipes (AVX-512 in two halves)"
                    if zen4
                    else "AMD Zen 2/3: two 256-bit FMA pipes"
                ),
            )
    if "avx512f" in flags:
        return 2, 16, "AVX-512: two 512-bit FMA pipes"
    if "fma" in flags and "avx2" in flags:
        return 2, 8, "AVX2: two 256-bit FMA pipes"
    return 1, 4, "no FMA flags: one 128-bit pipe assumed"


def machine_peak(cores: int | None = None, clock_ghz: float | None = None) -> dict:
    """The fp32 and bf16 peak of this machine's CPU in GFLOP/s, with every input of the derivation.

    Args:
        cores: cores to count (default: the CPUs this process may run on).
        clock_ghz: clock (default: ``cpu MHz`` of /proc/cpuinfo, else 2.0).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if clock_ghz is None:
        clock_ghz = float(info.get("cpu MHz", "2000") or 2000) / 1000
    pipes, lanes, why = fma_layout(vendor, family, flags)
    per_cycle = pipes * lanes * 2
    fp32 = cores * per_cycle * clock_ghz
    if "amx_bf16" in flags:
        bf16, bf16_why = cores * 1024 * clock_ghz, "AMX tiles: 1024 bf16 FLOPs per cycle per core"
    elif "avx512_bf16" in flags:
        bf16, bf16_why = 2 * fp32, "vdpbf16ps: two bf16 FMAs per fp32 lane"
    else:
        bf16, bf16_why = fp32, "no native bf16: converted to fp32, at most the fp32 peak"
    return {
        "cpu": info.get("model name", ""),
        "cores": cores,
        "clock_ghz": clock_ghz,
        "fma_pipes_per_core": pipes,
        "fp32_lanes_per_pipe": lanes,
        "fp32_flops_per_cycle_per_core": per_cycle,
        "layout": why,
        "fp32_gflop_s": fp32,
        "bf16_gflop_s": bf16,
        "bf16": bf16_why,
    }
