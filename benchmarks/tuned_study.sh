#!/usr/bin/env bash
# The tuned large-batch study of docs/results.md, in the order it is being measured. Every command is
# resumable: finished trials live in the Optuna storage (SQLite files under docs/results/) and are
# not run again; a trial interrupted by SIGTERM or Ctrl-C (exit 75) is retried from its checkpoint.
# Run it from the repository root on an otherwise idle machine, in the background:
#
#   nohup bash benchmarks/tuned_study.sh > runs/tuned_study.log 2>&1 &
#
# Stages (STAGES="1 3" runs only those). CPU cost on the 2-core VM, measured or estimated from the
# trials run so far (3-6 CPU-minutes per 8-epoch trial at 256-2048, 6-7 at 4096-8192):
#   1  steps to 90% val, Goyal / Nesterov / LARS, 256-8192, 8 epochs         (Goyal, Nesterov done: 2.4 core-h)
#   2  the same with more epochs at the large batches, to locate the bend    (~6 core-h; Nesterov 2048 done,
#      4096 run 0 checkpointed at step 390 of 416 after ~1 h niced and shared, 2026-12-03)
#   3  steps to 90% val, LAMB / Akiba / Mikami / ablations, 256-8192         (done: 85 trial runs, 4.4 core-h)
#   4p equal epochs (16): Goyal/Nesterov at 256, 4096, 8192 and LARS at 4096, 8192, 3 trials each
#      (done: 23 trials, 2.6 h wall on both cores, 2026-12-03)
#   4q the same at 512-2048 (Goyal, Nesterov) and 256-2048 (LARS), 3 trials each
#      (4q and 4x done: 31 trials, 2.9 core-h, 2026-12-04)
#   4x the same at 16,384 (64x) for Goyal's rule, Nesterov and LARS, 3 trials each
#   4y 8 trials (5 more) for Nesterov and LARS at 4,096, 8,192 and 16,384, equal epochs
#      (done: 30 trials, 43 min on both cores, 2026-12-04)
#   4z Nesterov at 4,096-16,384 with the LR searched in [0.001, 1] per 256 and 1 - momentum in
#      [0.001, 0.2] (--search-range), 6 trials each, storage tuned_epochs_e16_wide
#      (done: 18 trials, 43 min on both cores, 2026-12-05)
#   4w LARS at 256 with the LR searched in [1, 300] per 256 (its chosen 28.0 sat at the top of [0.1, 30]),
#      3 trials, storage tuned_epochs_e16_wide (done: 8 minutes on both cores, 2026-12-05)
#   4m LAMB, Akiba and Mikami at equal epochs, 256 and 2,048-8,192, 3 trials each (~4 core-h;
#      done: LAMB in 34 min, Akiba and Mikami in 62 min on both cores, 2026-12-05)
#   4k Mikami at 4,096 and 8,192 to 6 trials each, and at 16,384, 3 trials (done: 14 min on both
#      cores, 2026-12-05)
#   4s a second seed of the chosen trial of every equal-epochs batch (done: 7 runs, 2026-12-05)
#   4  equal epochs (16), test top-1 per method, 256-8192                     (~12 core-h)
#   5  a second seed of every chosen trial of stages 1 and 3                  (done: 30 runs, 1.6 core-h)
#   6  steps to 90% val with each trial's length searched too (--search-budget), Nesterov 128-8192,
#      6 trials per cell: with a fixed length per batch the steps to target fall on the step schedule's
#      decay points (docs/results.md), so the length is retuned as Shallue et al. retune the decay
#   6x Nesterov at 16,384 with the length searched up to 128 epochs, 4 trials (done: 0.6 core-h; none
#      reached 90%: its LR range sits above what works there, docs/results.md)
#   7  stage 6 for LARS, then a second seed of both methods' chosen trials (all done but LARS 8,192: 2 of
#      its 6 trials, the third checkpointed in in_progress, 2026-12-05)
#   7x LARS at 16,384 with the length searched up to 128 epochs, 4 trials (as 6x for Nesterov)
#   8  a second seed of the trial each Nesterov cell's fewest steps come from, over all three steps
#      studies (`largebatch study-report` of them): 512 and 1,024 from stage 1, 2,048-8,192 from
#      stage 2, 128 and 256 from stage 6 (about 1 core-hour)
#   9  below the issue's range, to find where the steps still halve: Nesterov at 32 and 64 with the
#      length searched, 1 worker per trial (a worker of a batch of 32 must hold the BN batch of 32),
#      16 trials per cell (the first 6 of each: about 15 CPU-minutes, 2026-12-04)
#
# Across sessions (a machine whose runs/ folder does not survive): `STAGES=save bash
# benchmarks/tuned_study.sh` after interrupting it copies every unfinished trial's run directory
# (checkpoints included, about 1.5 MB each) to docs/results/<study>/in_progress/ for committing; the
# next start copies them back into runs/ (files already there are kept), so those trials resume from
# their checkpoints instead of from step 0.
set -euo pipefail
cd "$(dirname "$0")/.."
LB=${LB:-.venv/bin/largebatch}
STAGES=${STAGES:-"1 2 3 4 5"}
R=docs/results
BATCHES=256,512,1024,2048,4096,8192
COMMON=(--target-val-top1 90 --val-size 5000 --nproc 2)
PAIRS="tuned_steps_budget:runs/study_steps_budget tuned_steps_long:runs/study_steps_long tuned_steps_e8:runs/study_steps tuned_epochs_e16:runs/study_epochs tuned_epochs_e16_wide:runs/study_epochs_wide"

save_unfinished() {  # unfinished trial directories (a checkpoint, no summary.json) -> $R/<study>/in_progress,
  # and every finished trial's config.json and summary.json -> $R/<study>/<method>/<batch>/<trial>
  for pair in $PAIRS; do
    local study=${pair%%:*} out=${pair#*:}
    [ -d "$out" ] || continue
    rm -rf "$R/$study/in_progress"
    # trial_NNN: a tuning trial; confirm_sS_tNNN: a further seed of a cell's chosen trial (--seeds)
    find "$out" -mindepth 3 -maxdepth 3 -type d \( -name 'trial_*' -o -name 'confirm_s*' \) | while read -r trial; do
      if [ -f "$trial/summary.json" ]; then  # finished: its config and summary beside the storage
        mkdir -p "$R/$study/${trial#"$out"/}"
        cp "$trial/config.json" "$trial/summary.json" "$R/$study/${trial#"$out"/}/"
      elif [ -d "$trial/checkpoints" ] && [ ! -f "$trial/pruned.json" ]; then  # a pruned trial is done
        mkdir -p "$R/$study/in_progress/${trial#"$out"/}"
        cp -r "$trial"/. "$R/$study/in_progress/${trial#"$out"/}/"
        echo "saved $trial"
      fi
    done
  done
}

restore_unfinished() {  # the reverse, before the study goes on; files already in runs/ win
  for pair in $PAIRS; do
    local study=${pair%%:*} out=${pair#*:}
    if [ -d "$R/$study/in_progress" ]; then mkdir -p "$out" && cp -rn "$R/$study/in_progress"/. "$out"/; fi
  done
}

[ "$STAGES" = save ] && { save_unfinished; exit 0; }
restore_unfinished

# Each trial starts its own session, and with the kernel's autogroup scheduling
# (/proc/sys/kernel/sched_autogroup_enabled = 1) nice works only inside a session's group: a trial of a
# study started with `nice -n 19` would take an equal share of the cores from other work. Give every
# trial's group this script's niceness (benchmarks/README.md, 2026-12-04).
NICENESS=$(nice)
if [ "$NICENESS" -gt 0 ] && [ -e /proc/self/autogroup ]; then
  ( while sleep 5; do
      for p in $(pgrep -f -- "-m largebatch train --nproc [0-9]+ --out runs/study_"); do
        grep -q "nice $NICENESS\$" "/proc/$p/autogroup" 2>/dev/null || echo "$NICENESS" > "/proc/$p/autogroup" 2>/dev/null || true
      done
    done ) &
  trap 'kill $! 2>/dev/null' EXIT
fi

for stage in $STAGES; do
  case $stage in
    1) "$LB" sweep --tune --objective steps --methods goyal,nesterov,lars --batch-sizes $BATCHES --epochs 8 \
         --trials 4 "${COMMON[@]}" --out runs/study_steps --storage "sqlite:///$R/tuned_steps_e8/study.db" ;;
    2) "$LB" sweep --tune --objective steps --methods nesterov,lars --batch-sizes 2048,4096,8192 --epochs 8 \
         --epochs-at 2048=16,4096=32,8192=64 --trials 4 "${COMMON[@]}" --out runs/study_steps_long \
         --storage "sqlite:///$R/tuned_steps_long/study.db" ;;
    3) "$LB" sweep --tune --objective steps --methods goyal,no_scaling,linear_no_warmup,lamb,akiba,mikami \
         --batch-sizes $BATCHES --epochs 8 --trials 4 "${COMMON[@]}" --out runs/study_steps \
         --storage "sqlite:///$R/tuned_steps_e8/study.db" ;;
    4p) # the cells the equal-epochs targets compare first: base 256 and 16x / 32x, 3 trials each (begun 2026-12-03)
       for cell in "goyal,nesterov 256,4096,8192" "lars 4096,8192"; do set -- $cell
         "$LB" sweep --tune --objective accuracy --methods "$1" --batch-sizes "$2" --epochs 16 --trials 3 \
           "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db"; done ;;
    4q) # equal epochs at the batches between, 3 trials each like 4p, so the figure has every batch for
       # Goyal's rule, Nesterov and LARS (256 is in both lists: the rule carries its tuned LR from there)
       for cell in "goyal,nesterov 256,512,1024,2048" "lars 256,512,1024,2048"; do set -- $cell
         "$LB" sweep --tune --objective accuracy --methods "$1" --batch-sizes "$2" --epochs 16 --trials 3 \
           "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db"; done ;;
    4x) # 64x the base batch, the top of the issue's range: 16,384 (3 steps per epoch, 48 in 16 epochs)
       for cell in "goyal,nesterov 256,16384" "lars 16384"; do set -- $cell
         "$LB" sweep --tune --objective accuracy --methods "$1" --batch-sizes "$2" --epochs 16 --trials 3 \
           "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db"; done ;;
    4y) # the equal-epochs cells at 16x-64x, where 3 draws of a 3-parameter space left Nesterov far below
       # LARS (76% at 4,096): 8 trials each (TPE after the first 4), one batch at a time, 4,096 first
       for b in 4096 8192 16384; do
         "$LB" sweep --tune --objective accuracy --methods nesterov,lars --batch-sizes $b --epochs 16 --trials 8 \
           "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db"; done ;;
    4z) # after 4y, retuned Nesterov's chosen LR at 4,096-16,384 sits at the bottom of [0.01, 3] per 256 and
       # its momentum at the top of [0.8, 0.99]: the same cells searched over LR [0.001, 1] and 1 - momentum
       # [0.001, 0.2], in a storage of their own (a study keeps its ranges), 6 trials each
       for b in 4096 8192 16384; do
         "$LB" sweep --tune --objective accuracy --methods nesterov --batch-sizes $b --epochs 16 --trials 6 \
           --search-range base_lr=0.001,1 --search-range one_minus_momentum=0.001,0.2 "${COMMON[@]}" \
           --out runs/study_epochs_wide --storage "sqlite:///$R/tuned_epochs_e16_wide/study.db"; done ;;
    4k) # Mikami's batch-size control led at 4,096 after 3 trials (90.01% test): 6 trials at 4,096 and
       # 8,192 (TPE after the first 4), and 16,384 (B/4 = 4,096 for the first 5 of 16 epochs), 3 trials
       for cell in "4096,8192 6" "16384 3"; do set -- $cell
         "$LB" sweep --tune --objective accuracy --methods mikami --batch-sizes "$1" --epochs 16 --trials "$2" \
           "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db"; done ;;
    4s) # a second seed of each batch's chosen trial (best method by validation), equal epochs
       for cell in "mikami 4096 6" "lars 8192 8" "mikami 16384 3" "lamb 2048 3" "nesterov 1024 3" "nesterov 512 3" \
                   "nesterov 256 3"; do set -- $cell
         "$LB" sweep --tune --objective accuracy --methods "$1" --batch-sizes "$2" --epochs 16 --trials "$3" \
           --seeds 0,1 "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db"; done ;;
    4w) # LARS's chosen LR at 256 (28.0 per 256) sits at the top of [0.1, 30]: the cell again with the
       # LR searched in [1, 300], in the storage of widened ranges, 3 trials like the narrow cell
       "$LB" sweep --tune --objective accuracy --methods lars --batch-sizes 256 --epochs 16 --trials 3 \
         --search-range base_lr=1,300 "${COMMON[@]}" --out runs/study_epochs_wide \
         --storage "sqlite:///$R/tuned_epochs_e16_wide/study.db" ;;
    4m) # equal epochs for the other three methods at the base batch and 8x-32x, 3 trials each like 4p
       "$LB" sweep --tune --objective accuracy --methods lamb,akiba,mikami --batch-sizes 256,2048,4096,8192 \
         --epochs 16 --trials 3 "${COMMON[@]}" --out runs/study_epochs --storage "sqlite:///$R/tuned_epochs_e16/study.db" ;;
    4) "$LB" sweep --tune --objective accuracy --methods goyal,nesterov,lars,lamb --batch-sizes $BATCHES \
         --epochs 16 --trials 4 "${COMMON[@]}" --out runs/study_epochs \
         --storage "sqlite:///$R/tuned_epochs_e16/study.db" ;;
    5) # LARS's steps cells are in the length-searched study (stages 6-7), which runs its own seeds
       "$LB" sweep --tune --objective steps --methods lamb,akiba,mikami,goyal,nesterov --batch-sizes $BATCHES \
         --epochs 8 --trials 4 --seeds 0,1 "${COMMON[@]}" --out runs/study_steps \
         --storage "sqlite:///$R/tuned_steps_e8/study.db" ;;
    6) "$LB" sweep --tune --search-budget --objective steps --methods nesterov --batch-sizes 128,$BATCHES --epochs 8 \
         --epochs-at 2048=16,4096=32,8192=64 --trials 6 "${COMMON[@]}" --out runs/study_steps_budget \
         --storage "sqlite:///$R/tuned_steps_budget/study.db" ;;
    6x) # 16,384 with the length searched up to 128 epochs (428 steps; S_min is about 220), 4 trials
       "$LB" sweep --tune --search-budget --objective steps --methods nesterov --batch-sizes 16384 --epochs 128 \
         --trials 4 "${COMMON[@]}" --out runs/study_steps_budget --storage "sqlite:///$R/tuned_steps_budget/study.db" ;;
    7x) # steps to target at 16,384 for LARS, its length searched up to 128 epochs like 6x, 4 trials
       "$LB" sweep --tune --search-budget --objective steps --methods lars --batch-sizes 16384 --epochs 128 \
         --trials 4 "${COMMON[@]}" --out runs/study_steps_budget --storage "sqlite:///$R/tuned_steps_budget/study.db" ;;
    7) "$LB" sweep --tune --search-budget --objective steps --methods nesterov,lars --batch-sizes 128,$BATCHES --epochs 8 \
         --epochs-at 2048=16,4096=32,8192=64 --trials 6 --seeds 0,1 "${COMMON[@]}" --out runs/study_steps_budget \
         --storage "sqlite:///$R/tuned_steps_budget/study.db" ;;
    8) "$LB" sweep --tune --objective steps --methods nesterov --batch-sizes 512,1024 --epochs 8 --trials 4 \
         --seeds 0,1 "${COMMON[@]}" --out runs/study_steps --storage "sqlite:///$R/tuned_steps_e8/study.db"
       "$LB" sweep --tune --objective steps --methods nesterov --batch-sizes 2048,4096,8192 --epochs 8 \
         --epochs-at 2048=16,4096=32,8192=64 --trials 4 --seeds 0,1 "${COMMON[@]}" --out runs/study_steps_long \
         --storage "sqlite:///$R/tuned_steps_long/study.db"
       "$LB" sweep --tune --search-budget --objective steps --methods nesterov --batch-sizes 128,256 --epochs 8 \
         --trials 6 --seeds 0,1 "${COMMON[@]}" --out runs/study_steps_budget \
         --storage "sqlite:///$R/tuned_steps_budget/study.db" ;;
    9) # one worker per trial, so the two cells run side by side, one per core (16 trials each: 6 left
       # both cells far off the scaling of 128), one thread each (two threads each on two cores ran
       # 9-10x slower per step: benchmarks/README.md, 2026-12-04 night)
       pids=()
       for b in 32 64; do
         "$LB" sweep --tune --search-budget --objective steps --methods nesterov --batch-sizes $b --epochs 8 \
           --trials 16 --target-val-top1 90 --val-size 5000 --nproc 1 --set train.threads_per_worker=1 \
           --out runs/study_steps_budget \
           --storage "sqlite:///$R/tuned_steps_budget/study.db" &
         pids+=($!)
       done
       wait "${pids[@]}" ;;  # not a bare wait: the renicing loop above is a background job too
    *) echo "unknown stage $stage (stages are 1-9, 4p, 4q, 4x, 4y, 4z, 4w, 4m, 4k, 4s, 6x, 7x and save)" >&2; exit 2 ;;
  esac
done
