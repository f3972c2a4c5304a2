"""Add the trials of a benchmarks/gpu_study.sh run to the committed steps-to-target storage.

    python benchmarks/merge_gpu_study.py GPU_STUDY.tar.gz --machine "H200" [--storage URL] [--results DIR]

Every cell's storage copy in the archive is merged with ``largebatch.study.tune.merge_trials``: the
trials that began on the GPU machine (after the archive's ``started``) and finished, each tagged
with ``machine``; running it twice adds nothing. Each added trial's config.json, summary.json and
pruned.json go to ``RESULTS/METHOD/bBATCH/trial_NNN`` under its number in the committed storage,
which its ``run_dir`` attribute names (the GPU machine's run directory is kept as ``device_run_dir``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", type=Path)
    p.add_argument("--machine", required=True, help="label kept on every merged trial, e.g. H200")
    p.add_argument("--storage", default="sqlite:///docs/results/tuned_steps_budget/study.db")
    p.add_argument("--results", type=Path, default=Path("docs/results/tuned_steps_budget"))
    args = p.parse_args(argv)

    import optuna

    from largebatch.study.tune import merge_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with tarfile.open(args.archive) as tar:
            tar.extractall(work, filter="data")
        since = dt.datetime.fromisoformat((work / "started").read_text().strip())
        total = 0
        for db in sorted(work.glob("*.db")):
            cell = db.stem  # METHOD_bBATCH: its run directories are under runs/CELL/
            copied = {}

            def place(name, trial, number, cell=cell, copied=copied):
                device_run = Path(trial.user_attrs["run_dir"])
                method, bdir = device_run.parent.parent.name, device_run.parent.name
                found = work / "runs" / cell / method / bdir / device_run.name
                dest = args.results / method / bdir / f"trial_{number:03d}"
                dest.mkdir(parents=True, exist_ok=True)
                for f in ("config.json", "summary.json", "pruned.json"):
                    if (found / f).exists():
                        shutil.copy2(found / f, dest / f)
                copied[(name, number)] = dest
                return {"run_dir": str(dest), "device_run_dir": str(device_run), "run_number": number}

            added = merge_trials(
                f"sqlite:///{db}", args.storage, since=since, attrs={"machine": args.machine}, attrs_of=place
            )
            for name, old, new in added:
                print(f"{name}: trial {old} -> {new}: {copied[(name, new)]}")
            total += len(added)
        print(f"merged {total} trials into {args.storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
