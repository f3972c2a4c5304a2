"""The CPU peak derivation: cores x FMA pipes x lanes x 2 x clock (docs/performance.md)."""

import pytest

from largebatch.sim.peak import fma_layout, machine_peak


@pytest.mark.parametrize(
    "vendor, family, flags, pipes, lanes",
    [
        ("AuthenticAMD", 0x19, {"avx2", "fma"}, 2, 8),  # Zen 3
        ("AuthenticAMD", 0x19, {"avx2", "fma", "avx512f"}, 2, 8),  # Zen 4: 512-bit in two halves
        ("AuthenticAMD", 0x1A, {"avx2", "fma", "avx512f"}, 2, 16),  # Zen 5
        ("GenuineIntel", 6, {"avx2", "fma", "avx512f"}, 2, 16),
        ("GenuineIntel", 6, {"avx2", "fma"}, 2, 8),
    ],
)
def test_fma_layout(vendor, family, flags, pipes, lanes):
    assert fma_layout(vendor, family, flags)[:2] == (pipes, lanes)


def test_machine_peak_is_the_closed_form():
    peak = machine_peak(cores=2, clock_ghz=2.5)
    per_cycle = peak["fma_pipes_per_core"] * peak["fp32_lanes_per_pipe"] * 2
    assert peak["fp32_flops_per_cycle_per_core"] == per_cycle
    assert peak["fp32_gflop_s"] == pytest.approx(2 * per_cycle * 2.5)
    assert peak["bf16_gflop_s"] >= peak["fp32_gflop_s"]
