#!/usr/bin/env bash
# More trials of the steps-to-target study (stage 6/7 of benchmarks/tuned_study.sh: the run's length
# searched too) on one GPU machine that cannot reach the study's storage: every (method, batch) cell
# runs as its own `largebatch sweep --tune` process on the one GPU, each on a copy of the committed
# storage (so its sampler goes on from the trials already there), for a fixed wall time; then the
# copies, the logs and every trial's config.json, summary.json and pruned.json are packed into one
# file for benchmarks/merge_gpu_study.py to add to the committed storage.
#
#   bash benchmarks/gpu_wheels.sh        # beforehand, where pip reaches PyPI: .whl/ and .fmnist/
#   bash benchmarks/gpu_study.sh OUT_DIR [--minutes M] [--cells "nesterov:512,1024 lars:128"] [--trials N]
#                                        [--set KEY=VALUE] [--cpu]   # the dry run here: the checkout's .venv, no
#                                        install (e.g. --set data.train_subset=8192 for trials that finish)
#
# Each cell's process runs trials one after the other with 1 worker (the GPU) and 1 CPU thread, and
# micro-batches of up to 4,096 images (ghost BN of 32 keeps the BN batch of the CPU runs); at the end
# of the wall time it gets SIGTERM, and its running trial checkpoints and stops (left out of the merge).
# OUT_DIR receives: gpu_study.log, env.txt, gpu_study.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu_study.sh OUT_DIR [--minutes M] [--cells CELLS] [--trials N] [--cpu]}
shift
MINUTES=6
TRIALS=40
CPU=0
EXTRA=()
CELLS="nesterov:128,256,512,1024,2048,4096,8192,16384 lars:128,256,512,1024,2048,4096,8192,16384"
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift ;;
    --cells) CELLS=$2; shift ;;
    --trials) TRIALS=$2; shift ;;
    --cpu) CPU=1 ;;
    --set) EXTRA+=(--set "$2"); shift ;;
    *) echo "gpu_study.sh: unknown option $1 (accepted: --minutes M, --cells CELLS, --trials N, --set KEY=VALUE, --cpu)" >&2; exit 2 ;;
  esac
  shift
done
STORAGE=docs/results/tuned_steps_budget/study.db
[ -f "$STORAGE" ] || { echo "gpu_study.sh: $STORAGE not found (run from a checkout of the project)" >&2; exit 2; }
if ls .fmnist/train-images-idx3-ubyte* >/dev/null 2>&1; then export LARGEBATCH_FASHION_MNIST=$PWD/.fmnist; fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_study.log") 2>&1
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/gpu_study.XXXX)

if [ $CPU = 1 ]; then
  PY=.venv/bin/python
else
  PY=python3
  SITE=$WORK/site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 1
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" . || exit 1
  export PYTHONPATH=$SITE
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not available"
  nproc
  "$PY" -c "import sys, torch, optuna, largebatch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'); print('optuna', optuna.__version__, 'largebatch', largebatch.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
grep -q "^torch" "$OUT/env.txt" || { echo "gpu_study.sh: the environment does not import (above)"; exit 1; }

date +%Y-%m-%dT%H:%M:%S > "$WORK/started"  # trials begun after this are the new ones (local time, as Optuna stores)
( nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$WORK/nvidia_smi.csv" 2>/dev/null & echo $! > "$WORK/smi.pid" )
pids=()
for spec in $CELLS; do
  method=${spec%%:*}
  for b in ${spec#*:}; do b=${b//,/ }; for b in $b; do
    cell=${method}_b$b
    cp "$STORAGE" "$WORK/$cell.db"
    timeout -s TERM -k 90 "$((MINUTES * 60))" "$PY" -m largebatch sweep --tune --search-budget --objective steps \
      --methods "$method" --batch-sizes "$b" --epochs 8 --epochs-at 2048=16,4096=32,8192=64,16384=128 \
      --trials "$TRIALS" --target-val-top1 90 --val-size 5000 --nproc 1 \
      --set train.threads_per_worker=1 --set train.max_micro_batch_size=4096 "${EXTRA[@]}" \
      --out "$WORK/runs/$cell" --storage "sqlite:///$WORK/$cell.db" > "$WORK/$cell.log" 2>&1 &
    pids+=($!); done
  done
done
echo "$(date -u +%T) ${#pids[@]} cells running for $MINUTES minutes"
for p in "${pids[@]}"; do wait "$p"; done
kill "$(cat "$WORK/smi.pid")" 2>/dev/null
echo "$(date -u +%T) all cells stopped"
for log in "$WORK"/*.log; do echo "== $(basename "$log")"; grep -E "trial [0-9]+:|seed|interrupted|error|Error" "$log" | tail -40; done
(cd "$WORK" && find runs -name config.json -o -name summary.json -o -name pruned.json | sort > files.txt &&
  tar czf "$OUT/gpu_study.tar.gz" started nvidia_smi.csv ./*.db ./*.log -T files.txt)
ls -l "$OUT"
