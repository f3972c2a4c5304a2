#!/usr/bin/env bash
# The GPU path checked on one NVIDIA GPU (an H200 in the reference run), in one command of at most
# about 8 minutes, writing its results as JSON and its log to OUT_DIR:
#
#   bash benchmarks/gpu_wheels.sh                      # beforehand, where pip reaches PyPI: .whl/, .fmnist/
#   bash benchmarks/gpu_check.sh OUT_DIR [--wheels .whl] [--data .fmnist] [--python python3]   # on the GPU machine
#   bash benchmarks/gpu_check.sh OUT_DIR --cpu         # the CPU dry run: every check that needs no CUDA
#
# Steps (each with its own time limit; a failed step is recorded and the next one still runs):
#   install   pip install --no-index --no-deps of the wheels folder and of this checkout (the machine
#             is offline and has its own torch); skipped with --cpu when the checkout's .venv is used
#   tests     the unit, distributed and CUDA tests (tests/cuda: autocast bf16 / fp16 + loss scaling,
#             the device-side guard under torch.cuda.set_sync_debug_mode("error") for SGD, LARS, LAMB
#             and RMSprop warm-up, nvJPEG against the CPU decoder, NCCL with every comm hook);
#             the code-hygiene tests (ruff, import-linter) are left to CI
#   resnet50  benchmarks/gpu_resnet50.py: the trainer against a bare loop, ResNet-50, 224 px, bf16,
#             channels_last, 256 per GPU, eager and torch.compile, median of 3, peak memory
#   pipeline  benchmarks/data_pipeline.py with decode_on=device on the GPU (nvJPEG) and the CPU ones
#   main_job  the Fashion-MNIST main job (largebatch train, default recipe) on the GPU: time to 91 %
#
# OUT_DIR receives at most 7 files: gpu_check.json (every step's status, wall time and headline
# numbers), gpu_check.log, env.txt, pytest.xml, resnet50.json, data_pipeline.json, main_job_summary.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--cpu] [--wheels DIR] [--data DIR] [--python PYTHON]}
shift
CPU=0
WHEELS=.whl
DATA=.fmnist
PY=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) CPU=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --data) DATA=$2; shift ;;
    --python) PY=$2; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (accepted: --cpu, --wheels DIR, --data DIR, --python PYTHON)" >&2; exit 2 ;;
  esac
  shift
done
# Fashion-MNIST's four IDX files (the GPU machine is offline): --data, else the usual place
if ls "$DATA"/train-images-idx3-ubyte* >/dev/null 2>&1; then export LARGEBATCH_FASHION_MNIST=$(cd "$DATA" && pwd); fi
if [ -z "$PY" ]; then
  if [ $CPU = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
STEPS="$OUT/.steps.jsonl"
: > "$STEPS"

step() {  # step NAME LIMIT_S COMMAND...: run it, record rc and wall time
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s): $*"
  local t0=$(date +%s%N)
  timeout "$limit" "$@"
  local rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((ms / 1000)).$(printf %03d $((ms % 1000)))}" >> "$STEPS"
  echo "=== $name: rc $rc"
  return 0
}

{
  date -u
  nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
  "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('torchvision', torchvision.__version__); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ $CPU = 0 ] || [ "$PY" != ".venv/bin/python" ]; then
  SITE=$(mktemp -d /tmp/largebatch-site.XXXX)
  install() {
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl || return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" . || return 1
  }
  step install 120 install
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
fi

if [ $CPU = 1 ]; then
  DEVICE=cpu
  R50=(--device cpu --image-size 32 --batch 32 --steps 2 --warmup 1 --rounds 1 --compile off)
  PIPE=(--images 200 --rounds 1 --device cpu --data /tmp/largebatch-gpu-check-jpegs)
  JOB=(--nproc 2 --set train.epochs=1 --set train.target_top1=75)
  PYTEST_LIMIT=1500
else
  DEVICE=cuda
  R50=(--device cuda --rounds 3)
  PIPE=(--images 2000 --rounds 3 --device cuda --workers 8 --data /tmp/largebatch-gpu-check-jpegs)
  JOB=(--nproc 1 --set train.device=cuda --set train.target_top1=91)
  PYTEST_LIMIT=240
fi
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)
step tests "$PYTEST_LIMIT" "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests/unit tests/distributed tests/cuda \
  --deselect tests/unit/test_hygiene.py -rs --junitxml "$OUT/pytest.xml"
step resnet50 300 "$PY" benchmarks/gpu_resnet50.py "${R50[@]}" --out "$OUT/resnet50.json"
step pipeline 180 "$PY" benchmarks/data_pipeline.py "${PIPE[@]}" --out "$OUT/data_pipeline.json"
JOBDIR=$(mktemp -d /tmp/largebatch-main-job.XXXX)
step main_job 300 "$PY" -m largebatch train "${JOB[@]}" --out "$JOBDIR/run"
cp "$JOBDIR/run/summary.json" "$OUT/main_job_summary.json" 2>/dev/null

"$PY" - "$OUT" "$DEVICE" <<'PY'
import json, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
steps = [json.loads(line) for line in (out / ".steps.jsonl").read_text().splitlines()]
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
r50, pipe, job = load("resnet50.json"), load("data_pipeline.json"), load("main_job_summary.json")
tests = {}
try:
    import xml.etree.ElementTree as ET
    suite = ET.parse(out / "pytest.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, IndexError):
    pass
summary = {
    "device": device,
    "steps": steps,
    "tests": tests,
    "resnet50_images_per_s": r50 and {k: v["median"] for k, v in r50["images_per_s"].items()},
    "resnet50_trainer_over_bare": r50 and r50["trainer_over_bare"],
    "resnet50_peak_memory_gib": r50 and r50["peak_memory_gib"],
    "pipeline_images_per_s": pipe and {k: v["median"] for k, v in pipe["images_per_s"].items()},
    "main_job": job and {k: job.get(k) for k in ("top1", "best_top1", "time_to_target_s", "wall_s", "images_per_s")},
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
rm -f "$STEPS"
