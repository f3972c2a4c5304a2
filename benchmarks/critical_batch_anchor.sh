#!/usr/bin/env bash
# The branching yardstick (`largebatch critical-batch`) on the 28-px ResNet-8 recipe, the model of the
# tuned study whose steps-to-target fit gave B_noise = 394 +- 80 (docs/results.md): a reference run
# to epoch 4 with checkpoints at epochs 1, 2, 3 and 4 (the first LR decay is at 4.5), then from the
# checkpoints at epochs 2 and 3 (1 and 4 are width16's validation points), at batches 128-2,048, an LR grid on seed 0 at 16,384 images and branches of 4,096-32,768
# images on seeds 0 and 1 at the winning LR, every branch decaying its LR linearly to 0.
#
# Resumable and meant for the background: a finished reference run and every finished branch are
# kept; run the same command again to continue. About 50 branches per point, 30-40 minutes of both
# cores per point on the AVX2 VM. The report goes to $OUT/critical_batch.{json,md} (rewritten after
# each point) and is copied to benchmarks/results/critical_batch_anchor/ when complete; progress.txt
# there lists the finished branches.
#
# Every run is fp32 (width16's validation points were measured on an AVX2 VM, where
# train.precision=auto is fp32), whatever the CPU kind.
#
# With the argument `warmup` it measures one more point instead, at the end of warmup (step 54), from
# a second run of the recipe stopped there; its report goes to benchmarks/results/critical_batch_anchor/warmup_point/.
#
#   bash benchmarks/critical_batch_anchor.sh [warmup]   # PY=... RUN=... OUT=... to move things
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/critical_batch_anchor/reference}
OUT=${OUT:-runs/critical_batch_anchor/branches}
RUN_WARMUP=runs/critical_batch_anchor/reference_warmup
OUT_WARMUP=runs/critical_batch_anchor/branches_warmup
RESULTS=benchmarks/results/critical_batch_anchor
mkdir -p "$RESULTS"
progress() {
  find "$OUT" "$OUT_WARMUP" -name summary.json 2>/dev/null | sed "s|^runs/critical_batch_anchor/||; s|/summary.json$||" \
    | sort > "$RESULTS/progress.txt" || true
}
trap progress EXIT
if [ "${1:-}" = warmup ]; then
  # The point at the end of warmup (step 54), from a run of the same recipe and seed stopped there:
  # whether the steps fit's lower value comes from the start of the run, which the other points skip.
  if [ ! -f "$RUN_WARMUP/summary.json" ]; then
    rm -rf "$RUN_WARMUP"  # a few minutes: an unfinished one starts again
    $PY -m largebatch train --recipe goyal2017_fashion_mnist_28px --out "$RUN_WARMUP" \
      --set data.val_size=5000 --set train.precision=fp32 --set train.checkpoint_every_steps=54 --set train.keep_checkpoints=5 \
      --set train.stop_after_images=$((54 * 512)) --set train.eval_every_epochs=100
  fi
  $PY -m largebatch critical-batch "$RUN_WARMUP" --out "$OUT_WARMUP" --steps 54 \
    --batch-sizes 128,256,512,1024,2048 --budget-images 32768 --nproc 1 --parallel 2 --set train.precision=fp32
  mkdir -p "$RESULTS/warmup_point"
  cp "$OUT_WARMUP/critical_batch.json" "$OUT_WARMUP/critical_batch.md" "$RESULTS/warmup_point/"
  exit 0
fi
if [ ! -f "$RUN/summary.json" ]; then
  resume=()
  [ -d "$RUN/checkpoints" ] && resume=(--resume auto)
  $PY -m largebatch train --recipe goyal2017_fashion_mnist_28px --out "$RUN" "${resume[@]}" \
    --set data.val_size=5000 --set train.precision=fp32 --set train.checkpoint_every_steps=107 --set train.keep_checkpoints=50 \
    --set train.stop_after_images=$((428 * 512)) --set train.eval_every_epochs=100
fi
# steps 107 and 428 are width16's validation points (benchmarks/results/critical_batch_validation/
# measured/width16.json); the anchor check (critical_batch_validation.py anchor) merges them in
$PY -m largebatch critical-batch "$RUN" --out "$OUT" --steps 214,321 \
  --batch-sizes 128,256,512,1024,2048 --budget-images 32768 --nproc 1 --parallel 2 --set train.precision=fp32
cp "$OUT/critical_batch.json" "$OUT/critical_batch.md" "$RESULTS/"
