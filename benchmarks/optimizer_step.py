"""Optimizer step time on the full parameter set of torchvision resnet50 (25.6M parameters).

Question: what does the layer-wise adaptation of LARS and LAMB, and Akiba's RMSprop blend, cost per
step against the floor (torch.optim.SGD with momentum, foreach) and against the peer (timm's Lars
and Lamb)? Target (issue 3): at most 1.5x the SGD step, and faster than timm's.

Method: resnet50's parameters split by our param-group policy (decay/adapt for conv and FC
weights, no_decay/no_adapt for BN and biases), random gradients, fp32 on the CPU with all cores.
timm gets the same two groups (its Lars adapts only groups with weight decay, which is the same
split; its Lamb is run with max_grad_norm=None so it does the same work as ours, no global
clipping). Before every step the gradients are restored from a saved copy, outside the timed
region: timm's Lars scales ``p.grad`` in place, so without the restore its gradients would shrink
step after step and every variant would not be timed on the same input. Each step is timed on its
own; variants are interleaved round by round; 3 warm-up steps, then ROUNDS rounds of STEPS steps;
median and range of the per-step time; ratios of medians in this one run.

Two floors: torch.optim.SGD with foreach=True (the issue's floor) and with foreach=False (torch's
own CPU default, about 3x faster on CPU; see largebatch/optim/_common.py for why). Our optimizers
run with their defaults (the single-tensor path on CPU) and, for reference, with foreach=True.
torch.optim.Adam (single-tensor; coupled L2 decay where Lamb's is decoupled, the same work) shows
what Lamb costs over the Adam moments it is built on.

    python benchmarks/optimizer_step.py [--rounds 5] [--steps 5] [--out benchmarks/results/optimizer_step.json]

timm is not a project dependency: `pip install timm` to include it (it is skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from _machine import cpu_model

import largebatch
from largebatch.optim import param_groups
from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.rmsprop_warmup import RMSpropWarmup

FLOOR = "torch SGD momentum (foreach=True), the floor"
SINGLE_FLOOR = "torch SGD momentum (foreach=False)"


def make_groups(model):
    return param_groups(model, weight_decay=1e-4)


def variants():
    out = {
        FLOOR: lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, foreach=True),
        SINGLE_FLOOR: lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, foreach=False),
        "torch Adam (foreach=False), Lamb without the trust ratio": lambda g: torch.optim.Adam(
            g, lr=0.01, foreach=False
        ),
        "largebatch Lars": lambda g: Lars(g, lr=10.0, momentum=0.9),
        "largebatch Lamb": lambda g: Lamb(g, lr=0.01),
        "largebatch RMSpropWarmup": lambda g: RMSpropWarmup(g, lr=3.2, steps_per_epoch=100),
        "largebatch Lars (foreach)": lambda g: Lars(g, lr=10.0, momentum=0.9, foreach=True),
        "largebatch Lamb (foreach)": lambda g: Lamb(g, lr=0.01, foreach=True),
        "largebatch RMSpropWarmup (foreach)": lambda g: RMSpropWarmup(g, lr=3.2, steps_per_epoch=100, foreach=True),
    }
    try:
        from timm.optim import Lamb as TimmLamb
        from timm.optim import Lars as TimmLars

        out["timm Lars"] = lambda g: TimmLars(g, lr=10.0, momentum=0.9)
        out["timm Lamb"] = lambda g: TimmLamb(g, lr=0.01, max_grad_norm=None)
    except ImportError:
        print("timm not installed: peer rows skipped (pip install timm)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/optimizer_step.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    built = {}
    for name, make in variants().items():
        model = torchvision.models.resnet50()
        groups = make_groups(model)
        for g in groups:  # keep only what torch.optim and timm accept
            g.pop("param_names")
            g.pop("group_name")
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        saved = [p.grad.clone() for p in params]
        built[name] = (make([dict(g) for g in groups]), [p.grad for p in params], saved)
    n_params = sum(p.numel() for p in torchvision.models.resnet50().parameters())

    def timed_step(opt, grads, saved) -> float:
        torch._foreach_copy_(grads, saved)
        t0 = time.perf_counter()
        opt.step()
        return time.perf_counter() - t0

    for opt, grads, saved in built.values():
        for _ in range(3):
            timed_step(opt, grads, saved)
    times = {name: [] for name in built}
    for _ in range(args.rounds):
        for name, (opt, grads, saved) in built.items():
            times[name] += [timed_step(opt, grads, saved) for _ in range(args.steps)]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rows = []
    for name, ts in times.items():
        rows.append(
            {
                "optimizer": name,
                "median_step_ms": 1e3 * med[name],
                "min_step_ms": 1e3 * min(ts),
                "max_step_ms": 1e3 * max(ts),
                "ratio_to_sgd_foreach": med[name] / med[FLOOR],
                "ratio_to_sgd_single_tensor": med[name] / med[SINGLE_FLOOR],
            }
        )
        print(
            f"{name:40s} {1e3 * med[name]:8.1f} ms  [{1e3 * min(ts):.1f}, {1e3 * max(ts):.1f}]"
            f"  x{med[name] / med[FLOOR]:.2f} of SGD foreach, x{med[name] / med[SINGLE_FLOOR]:.2f} of SGD single"
        )
    peers = {}
    for ours, peer in (("largebatch Lars", "timm Lars"), ("largebatch Lamb", "timm Lamb")):
        if peer in med:
            peers[f"{ours} / {peer}"] = med[ours] / med[peer]
            print(f"{ours} / {peer}: {med[ours] / med[peer]:.2f}")
    cpu = cpu_model()
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    result = {
        "benchmark": "optimizer_step",
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm_version,
        "largebatch": largebatch.__version__,
        "config": {
            "model": "torchvision resnet50",
            "parameters": n_params,
            "dtype": "float32",
            "groups": "decay/adapt (conv+fc weights), no_decay/no_adapt (BN, biases)",
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "gradients": "restored before each step, outside the timed region",
        },
        "results": rows,
        "ours_over_peer": peers,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
