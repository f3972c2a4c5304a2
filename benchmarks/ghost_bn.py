"""Ghost-BN step-time overhead: one training step of the default model with per-group BN (groups of
32) against plain BN over the whole per-worker batch, and two ways of computing the groups.

Question: what does the faithful per-worker BN (Goyal et al. sec. 2.3, n = 32) cost on a CPU worker?
Target (issue 2): ghost-BN step <= 1.25x the plain-BN step.

Method: the default recipe's model (resnet_fmnist, width 16, channels_last), one process with one
thread (as each of the 2 workers of the main job runs), per-worker batch 256 (512 / 2 workers),
forward + backward + SGD step. Variants are interleaved round by round so drift hits all equally;
5 warm-up steps, then ROUNDS rounds of STEPS steps; we report median and spread of per-step time
and ratios of medians measured in this one run.

    python benchmarks/ghost_bn.py [--rounds 7] [--steps 10] [--out benchmarks/results/ghost_bn.json]
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
import torch.nn.functional as F
import torchvision
from _machine import cpu_model

import largebatch
from largebatch.nn import GhostBatchNorm2d, build_model


class FoldedGhostBN(GhostBatchNorm2d):
    """Alternative: one batch_norm call over a (n, G*C, H, W) fold of the batch (two extra copies)."""

    def forward(self, x):
        n = self.bn_batch_size
        if not self.training or n == 0 or x.shape[0] == n:
            return super().forward(x)
        g = x.shape[0] // n
        c = x.shape[1]
        self.num_batches_tracked.add_(1)
        rm = self.running_mean.repeat(g)
        rv = self.running_var.repeat(g)
        xf = x.view(g, n, c, *x.shape[2:]).transpose(0, 1).reshape(n, g * c, *x.shape[2:])
        y = F.batch_norm(xf, rm, rv, self.weight.repeat(g), self.bias.repeat(g), True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(rm.view(g, c).mean(0))
            self.running_var.copy_(rv.view(g, c).mean(0))
        return y.view(n, g, c, *x.shape[2:]).transpose(0, 1).reshape(x.shape)


def make(variant: str):
    torch.manual_seed(0)
    bn = 0 if variant == "plain BN (1 group of 256)" else 32
    model = build_model("resnet_fmnist", num_classes=10, in_channels=1, bn_batch_size=bn)
    if variant.startswith("folded"):
        for _name, m in list(model.named_modules()):
            for child_name, child in list(m.named_children()):
                if isinstance(child, GhostBatchNorm2d):
                    new = FoldedGhostBN(child.num_features, bn_batch_size=32)
                    new.load_state_dict(child.state_dict())
                    setattr(m, child_name, new)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    return model, opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/ghost_bn.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [
        "plain BN (1 group of 256)",
        "ghost BN, loop over 8 groups of 32 (default)",
        "folded ghost BN, 1 call over 8 groups of 32",
    ]
    x = torch.randn(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    built = {v: make(v) for v in variants}

    def step(model, opt):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for v in variants:
        for _ in range(5):
            step(*built[v])
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(*built[v])
            times[v].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times[variants[0]])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        rows.append(
            {
                "variant": v,
                "median_step_ms": 1e3 * med,
                "min_step_ms": 1e3 * min(times[v]),
                "max_step_ms": 1e3 * max(times[v]),
                "ratio_to_plain_bn": med / base,
            }
        )
        print(
            f"{v:48s} median {1e3 * med:7.1f} ms/step  [{1e3 * min(times[v]):.1f}, {1e3 * max(times[v]):.1f}]  "
            f"x{med / base:.3f} of plain BN"
        )
    cpu = cpu_model()
    result = {
        "benchmark": "ghost_bn",
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "largebatch": largebatch.__version__,
        "config": {
            "model": "resnet_fmnist width 16 channels_last",
            "per_worker_batch": args.batch,
            "bn_batch_size": 32,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
        },
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
