"""The cost model against published figures: seven training runs (time to train) and nccl-tests
all-reduce measurements, each recomputed from the presets and networks here, none of whose inputs
was fitted to the figure it is compared with.

``python -m largebatch.sim.validation`` prints the two tables of docs/comm.md ("Validation");
tests/unit/test_sim_nccl.py checks that the file holds exactly what this module computes, so the
table cannot drift from the code. Targets: time to train within 15 %, all-reduce within 25 %
(:data:`RUN_TARGET`, :data:`COLLECTIVE_TARGET`); a row outside its target says so and
docs/comm.md says why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, replace

from largebatch.sim.compute import ComputeModel, Throughput, fit_compute
from largebatch.sim.nccl_tests import (  # noqa: F401 (re-exported: the validation's names in one place)
    A100_HDR,
    COLLECTIVE_TARGET,
    DGX_H100,
    MICROBENCHMARKS,
    CollectiveRow,
    Compared,
    Microbenchmark,
    collectives_table,
    format_time,
    predict_collective,
)
from largebatch.sim.presets import (
    COMPUTE_MODELS,
    GOYAL_OWN_P100_IMAGES_PER_S,
    MLPERF_V06,
    MLPERF_V07,
    MLPERF_V30,
    MLPERF_V40,
    get_preset,
)
from largebatch.sim.step import simulate_step

RUN_TARGET = 0.15
IMAGENET_VAL_IMAGES = 50_000


@dataclass(frozen=True)
class PublishedRun:
    """A published time to train. ``phases``: (per-GPU batch, epochs) in order. ``evals``: number
    of evaluations of the 50,000 validation images inside the timed interval (MLPerf counts them;
    one evaluation is a forward pass of ceil(50,000 / GPUs) images per GPU, a third of a training
    step of that batch [assumption: forward only, the fixed cost included]). ``timed_fixed_s``: the
    start-up inside the timed interval (MLPerf: ``run_start`` to the first ``block_start``, plus the
    first evaluation's extra time over a later one), taken from another run of the same software
    stack (``timed_fixed_source``). ``missing_input``: the input with no independent published
    figure (the row is listed, not counted against the target); empty when every input has one."""

    name: str
    source: str
    preset: str
    gpus: int
    phases: tuple[tuple[int, float], ...]
    published_s: float
    evals: int = 0
    timed_fixed_s: float = 0.0
    timed_fixed_source: str = ""
    missing_input: str = ""


# MLPerf's timed start-up, from runs of the same stack that are not validated here (median of the five
# result files; run_start to the first block_start, plus the first eval_start..eval_stop minus the median one)
V30_MULTINODE_STARTUP_S = 0.778 + (0.056 - 0.010)
V30_MULTINODE_STARTUP = (
    f"{MLPERF_V30} NVIDIA/results/dgxh100_n96_ngc23.04_mxnet/resnet/result_[0-4].txt: run_start to the first "
    "block 0.741-0.866 s (median 0.778), first eval 0.056-0.060 s, later evals 0.009-0.010 s"
)
V40_SINGLENODE_STARTUP_S = 0.761 + (0.869 - 0.332)
V40_SINGLENODE_STARTUP = (
    f"{MLPERF_V40} NVIDIA/results/eos_ngc24.04_mxnet/resnet/result_0.txt: run_start to the first block 0.761 s, "
    "first eval 0.869 s, later evals 0.332 s"
)

RUNS = (
    PublishedRun(
        "Goyal et al. 2017, 256 P100, 8k, 90 epochs",
        "Goyal et al. 2017 abstract and sec. 5 (~1 h)",
        "goyal2017",
        256,
        ((32, 90),),
        3600.0,
    ),
    PublishedRun(
        "Akiba et al. 2017, 1024 P100, 32k, 90 epochs",
        "Akiba et al. 2017 abstract (15 min)",
        "akiba2017",
        1024,
        ((32, 90),),
        900.0,
    ),
    PublishedRun(
        "Mikami et al. 2018 v1, 2176 V100, 34k -> 68k",
        "Mikami et al. 2018 v1 abstract (224 s); 16 per GPU for 5 epochs, then 32 [S]; 90 epochs [U]",
        "mikami2018",
        2176,
        ((16, 5), (32, 85)),
        224.0,
        missing_input="NNL 2018's V100 rate at 16-32 per GPU (MXNet's stands in)",
    ),
    PublishedRun(
        "Mikami et al. 2018 v2, 3456 V100",
        "Mikami et al. 2018 v2 abstract (122 s); batch schedule as v1 [assumption], 90 epochs [U]",
        "mikami2018",
        3456,
        ((16, 5), (32, 85)),
        122.0,
        missing_input="NNL 2018's V100 rate at 16-32 per GPU (MXNet's stands in)",
    ),
    PublishedRun(
        "You et al. 2018, 2048 KNL, 32k, 90 epochs",
        "You et al. 2018 (ICPP) abstract (20 min); 16 per KNL (32k / 2048)",
        "knl_opa",
        2048,
        ((16, 90),),
        1200.0,
        missing_input="Intel Caffe's Xeon Phi 7250 ResNet-50 rate at any batch (a peak-FLOPs scaling stands in)",
    ),
    PublishedRun(
        "MLPerf v3.0 NVIDIA+CoreWeave, 3584 H100, 57,344, 77 epochs",
        f"{MLPERF_V30} NVIDIA_CoreWeave/results/coreweave_hgxh100_n448_ngc23.04_mxnet/resnet/result_0.txt "
        "(run_start to run_stop; 20 eval_start events)",
        "h100_ndr",
        3584,
        ((16, 77),),
        10.961,
        evals=20,
        timed_fixed_s=V30_MULTINODE_STARTUP_S,
        timed_fixed_source=V30_MULTINODE_STARTUP,
    ),
    PublishedRun(
        "MLPerf v3.0 NVIDIA, 64 H100, 3,200, 35 epochs",
        f"{MLPERF_V30} NVIDIA/results/dgxh100_n8_ngc23.04_mxnet/resnet/result_0.txt (run_start to run_stop)",
        "h100_ndr",
        64,
        ((50, 35),),
        159.917,
        evals=9,
        timed_fixed_s=V30_MULTINODE_STARTUP_S,
        timed_fixed_source=V30_MULTINODE_STARTUP,
    ),
    PublishedRun(
        "MLPerf v4.0 NVIDIA, 8 H200, 3,200, 35 epochs",
        f"{MLPERF_V40} NVIDIA/results/h200_ngc24.04_mxnet/resnet/result_0.txt (run_start to run_stop)",
        "h200_dgx",
        8,
        ((400, 35),),
        721.149,
        evals=9,
        timed_fixed_s=V40_SINGLENODE_STARTUP_S,
        timed_fixed_source=V40_SINGLENODE_STARTUP,
    ),
)

GOYAL_OWN_BASELINE = ComputeModel(
    "Goyal et al. 2017's own 8-GPU baseline",
    0.0,
    GOYAL_OWN_P100_IMAGES_PER_S,
    (Throughput(32, GOYAL_OWN_P100_IMAGES_PER_S, "Goyal et al. 2017 sec. 1: 90 epochs at 8 x 32 in 29 h"),),
    mode="calibrated",
)
"""Calibrated mode as a user would run it: the paper's own one-server throughput (8 P100 at 32 per
GPU, 138.1 images/s per GPU) in place of the preset's compute; one point, at the run's own per-GPU
batch, so the split between fixed and per-image cost does not enter."""
CALIBRATED = ((RUNS[0], GOYAL_OWN_BASELINE),)
"""Runs whose paper publishes its own single-node baseline, with that baseline as the user's measurement."""


@dataclass(frozen=True)
class RunRow(Compared):
    run: PublishedRun
    algorithm: str
    predicted_s: float
    mode: str = "preset"
    compute: ComputeModel | None = None
    target = RUN_TARGET

    def _published_s(self) -> float:
        return self.run.published_s

    @property
    def counted(self) -> bool:
        """Whether the row counts against the target (every input independent and published)."""
        return not self.run.missing_input

    def inputs(self) -> list[str]:
        """The sources of the prediction's inputs: compute points, start-up, the preset's network."""
        preset = get_preset(self.run.preset)
        out = [
            f"compute ({self.compute.name}): {p.per_gpu_batch:g} per GPU -> {p.images_per_s:,.1f} images/s, {p.source}"
            for p in self.compute.points
        ]
        if self.mode == "preset" and "compute" in preset.sources:
            out.append(f"compute: {preset.sources['compute']}")
        if self.run.timed_fixed_source:
            out.append(f"timed start-up {self.run.timed_fixed_s:.3f} s: {self.run.timed_fixed_source}")
        out.append(f"network: preset {preset.name} ({preset.description})")
        if self.run.missing_input:
            out.append(f"missing: {self.run.missing_input}")
        return out


def predict_run(run: PublishedRun, algorithm: str | None = None, compute: ComputeModel | None = None) -> RunRow:
    """Predicted time to train of ``run`` with its preset (``algorithm``: the preset's own by default;
    ``compute``: the preset's t(b) by default, or the user's own: calibrated mode). Training steps
    from :func:`largebatch.sim.step.simulate_step` per phase, plus the evaluations (forward passes)
    and the timed start-up of :class:`PublishedRun`."""
    preset = get_preset(run.preset)
    mode = "preset" if compute is None else "calibrated"
    compute = compute or preset.compute
    preset = replace(preset, compute=compute)
    algorithm = algorithm or preset.algorithm
    options = dict(preset.hierarchical) if algorithm == "hierarchical" else {}
    total, choice = 0.0, ""
    for batch, epochs in run.phases:
        step = simulate_step(preset.network, preset.workload(batch), run.gpus, algorithm, **options)
        total += step.train_s(epochs)
        choice = choice or step.choice
    eval_batch = math.ceil(IMAGENET_VAL_IMAGES / run.gpus)
    total += run.evals * compute.step_s(eval_batch) / 3 + run.timed_fixed_s
    return RunRow(run, f"{algorithm} ({choice})" if choice else algorithm, total, mode, compute)


def run_rows() -> list[RunRow]:
    """Every published run in preset mode, then the calibrated-mode rows (:data:`CALIBRATED`)."""
    return [predict_run(run) for run in RUNS] + [predict_run(run, compute=c) for run, c in CALIBRATED]


def records() -> list[dict]:
    """The rows of :func:`run_rows` as ``benchmarks/results/cost_model_validation.json`` holds them:
    ``run``, ``mode``, ``gpus``, ``published_s``, ``predicted_s``, ``inputs``, and ``error``,
    ``within_target``, ``counted`` (False where an input has no independent published figure)."""
    return [
        {
            "run": row.run.name,
            "mode": row.mode,
            "gpus": row.run.gpus,
            "published_s": row.run.published_s,
            "predicted_s": round(row.predicted_s, 4),
            "error": round(row.error, 4),
            "within_target": row.met,
            "counted": row.counted,
            "inputs": row.inputs(),
        }
        for row in run_rows()
    ]


# --- compute: t(b) against measurements it was not fitted on ---------------------------------------


@dataclass(frozen=True)
class ComputeCheck:
    """One published per-GPU throughput at a per-GPU batch that the named t(b) was not fitted on."""

    name: str
    model: ComputeModel
    point: Throughput

    @property
    def predicted(self) -> float:
        return self.model.images_per_s(self.point.per_gpu_batch)

    @property
    def error(self) -> float:
        return self.predicted / self.point.images_per_s - 1


def _checks() -> tuple[ComputeCheck, ...]:
    dgx2h = fit_compute(
        [
            Throughput(208, 24637.6 / 16, f"{MLPERF_V06} NVIDIA/results/dgx2h_ngc19.05_mxnet/resnet/result_0.txt"),
            Throughput(
                39, 1.63519e6 / 1536, f"{MLPERF_V06} NVIDIA/results/dgx2h_n96_ngc19.05_mxnet/resnet/result_0.txt"
            ),
        ],
        "V100 DGX-2H, MXNet NGC 19.05",
    )
    a100 = fit_compute(
        [
            Throughput(408, 22522.1 / 8, f"{MLPERF_V07} NVIDIA/results/dgxa100_ngc20.06_mxnet/resnet/result_0.txt"),
            Throughput(
                45, 1.26598e6 / 768, f"{MLPERF_V07} NVIDIA/results/dgxa100_n96_ngc20.06_mxnet/resnet/result_0.txt"
            ),
        ],
        "A100, MXNet NGC 20.06",
    )
    return (
        ComputeCheck(
            "V100 DGX-2H: 512 GPUs at 65",
            dgx2h,
            Throughput(65, 636605 / 512, f"{MLPERF_V06} NVIDIA/results/dgx2h_n32_ngc19.05_mxnet/resnet/result_0.txt"),
        ),
        ComputeCheck(
            "A100: 16 GPUs at 204",
            a100,
            Throughput(204, 37446.8 / 16, f"{MLPERF_V07} NVIDIA/results/dgxa100_n2_ngc20.06_mxnet/resnet/result_0.txt"),
        ),
        ComputeCheck(
            "H100 v3.0 fit: 512 GPUs at 40 (v3.0)",
            COMPUTE_MODELS["h100_mxnet_v30"],
            Throughput(
                40, 2.24964e6 / 512, f"{MLPERF_V30} NVIDIA/results/dgxh100_n64_ngc23.04_mxnet/resnet/result_4.txt"
            ),
        ),
        ComputeCheck(
            "H100 v3.0 fit: 2,528 GPUs at 16 (v4.0)",
            COMPUTE_MODELS["h100_mxnet_v30"],
            Throughput(16, 6.8826e6 / 2528, f"{MLPERF_V40} NVIDIA/results/eos_n316_ngc24.04_mxnet/resnet/result_0.txt"),
        ),
    )


COMPUTE_CHECKS = _checks()
"""Unfitted checks of the t(b) form: per-GPU images/s (median of the log's ``tracked_stats``)
predicted by a fit on two other runs of the same GPU and stack."""


def compute_table() -> str:
    """The markdown table of :data:`COMPUTE_CHECKS` (docs/comm.md)."""
    lines = [
        "| Check | Fitted on (b -> img/s per GPU) | t0 | x_max | Published | Predicted | Error |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in COMPUTE_CHECKS:
        fitted = ", ".join(f"{p.per_gpu_batch:g} -> {p.images_per_s:,.0f}" for p in c.model.points)
        lines.append(
            f"| {c.name} | {fitted} | {c.model.t0_s * 1e3:.2f} ms | {c.model.x_max_images_per_s:,.0f} | "
            f"{c.point.images_per_s:,.0f} | {c.predicted:,.0f} | {100 * c.error:+.1f} % |"
        )
    return "\n".join(lines)


def runs_table() -> str:
    """The markdown table of :func:`run_rows` (docs/comm.md)."""
    lines = [
        "| Published run | Mode | Published | Algorithm (NCCL's choice) | Compute at the run's per-GPU batch | Predicted "
        "| Error | Within 15 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in run_rows():
        batch = row.run.phases[-1][0]
        verdict = ("yes" if row.met else "**no**") if row.counted else f"not counted: no {row.run.missing_input}"
        lines.append(
            f"| {row.run.name} | {row.mode} | {format_time(row.run.published_s)} | {row.algorithm} | "
            f"{row.compute.images_per_s(batch):,.0f} img/s at {batch} | {format_time(row.predicted_s)} | "
            f"{100 * row.error:+.1f} % | {verdict} |"
        )
    return "\n".join(lines)


RESULTS_JSON = "benchmarks/results/cost_model_validation.json"


def main(argv: list[str] | None = None) -> None:
    """Print both tables; write :func:`records` to ``--json`` (default :data:`RESULTS_JSON`, when
    its folder exists under the current directory, as in a clone of the repository)."""
    ap = argparse.ArgumentParser(prog="python -m largebatch.sim.validation", description=main.__doc__)
    ap.add_argument("--json", default=None, help=f"write the run rows here (default {RESULTS_JSON} in a clone)")
    args = ap.parse_args(argv)
    print(runs_table())
    print()
    print(compute_table())
    print()
    print(collectives_table())
    path = args.json or (RESULTS_JSON if os.path.isdir(os.path.dirname(RESULTS_JSON)) else None)
    if path:
        with open(path, "w") as f:
            f.write(json.dumps(records(), indent=1) + "\n")
        print(f"\n# run rows: {path}")


if __name__ == "__main__":
    main()
