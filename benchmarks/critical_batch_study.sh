#!/usr/bin/env bash
# The whole validation of `largebatch advise`'s critical batch, in the background and resumable
# (docs/noise_scale.md, "Validation plan"): the probes not yet recorded (plain, then one with --hessian each), the yardstick on the two
# calibration configurations (the report then fits the calibration factor), width16's point at the
# end of warmup (the anchor), the held-out configurations in the plan's order, one more budget doubling for any point
# still unresolved (the amendment of 2026-12-08), then the anchor's two middle points (width16's 1.5x
# check against the steps fit, which width16's own two points already give), a report after each stage. Run the same command
# again to continue; finished probes, reference runs and branches are kept. Each configuration's
# wall and CPU time is appended to benchmarks/results/critical_batch_validation/cpu_time.jsonl.
#
#   setsid nohup bash benchmarks/critical_batch_study.sh > runs/critical_batch_study.log 2>&1 &
#   kill -- -<pid>        # stops it (branches under way checkpoint); the same command continues
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p runs
$PY benchmarks/critical_batch_validation.py probe
$PY benchmarks/critical_batch_validation.py hessian
$PY benchmarks/critical_batch_validation.py measure --only width16 width8
$PY benchmarks/critical_batch_validation.py report
bash benchmarks/critical_batch_anchor.sh warmup
$PY benchmarks/critical_batch_validation.py report
$PY benchmarks/critical_batch_validation.py measure
$PY benchmarks/critical_batch_validation.py report
$PY benchmarks/critical_batch_validation.py resolve
$PY benchmarks/critical_batch_validation.py report
bash benchmarks/critical_batch_anchor.sh
$PY benchmarks/critical_batch_validation.py report
