"""``largebatch sweep``: accuracy against global batch size, one line per large-batch method.

The study of Goyal et al. 2017 (Fig. 1, Table 1): train the same model for the same number of
epochs at a range of global batch sizes and see where the error rises. Each method is a recipe plus
the overrides that make it that method; each (method, global batch, seed) is an ordinary
``largebatch train`` run directory under the sweep directory, so an interrupted sweep resumes
(finished runs are kept, a run with checkpoints continues with ``--resume auto``) and a later
sweep with more batch sizes or seeds into the same directory only runs what is missing.

Epoch-valued settings of a recipe (warmup, step decays and the poly/cosine decay end, slow-start,
batch-stage and resize-stage boundaries, Akiba's alpha_SGD centre and period: every schema field
marked ``unit=EPOCHS``) are scaled from the recipe's epochs to the sweep's, so every method keeps
its own schedule's shape at equal epochs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

from largebatch.config import ConfigError, merge_overrides, scale_epochs, with_reference_lr
from largebatch.plan import resolve_stages
from largebatch.recipes import get_recipe
from largebatch.study.launch import RunFailed, run_train
from largebatch.study.methods import METHODS, Method  # noqa: F401  (Method: re-exported)
from largebatch.summary import RunSummary


class SweepError(ValueError):
    """A sweep that cannot run as asked (named method, batch or key); raised before any run starts."""


def _scale_epochs(cfg, epochs: int):
    """``cfg`` with every epoch-valued setting scaled from ``cfg.train.epochs`` to ``epochs``
    (:func:`largebatch.config.scale_epochs`: the schedule, the stage boundaries, rounded to whole
    epochs, ...), and one evaluation and one checkpoint, at the end."""
    scaled = scale_epochs(cfg, epochs / cfg.train.epochs)
    train = dataclasses.replace(scaled.train, epochs=epochs, eval_every_epochs=epochs, checkpoint_every_epochs=epochs)
    return dataclasses.replace(scaled, train=train)


def run_config(method: str, global_batch_size: int, seed: int, epochs: int, overrides: list[str]):
    """The complete config of one run of the sweep.

    Raises:
        SweepError: for an unknown method.
        ConfigError: for an override the config refuses.
    """

    if method not in METHODS:
        raise SweepError(f"method {method!r} is unknown; accepted: {', '.join(METHODS)}")
    m = METHODS[method]
    recipe, given = get_recipe(m.recipe), [*m.overrides, *overrides]
    cfg = with_reference_lr(recipe, merge_overrides(recipe, given), given)  # loading a recipe: see api.load_config
    cfg = _scale_epochs(cfg, epochs)
    if cfg.train.batch_schedule:  # Mikami: the recipe's growth factor, ending at this global batch
        first, last = cfg.train.batch_schedule[0], cfg.train.batch_schedule[-1]
        growth = last.global_batch_size // first.global_batch_size
        start = max(1, last.start_epoch)
        stages = [
            dataclasses.replace(first, start_epoch=0, global_batch_size=max(1, global_batch_size // growth)),
            dataclasses.replace(last, start_epoch=start, global_batch_size=global_batch_size),
        ]
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_schedule=stages))
    train = dataclasses.replace(
        cfg.train,
        global_batch_size=(
            cfg.train.batch_schedule[0].global_batch_size if cfg.train.batch_schedule else global_batch_size
        ),
        seed=seed,
    )
    return dataclasses.replace(cfg, recipe=f"sweep-{method}-b{global_batch_size}-s{seed}", train=train)


def run_dir_of(out: Path, method: str, global_batch_size: int, seed: int) -> Path:
    return out / method / f"b{global_batch_size:06d}_s{seed}"


def plan_sweep(
    methods: list[str], batch_sizes: list[int], seeds: list[int], epochs: int, overrides: list[str], nproc: int
) -> list[tuple[str, int, int, object]]:
    """Every run's (method, batch, seed, config), each validated for ``nproc`` workers.

    Raises:
        SweepError: naming the method and batch that cannot run and why.
    """

    if epochs < 1:
        raise SweepError(f"--epochs {epochs}: give at least 1")
    if not methods or not batch_sizes or not seeds:
        raise SweepError("give at least one method, one global batch size and one seed")
    runs = []
    for method in methods:
        for b in batch_sizes:
            for seed in seeds:
                try:
                    cfg = run_config(method, b, seed, epochs, overrides)
                    resolve_stages(cfg, nproc)
                except ConfigError as err:
                    raise SweepError(f"{method} at global batch {b}: {err}") from None
                runs.append((method, b, seed, cfg))
    return runs


def read_result(run_dir: Path) -> dict | None:
    """The finished run's numbers (top1, steps, wall_s, ...) from summary.json, or None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _run_one(out_dir: Path, method: str, b: int, seed: int, cfg, nproc: int) -> RunSummary:
    """Run one (method, global batch, seed) of the sweep (:func:`largebatch.study.launch.run_train`:
    ``--resume auto`` when it has checkpoints), its log under ``logs/``; returns its summary.

    Raises:
        RuntimeError: the run failed (its command's exit status and the end of its log in the message).
    """
    log_path = out_dir / "logs" / f"{method}_b{b:06d}_s{seed}.log"
    try:
        return run_train(
            cfg, run_dir_of(out_dir, method, b, seed), nproc=nproc, log=log_path, recipe=METHODS[method].recipe
        )
    except RunFailed as err:
        raise RuntimeError(
            f"{method} at global batch {b}, seed {seed} failed (exit {err.returncode}); log "
            f"{log_path}:\n{err.output[-2000:]}\nfinished runs are kept: the same command continues the sweep"
        ) from None


def run_sweep(
    out: str,
    methods: list[str],
    batch_sizes: list[int],
    seeds: list[int],
    epochs: int,
    overrides: list[str],
    nproc: int,
    *,
    progress: bool = True,
) -> list[dict]:
    """Run what is missing of the sweep, then write its table and figure; returns the rows.

    Raises:
        SweepError: before any run, for a sweep that cannot run as asked.
        RuntimeError: when a run fails (its command and the end of its log are in the message;
            finished runs are kept, so the same command resumes).
    """
    from tqdm import tqdm

    runs = plan_sweep(methods, batch_sizes, seeds, epochs, overrides, nproc)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if read_result(run_dir_of(out_dir, r[0], r[1], r[2])) is None]
    print(
        f"largebatch sweep: {len(runs)} runs ({len(runs) - len(todo)} already finished) in {out_dir}", file=sys.stderr
    )
    bar = tqdm(total=len(todo), unit="run", disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True)
    for method, b, seed, cfg in todo:
        t0 = time.perf_counter()
        result = _run_one(out_dir, method, b, seed, cfg, nproc)
        bar.update(1)
        top1 = float("nan") if result.top1 is None else result.top1
        line = (
            f"{method} b={b} seed={seed}: top-1 {top1:.2f}%, {result.steps or 0} steps, "
            f"{time.perf_counter() - t0:.0f} s"
        )
        if bar.disable:
            print(f"largebatch sweep: {line}", file=sys.stderr)
        else:
            bar.set_postfix_str(line)
    bar.close()
    rows = collect(out_dir, methods, batch_sizes, seeds)
    write_outputs(out_dir, rows, epochs=epochs, nproc=nproc, overrides=overrides)
    return rows


def collect(out_dir: Path, methods: list[str], batch_sizes: list[int], seeds: list[int]) -> list[dict]:
    """One row per (method, global batch): top-1 mean, spread (min, max, std), steps, time, seeds."""
    rows = []
    for method in methods:
        for b in batch_sizes:
            results = [r for s in seeds if (r := read_result(run_dir_of(out_dir, method, b, s))) is not None]
            if not results:
                continue
            top1 = [r["top1"] for r in results]
            rows.append(
                {
                    "method": method,
                    "global_batch_size": b,
                    "seeds": len(results),
                    "top1_mean": statistics.fmean(top1),
                    "top1_min": min(top1),
                    "top1_max": max(top1),
                    "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                    "error_mean": 100 - statistics.fmean(top1),
                    "steps": results[0].get("steps"),
                    "wall_s_mean": statistics.fmean(r.get("wall_s", float("nan")) for r in results),
                }
            )
    return rows


def write_outputs(out_dir: Path, rows: list[dict], *, epochs: int, nproc: int, overrides: list[str]) -> None:
    """``sweep.csv`` (one row per method and batch), ``sweep.md`` (batch x method table) and
    ``sweep.png`` (error against global batch, log axis, one line per method: Goyal et al. Fig. 1)."""
    if not rows:
        return
    with open(out_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    batches = sorted({r["global_batch_size"] for r in rows})
    cell = {(r["method"], r["global_batch_size"]): r for r in rows}
    lines = [
        f"Test top-1 (%) after {epochs} epochs: mean over seeds, [min, max], steps, minutes per run "
        f"({nproc} worker process(es){'; ' + ' '.join(overrides) if overrides else ''}).",
        "",
        "| global batch | " + " | ".join(METHODS[m].label for m in methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for b in batches:
        cells = []
        for m in methods:
            r = cell.get((m, b))
            cells.append(
                ""
                if r is None
                else f"{r['top1_mean']:.2f} [{r['top1_min']:.2f}, {r['top1_max']:.2f}] n={r['seeds']}, "
                f"{r['steps']} steps, {r['wall_s_mean'] / 60:.1f} min"
            )
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    (out_dir / "sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = sorted((r["global_batch_size"], r) for r in rows if r["method"] == m)
        xs = [b for b, _ in pts]
        ys = [r["error_mean"] for _, r in pts]
        lo = [r["error_mean"] - (100 - r["top1_max"]) for _, r in pts]
        hi = [(100 - r["top1_min"]) - r["error_mean"] for _, r in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=METHODS[m].label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [f"{b // 1024}k" if b >= 1024 and b % 1024 == 0 else str(b) for b in batches])
    ax.set_xlabel("global batch size (images)")
    ax.set_ylabel(f"test error after {epochs} epochs (%)")
    finite = [r["error_mean"] for r in rows if math.isfinite(r["error_mean"])]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 2), min(100.0, max(finite) + 2))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Error against global batch size (as Goyal et al. 2017, Fig. 1)")
    fig.tight_layout()
    fig.savefig(out_dir / "sweep.png", dpi=120)
    plt.close(fig)
