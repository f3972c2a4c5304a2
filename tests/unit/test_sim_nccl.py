"""NCCL's cost model (largebatch.sim.nccl): closed forms worked by hand from NCCL's constants, its
enable rules and selection, the fabric's contention, DDP's buckets, and the validation tables of
docs/comm.md recomputed."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch.distributed as dist

from largebatch.sim import nccl
from largebatch.sim.allreduce import allreduce_cost, contention_factor, halving_doubling, ring, torus2d
from largebatch.sim.compute import ComputeModel
from largebatch.sim.network import Network
from largebatch.sim.presets import GOYAL_OWN_P100_IMAGES_PER_S, PRESETS, get_preset
from largebatch.sim.step import Workload
from largebatch.sim.validation import (
    A100_HDR,
    DGX_H100,
    MICROBENCHMARKS,
    RESULTS_JSON,
    RUNS,
    collectives_table,
    compute_table,
    predict_run,
    records,
    run_rows,
    runs_table,
)

GIB = 1 << 30
DOCS = Path(__file__).resolve().parents[2] / "docs" / "comm.md"


def test_ring_simple_one_node_closed_form():
    # base 8.4 us + 2(n-1) x NVLink hwLat 3.4 us; bus bandwidth = NVLink 18 x 20.6 GB/s; alg = bus n / 2(n-1)
    c = nccl.predict(DGX_H100, 8, 8 * GIB, "nccl_ring", "Simple")
    assert c.latency_s == pytest.approx((8.4 + 14 * 3.4) * 1e-6)
    assert c.bandwidth_bytes_per_s == pytest.approx(370.8e9 * 8 / 14)
    assert c.time_s == pytest.approx(c.latency_s + 8 * GIB / c.bandwidth_bytes_per_s)
    assert c.bus_bandwidth_bytes_per_s == pytest.approx(8 * GIB / c.time_s * 14 / 8)
    # LL: half the bus bandwidth, capped at llMaxBws[Hopper][1 node] = 141 GB/s; base 6.6 + 14 x 0.6
    ll = nccl.predict(DGX_H100, 8, 8, "nccl_ring", "LL")
    assert ll.latency_s == pytest.approx((6.6 + 14 * 0.6) * 1e-6)
    assert ll.bandwidth_bytes_per_s == pytest.approx(141e9 * 8 / 14)


def test_tree_ll_multi_node_closed_form():
    # 32 nodes x 8 A100: 6.8 + 2 ((8 - 1) 0.6 + log2(32) 5.0) = 65.2 us (nccl#652 measured 62.99 us)
    c = nccl.predict(A100_HDR, 256, 8, "tree", "LL")
    assert c.latency_s == pytest.approx(65.2e-6)
    # bus: min(4 NICs x 25 GB/s, 240) x 0.92 = 92 (under 8 x 17.8); LL: min(92 / 3.8, llMaxBws[Intel][3+ nodes] 20.4)
    assert c.bandwidth_bytes_per_s == pytest.approx(20.4e9 * 0.5)
    # the tree correction factor applies by log2(bytes / 64): 64 KiB -> index 10, LL 0.6
    big = nccl.predict(A100_HDR, 256, 64 << 10, "tree", "LL")
    assert big.bandwidth_bytes_per_s == pytest.approx(20.4e9 * 0.5 * 0.6)


def test_ring_across_nodes_network_overhead_and_plateau():
    net = A100_HDR  # cc 80: plateau factor 1.4
    c = nccl.predict(net, 16, 1 << 26, "nccl_ring", "Simple")
    # 2 nodes: 2 inter steps at NET hwLat 14 us; 28 intra steps at max(3.4, 3 x 1 us Intel overhead) = 3.4 us
    assert c.latency_s == pytest.approx((8.4 + 28 * 3.4 + 2 * 14.0) * 1.4 * 1e-6)
    old = replace(net, compute_capability=70)
    assert nccl.predict(old, 16, 1 << 26, "nccl_ring", "Simple").latency_s == pytest.approx(c.latency_s / 1.4 * 1.9)
    amd = replace(net, cpu_vendor="amd", intra_link="pci")  # PCIe hwLat 1.0 < AMD overhead 2.0 for LL
    ll = nccl.predict(amd, 16, 8, "nccl_ring", "LL")
    assert ll.latency_s == pytest.approx((6.6 + 28 * 2.0 + 2 * 2.7) * 1e-6)


def test_nvls_formulas():
    # one node: intra = bus x nvlsEfficiency(Hopper 0.85) x (16 - 1) / 16 x 2; latency = NVLink hwLat 25 us
    c = nccl.predict(DGX_H100, 8, 8 * GIB, "nvls", "Simple")
    assert c.latency_s == pytest.approx(25e-6)
    assert c.bandwidth_bytes_per_s == pytest.approx(370.8e9 * 0.85 * 15 / 16 * 2 * 8 / 14)
    # NVLS-tree, 2 nodes: 25 + 2 log2(2) x NET 20.9 us; bus min(intra, 2 x 8 NICs x 50 GB/s, 16 x 57.7)
    t = nccl.predict(DGX_H100, 16, 8, "nvls_tree", "Simple")
    assert t.latency_s == pytest.approx((25 + 2 * 20.9) * 1e-6)
    four = nccl.predict(DGX_H100, 32, 8 * GIB, "nvls_tree", "Simple")  # 4 nodes: NICs (400 GB/s) bound
    assert four.bandwidth_bytes_per_s == pytest.approx(400e9 * 32 / 62)


def test_enable_rules_and_selection():
    pci = get_preset("akiba2017").network
    assert ("nccl_ring", "LL128") not in nccl.enabled_pairs(pci, 16)  # LL128 needs NVLink
    no_collnet = replace(DGX_H100, collnet=False)
    pairs = nccl.enabled_pairs(no_collnet, 16)
    assert ("nvls", "Simple") not in pairs and ("nvls_tree", "Simple") in pairs
    assert ("nvls_tree", "Simple") not in nccl.enabled_pairs(DGX_H100, 8)  # NVLS-tree needs >1 node
    assert ("collnet_chain", "Simple") in nccl.enabled_pairs(DGX_H100, 16)
    assert not any(a.startswith("collnet") for a, _ in nccl.enabled_pairs(no_collnet, 16))
    # one DGX H100: LL ring up to 1 MiB, NVLS / Simple from 2 MiB (what nccl-tests#309 reports NCCL picks)
    for nbytes, pair in ((8, ("nccl_ring", "LL")), (1 << 20, ("nccl_ring", "LL")), (2 << 20, ("nvls", "Simple"))):
        c = nccl.select(DGX_H100, 8, nbytes)
        assert (c.algorithm, c.protocol) == pair
    # the selection is the minimum over the enabled pairs
    big = nccl.select(DGX_H100, 64, 1 << 28)
    assert big.time_s == min(
        nccl.predict(DGX_H100, 64, 1 << 28, a, p).time_s for a, p in nccl.enabled_pairs(DGX_H100, 64)
    )
    with pytest.raises(ValueError, match="would not run nvls"):
        nccl.select(pci, 16, 8, "nvls")
    with pytest.raises(ValueError, match="protocol 'LL64' is unknown"):
        nccl.select(DGX_H100, 8, 8, protocol="LL64")
    assert allreduce_cost("auto", DGX_H100, 8, 8).algorithm == "nccl_ring/LL"
    assert allreduce_cost("tree", DGX_H100, 16, 8, protocol="Simple").algorithm == "tree/Simple"
    assert nccl.predict(DGX_H100, 1, 1e9, "tree", "LL").time_s == 0.0


def test_auto_beats_the_latency_bound_ring_at_scale():
    net, d = DGX_H100, 25_557_032 * 2
    assert allreduce_cost("auto", net, 3584, d).time_s < ring(net, 3584, d).time_s / 50


def test_contention_of_an_oversubscribed_fabric():
    abci = get_preset("mikami2018").network  # 34 nodes per rack, 1:3 between racks
    flat = replace(abci, fabric_oversubscription=1.0)
    assert contention_factor(abci, 34, "all") == 1.0 and contention_factor(abci, 35, "all") == 3.0
    assert contention_factor(abci, 544, "ring") == 1.0  # one node per rack boundary: 3 / 34 < 1
    d = 51e6
    # halving/doubling: exchanges at distances of >= 34 nodes (here 64, 128, 256 nodes) pay x 3
    slow, fast = halving_doubling(abci, 2048, d).time_s, halving_doubling(flat, 2048, d).time_s
    nic = 2 * 12.5e9 / 4  # two EDR NICs shared by the 4 GPUs of a node
    extra = sum(2 * d / 2 ** (k + 1) * (3 - 1) / nic for k in (8, 9, 10))  # node distance 2^k / 4 >= 34
    assert slow == pytest.approx(fast + extra)
    assert torus2d(abci, 2176, d).time_s == pytest.approx(torus2d(flat, 2176, d).time_s)  # rings: unchanged
    with pytest.raises(ValueError, match="fabric_oversubscription"):
        replace(abci, fabric_oversubscription=0.5)


def test_ddp_first_bucket_is_torchs():
    assert Workload(compute_s_per_image=1).first_bucket_mb * (1 << 20) == dist._DEFAULT_FIRST_BUCKET_BYTES


def test_presets_name_their_sources():
    for preset in PRESETS.values():
        assert preset.sources.get("compute")
    assert {"h200_dgx", "knl_opa"} <= set(PRESETS)
    assert get_preset("h100_ndr").algorithm == "auto"


def _doc_block(title: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"<!-- {title}: begin -->") + len(f"<!-- {title}: begin -->")
    return text[start : text.index(f"<!-- {title}: end -->")].strip()


def test_validation_tables_in_the_docs_are_what_the_code_computes():
    assert _doc_block("validation runs") == runs_table()
    assert _doc_block("validation compute") == compute_table()
    assert _doc_block("validation collectives") == collectives_table()
    assert len(RUNS) == 8 and len(MICROBENCHMARKS) >= 9
    # the rows say "yes" exactly where the error is within the target, and only counted rows say either
    for line, row in zip(runs_table().splitlines()[2:], run_rows()):
        error = float(re.search(r"\| ([+-][\d.]+) % \|", line).group(1))
        if row.counted:
            assert line.endswith("| yes |") == (abs(error) <= 15.0)
        else:
            assert "not counted: no " in line


def test_the_validation_json_is_what_the_code_computes():
    path = DOCS.parents[1] / RESULTS_JSON
    assert json.loads(path.read_text()) == records()
    rows = records()
    assert {r["mode"] for r in rows} == {"preset", "calibrated"}
    assert all({"run", "mode", "gpus", "published_s", "predicted_s", "inputs"} <= set(r) for r in rows)
    # the 3,584-H100 run evaluates 20 times (its log's eval_start events)
    (big,) = [run for run in RUNS if run.gpus == 3584]
    assert big.evals == 20 and "20 eval_start" in big.source


def test_calibrated_mode_with_goyals_own_baseline():
    # the paper's own 8-GPU rate in place of the preset's compute: the model lands within 15 %
    own = ComputeModel("own", 0.0, GOYAL_OWN_P100_IMAGES_PER_S, mode="calibrated")
    row = predict_run(RUNS[0], compute=own)
    assert row.mode == "calibrated" and abs(row.error) < 0.15
    assert predict_run(RUNS[0]).predicted_s < row.predicted_s  # TensorFlow's P100 is faster than Caffe2's run


def test_network_validation():
    with pytest.raises(ValueError, match="intra_link"):
        Network(
            gpus_per_node=8,
            intra_node_latency_s=1e-6,
            intra_node_bandwidth_bytes_per_s=1e9,
            inter_node_latency_s=1e-6,
            nic_bandwidth_bytes_per_s=1e9,
            intra_link="infiniband",
        )
