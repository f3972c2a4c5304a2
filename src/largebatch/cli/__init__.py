"""Command line: ``largebatch train | eval | recipes | simulate | data check | data prepare | sweep | study-report | critical-batch | advise``. Dispatch only; the work is in the packages.

Exit status: 0 success, 1 a failure while running, 2 bad input (unknown key, wrong type,
contradiction, missing data) found before any worker starts, 75 stopped by SIGTERM after writing a
checkpoint (continue with ``--resume auto``; 75 is EX_TEMPFAIL, "try again").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from largebatch.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED, Terminated  # torch-free: the CLI starts fast

log = logging.getLogger("largebatch")


def _preempted(result) -> bool:
    values = result.values() if isinstance(result, dict) and "preempted" not in result else [result]
    return any(isinstance(v, dict) and v.get("preempted") for v in values)


def _in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"largebatch: error: {message}", file=sys.stderr)
    return code


def _build_config(recipe: str, overrides: list[str], config_file: str | None = None):
    from largebatch.api import load_config

    return load_config(config_file or recipe, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from largebatch.api import launch, prepare_run
    from largebatch.config import ConfigError, schedule_warnings, to_dict

    if args.config and args.recipe:
        return _fail("--config and --recipe both name the config; give one (--set applies on top of either)")
    _stop_if_terminated()
    try:
        cfg = _build_config(args.recipe, args.set, args.config)
    except ConfigError as err:
        return _fail(str(err))
    _stop_if_terminated()

    if _in_torchrun():
        # torchrun started this process: it is one worker; the world size comes from the environment.
        if args.nproc:
            return _fail("--nproc starts local workers itself; under torchrun set --nproc_per_node instead")
        from torch.distributed.elastic.multiprocessing.errors import record

        from largebatch.train.run import exit_now, run_worker

        rank = int(os.environ.get("RANK", "0"))
        try:
            # record: a failure is written to torchrun's error file, so its summary names the cause.
            result = record(run_worker)(to_dict(cfg), args.out, args.resume)
        except ConfigError as err:
            if rank == 0:
                _fail(str(err))
            return EXIT_BAD_INPUT
        # The run is written and the process group destroyed. Leave without the interpreter's teardown:
        # gloo's threads can still hold work objects with tensors then, and freeing them during
        # finalization aborts the process now and then (SIGABRT after a finished run, seen under torchrun
        # on 2026-12-03), which torchrun reports as a failed run. Workers of --nproc leave this way too.
        exit_now(EXIT_PREEMPTED if _preempted(result) else 0)

    try:
        run = prepare_run(cfg, nproc=args.nproc, out=args.out, resume=args.resume)
    except (ConfigError, FileNotFoundError, ImportError) as err:
        return _fail(str(err))
    except OSError as err:  # --out under a regular file, on a read-only mount, ...
        return _fail(
            f"--out {args.out or 'runs/'}: cannot use it as the run directory ({err.strerror or err}); give a writable folder"
        )
    print(f"largebatch: {cfg.recipe}: {run.plan.describe()}; run directory {run.run_dir}", file=sys.stderr)
    if args.resume == "auto" and run.resume_path is None:
        print(f"largebatch: --resume auto found no checkpoint in {run.run_dir}; starting from step 0", file=sys.stderr)
    for warning in schedule_warnings(cfg):
        print(f"largebatch: warning: {warning}", file=sys.stderr)
    # The run directory is fixed here, so an elastic restart of the workers finds its checkpoints.
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from largebatch.dist.launch import WorkerFailed

    _stop_if_terminated()
    started = time.time()
    global _LAUNCHED
    _LAUNCHED = (run.run_dir, started)  # from here a signal's message reads the run's state from the disk
    try:
        try:
            result = launch(run, max_restarts=args.max_restarts)
        finally:
            signal.signal(signal.SIGTERM, _raise_terminated)  # torch's agent leaves its own handler installed
    except ConfigError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"run directory {run.run_dir}: {err.strerror or err}; give a writable --out")
    except WorkerFailed as err:
        if err.kind in ("preempted", "interrupted"):  # a worker got SIGTERM (or SIGINT) and left
            return _stopped(run.run_dir, "SIGTERM" if err.kind == "preempted" else "SIGINT", started)
        return _fail(str(err), code=1)
    except SignalException as sig:  # the launcher itself got a signal; it was passed on to the workers
        return _stopped(run.run_dir, sig.sigval.name, started)
    if _preempted(result):
        return _stopped(run.run_dir, result.get("signal", "SIGTERM"), started)
    return 0


def _stopped(run_dir: Path, signal_name: str, started_unix_s: float) -> int:
    """Say truthfully where a run stopped by a signal stands, from what is on disk: finished (a
    summary written since ``started_unix_s``: exit 0), or the newest checkpoint and whether this
    command wrote it. Exit status 75 after SIGTERM (the scheduler may start it again, ``--resume
    auto`` continues), 128 + the signal's number otherwise (130 for Ctrl-C)."""
    import signal

    from largebatch.train.checkpoint import list_checkpoints, step_of

    summary = run_dir / "summary.json"
    if summary.is_file() and summary.stat().st_mtime >= started_unix_s:
        print(f"largebatch: {signal_name} arrived as the run was finishing; it finished ({summary})", file=sys.stderr)
        return 0
    checkpoints = list_checkpoints(run_dir)
    resume = f"continue with --out {run_dir} --resume auto"
    if checkpoints and checkpoints[-1].stat().st_mtime >= started_unix_s:
        what = f"the workers wrote a checkpoint at step {step_of(checkpoints[-1])}: {resume}"
    elif checkpoints:
        what = f"no new checkpoint was written; the newest is at step {step_of(checkpoints[-1])}: {resume}"
    else:
        what = (
            f"before its first checkpoint, so there is nothing to resume: --out {run_dir} --resume auto starts it again"
        )
    print(f"largebatch: stopped by {signal_name}; {what}", file=sys.stderr)
    return EXIT_PREEMPTED if signal_name == "SIGTERM" else 128 + signal.Signals[signal_name].value


def cmd_eval(args: argparse.Namespace) -> int:
    from largebatch.api import evaluate
    from largebatch.config import ConfigError

    target = args.path or args.checkpoint
    if not target:
        return _fail("give what to evaluate: a run directory, a checkpoint or a model_final.pt (largebatch eval PATH)")
    try:
        result = evaluate(target, args.set, split=args.split, trust_plugins=args.trust_plugins)
    except (ConfigError, FileNotFoundError) as err:
        return _fail(str(err))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank has the same result
        print(json.dumps(result, indent=2))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from largebatch.config import ConfigError, active_dict
    from largebatch.plan import resolve_stages
    from largebatch.recipes import get_recipe, recipe_names

    if not args.name:
        for name in recipe_names():
            cfg = get_recipe(name)
            print(f"{name}\n    {cfg.description}\n    source: {cfg.source}")
        return 0
    try:
        cfg = _build_config(args.name, args.set)
    except (KeyError, ConfigError) as err:
        return _fail(err.args[0] if isinstance(err, KeyError) else str(err))
    print(OmegaConf.to_yaml(OmegaConf.create(active_dict(cfg))), end="")
    print("# the settings of the optimizers, schedules and data sources not chosen here are left out")
    try:
        stages = resolve_stages(cfg, cfg.train.nproc)
        for st in stages:
            where = f" (batch stage {st.index}, from epoch {st.start_epoch})" if len(stages) > 1 else ""
            print(f"# derived for train.nproc={cfg.train.nproc}{where}: {st.plan.describe()}")
    except ConfigError as err:
        print(f"# not valid for train.nproc={cfg.train.nproc}: {err}")
    return 0


def _cannot_write(path: str, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file in an existing folder (``folder``: made, with its
    parents, or filled as a folder), or None. Checked before the work; nothing is created."""
    target = Path(path).absolute()
    if folder and target.exists() and not target.is_dir():
        return f"{target} is a file, not a folder"
    if not folder and target.is_dir():
        return f"{target} is a folder"
    if not folder and not target.parent.exists():
        return f"folder {target.parent} does not exist"
    ancestor = target if folder else target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:  # made on the way, as mkdir -p does
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK) or (target.is_file() and not os.access(target, os.W_OK)):
        return f"permission denied in {ancestor}"
    return None


def cmd_data_check(args: argparse.Namespace) -> int:
    """``largebatch data check ROOT``: exit 0 when no file is bad, 1 when some are, 2 for bad input
    (the report's path is checked before any file is decoded)."""
    from largebatch.data.check import check_dataset, summary_lines, write_report

    if args.workers < 0:
        return _fail(f"--workers {args.workers}: give 0 (all cores) or more")
    if args.report and (problem := _cannot_write(args.report)):
        return _fail(f"--report {args.report}: cannot write the report there ({problem}); give a writable path")
    try:
        report = check_dataset(args.root, workers=args.workers, progress=sys.stderr.isatty())
    except FileNotFoundError as err:
        return _fail(str(err))
    for line in summary_lines(report):
        print(line)
    if args.report:
        try:
            write_report(report, Path(args.report))
        except OSError as err:
            return _fail(
                f"--report {args.report}: cannot write the report ({err.strerror or err}); give a writable path"
            )
        print(f"report: {args.report}")
    return 0 if report.ok else 1


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """``largebatch data prepare SRC DST``: 0 on success (files that cannot be decoded are left out and
    listed), 2 for bad input."""
    from largebatch.data.shards import prepare

    if problem := _cannot_write(args.dst, folder=True):
        return _fail(f"DST {args.dst}: cannot write the shards there ({problem}); give a writable folder")
    try:
        manifest = prepare(
            args.src,
            args.dst,
            max_side_px=args.max_side,
            quality=args.quality,
            shard_mb=args.shard_mb,
            workers=max(args.workers, 0),
            progress=sys.stderr.isatty(),
        )
    except ValueError as err:
        return _fail(str(err))
    except OSError as err:  # a missing layout (a message of ours), or the file system's error on a path
        if err.errno is None or not err.filename:
            return _fail(str(err))
        where = os.path.abspath(err.filename)
        if where.startswith(os.path.abspath(args.src) + os.sep):
            return _fail(f"SRC {args.src}: cannot read {where} ({err.strerror}); fix its permissions")
        return _fail(f"DST {args.dst}: cannot write {where} ({err.strerror}); give a writable folder with space")
    for split, part in manifest["splits"].items():
        print(f"{split}: {part['samples']} images in {len(part['shards'])} shard(s)")
    for bad in manifest["bad_files"]:
        print(f"left out (cannot decode): {bad['path']} ({bad['error']})")
    print(f"train with: --set data.name=imagefolder --set data.root={args.dst}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 128,256,512") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 0.25,0.5,1,2") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from largebatch.config import ConfigError
    from largebatch.study.sweep import SweepError, run_sweep

    methods = [m for m in args.methods.split(",") if m]
    if args.tune:
        from largebatch.study.tune import TuneSpec, run_tuned_sweep

        spec = TuneSpec(
            out=Path(args.out),
            methods=methods,
            batch_sizes=args.batch_sizes,
            epochs=args.epochs,
            trials=args.trials,
            objective=args.objective,
            target_val_top1=args.target_val_top1,
            val_size=args.val_size,
            evals_per_epoch=args.evals_per_epoch,
            pruner=args.pruner,
            storage=args.storage,
            seeds=tuple(args.seeds),
            overrides=tuple(args.set),
            nproc=args.nproc,
            epochs_at=tuple(args.epochs_at),
            search_budget=args.search_budget,
            search_ranges=tuple(args.search_range),
        )
        try:
            run_tuned_sweep(spec)
        except KeyboardInterrupt:
            print(
                f"largebatch sweep: interrupted; the running trial checkpointed. The same command continues the "
                f"study from {spec.storage_url}",
                file=sys.stderr,
            )
            return 75
        except (SweepError, ConfigError, KeyError) as err:
            return _fail(err.args[0] if isinstance(err, KeyError) else str(err))
        except RuntimeError as err:
            return _fail(str(err), code=1)
        out = Path(args.out)
        print((out / "tuned.md").read_text())
        figure = "steps_to_target.png" if args.objective == "steps" else "equal_epochs.png"
        print(f"table {out / 'tuned.md'}, {out / 'tuned.json'}; figure {out / figure}; study {spec.storage_url}")
        return 0
    try:
        rows = run_sweep(args.out, methods, args.batch_sizes, args.seeds, args.epochs, args.set, args.nproc)
    except (SweepError, ConfigError, KeyError) as err:
        return _fail(err.args[0] if isinstance(err, KeyError) else str(err))
    except RuntimeError as err:
        return _fail(str(err), code=1)
    out = Path(args.out)
    print((out / "sweep.md").read_text() if rows else "no finished runs")
    print(f"table {out / 'sweep.md'}, {out / 'sweep.csv'}; figure {out / 'sweep.png'}")
    return 0


def _search_range(text: str) -> tuple[str, float, float]:
    """``NAME=LOW,HIGH`` of --search-range."""
    try:
        name, bounds = text.split("=")
        low, high = (float(x) for x in bounds.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=LOW,HIGH (e.g. base_lr=0.001,1)") from None
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 <= LOW < HIGH (e.g. base_lr=0.001,1)")
    return name.strip(), low, high


def _batch_epochs(text: str) -> list[tuple[int, int]]:
    """``B=E,B=E`` pairs of --epochs-at."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item]
        return [(int(b), int(e)) for b, e in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not B=E,... (e.g. 4096=16,8192=32)") from None


def cmd_study_report(args: argparse.Namespace) -> int:
    from largebatch.study.report import ReportError, collect, write_report

    try:
        report = collect(
            args.storage,
            args.objective,
            epochs=args.epochs,
            methods=[m for m in args.methods.split(",") if m] or None,
            batch_sizes=args.batch_sizes or None,
        )
        paths = write_report(report, Path(args.out))
    except ReportError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"--out {args.out}: cannot write there ({err.strerror or err}); give a writable folder")
    print(paths[1].read_text())
    print(f"table {paths[1]}, {paths[0]}; figure {paths[2]}")
    return 0


def cmd_critical_batch(args: argparse.Namespace) -> int:
    from largebatch.config import ConfigError
    from largebatch.study.branch import BranchError, run_branches

    try:
        report = run_branches(
            Path(args.run),
            Path(args.out or Path(args.run) / "critical_batch"),
            steps=args.steps,
            batch_sizes=args.batch_sizes,
            budget_images=args.budget_images,
            tolerance=args.tolerance,
            min_reduction=args.min_reduction,
            nproc=args.nproc,
            overrides=args.set,
            trust_plugins=args.trust_plugins,
            lr_multipliers=tuple(args.lr_multipliers),
            seeds=tuple(args.seeds),
            max_doublings=args.max_doublings,
            max_widenings=args.max_widenings,
            parallel=args.parallel,
        )
    except (BranchError, ConfigError) as err:
        return _fail(str(err))
    except RuntimeError as err:
        return _fail(str(err), code=1)
    from largebatch.study.branch import report_text

    print(report_text(report))
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from largebatch.config import ConfigError
    from largebatch.sim.allreduce import ALGORITHMS
    from largebatch.sim.presets import PRESETS
    from largebatch.study.advise import advise

    if args.preset and args.preset not in PRESETS:
        return _fail(f"--preset {args.preset!r} is unknown; accepted: {', '.join(PRESETS)}, or '' for no estimate")
    if args.algorithm not in (*ALGORITHMS, "preset"):
        return _fail(f"--algorithm {args.algorithm!r} is unknown; accepted: {', '.join(ALGORITHMS)}, preset")
    throughput = ()
    if args.measured_throughput:
        from largebatch.sim.compute import fit_compute, measured_points

        try:
            throughput = measured_points(args.measured_throughput)
            fit_compute(throughput, "your measurements", mode="calibrated")
        except ValueError as err:
            return _fail(f"--measured-throughput: {err}")
    out = args.out or f"runs/advise-{args.recipe}"
    if Path(out).exists() and any(Path(out).iterdir()):
        return _fail(f"--out {out} already holds files; give a new directory (nothing was overwritten)")
    try:
        result = advise(
            args.recipe,
            args.set,
            out=out,
            probe_epochs=args.probe_epochs,
            nproc=args.nproc,
            preset=args.preset,
            algorithm=args.algorithm,
            measured=args.measured,
            horizon_epochs=args.horizon_epochs,
            probe_seeds=args.probe_seeds,
            hessian_small_batches=args.hessian_small_batches if args.hessian else 0,
            measured_throughput=throughput,
        )
    except (ConfigError, ValueError, KeyError) as err:
        return _fail(err.args[0] if isinstance(err, KeyError) else str(err))
    except RuntimeError as err:
        return _fail(str(err), code=1)
    print(result.text())
    print(f"(probe run and advice.json in {out})")
    return 0


EXIT_CODES = {
    "train": "0 finished; 1 a worker failed (one line here, the traceback in RUN/train.log); 2 bad input, found "
    "before any worker started; 75 stopped by SIGTERM (continue with --resume auto); 130 Ctrl-C",
    "eval": "0 evaluated (the result as JSON on stdout); 2 bad input (nothing usable at PATH, weights that do not "
    "fit the model, unknown key, missing data, a plugin named only by the run without --trust-plugins)",
    "recipes": "0 listed or printed; 2 bad input (an unknown recipe or key)",
    "data check": "0 every file decodes; 1 some files are bad (listed); 2 bad input (no such folder, bad option, "
    "a --report path that cannot be written)",
    "data prepare": "0 written (files that cannot be decoded are left out and listed); 2 bad input",
    "sweep": "0 finished (table and figure); 1 a run failed; 2 bad input; 75 interrupted (--tune: the same "
    "command continues the study)",
    "study-report": "0 written (table on stdout); 2 bad input (no tuned studies, protocols that differ, a "
    "storage that cannot be read)",
    "critical-batch": "0 measured (the report on stdout); 1 a branch failed; 2 bad input",
    "advise": "0 advised (the report on stdout); 1 the probe failed; 2 bad input, found before the probe starts "
    "(unknown recipe or preset, a probe too short to leave warmup, --out in use)",
    "simulate": "0 predicted (the table on stdout); 2 bad input (one line naming the option)",
}
"""Exit statuses of each subcommand, printed by its --help (docs/reliability.md has the table for train)."""

EXAMPLES = {
    "train": [
        "largebatch train                                   # the default recipe on Fashion-MNIST, 2 workers",
        "largebatch train --set train.global_batch_size=2048 --set train.epochs=9 --out runs/b2048",
        "largebatch train --out runs/b2048 --resume auto    # continue a stopped run",
    ],
    "eval": ["largebatch eval runs/b2048", "largebatch eval runs/b2048/checkpoints/ckpt_step00000072.pt --split val"],
    "recipes": ["largebatch recipes", "largebatch recipes goyal2017_resnet50_imagenet_8k > my.yaml"],
    "data check": ["largebatch data check /data/imagenet --report bad_files.json"],
    "data prepare": ["largebatch data prepare /data/imagenet /data/imagenet-shards --max-side 256"],
    "sweep": [
        "largebatch sweep --methods goyal,lars --batch-sizes 512,2048 --epochs 4 --set data.train_subset=16384",
        "largebatch sweep --tune --methods goyal,nesterov --batch-sizes 256,1024 --epochs 2 --trials 3",
    ],
    "study-report": [
        "largebatch study-report sqlite:///runs/study_e8/study.db sqlite:///runs/study_long/study.db --out runs/steps",
        "largebatch study-report sqlite:///runs/study_epochs/study.db --objective accuracy --epochs 16 --out runs/e16",
    ],
    "critical-batch": ["largebatch critical-batch runs/b512 --batch-sizes 128,512,2048"],
    "advise": ["largebatch advise --recipe goyal2017_fashion_mnist --preset h100_ndr"],
    "simulate": ["largebatch simulate --gpus 1024 --preset akiba2017 --out scaling.png"],
}


def _command(sub, name: str, help: str, description: str = ""):
    """A subcommand's parser whose --help shows a description, examples and the exit statuses."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]) + "\n\nexit status: " + EXIT_CODES[name]
    return sub.add_parser(
        name.split()[-1],
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    from largebatch._version import __version__
    from largebatch.recipes import DEFAULT_RECIPE

    parser = argparse.ArgumentParser(prog="largebatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"largebatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    set_help = "override a config key, e.g. --set train.epochs=10 (repeatable; values are YAML)"
    trust_help = (
        "load the plugin model or data set (module:callable or entry point) that the run's stored config "
        "names, running its code; without it such a run is refused unless --set names the plugin. Only "
        "for runs you trust"
    )

    p = _command(
        sub,
        "train",
        "train a recipe (data-parallel)",
        "Train a recipe or a config file on local worker processes (or as one torchrun worker). The global "
        "batch is the recipe's whatever the number of processes; every output goes to the run directory.",
    )
    p.add_argument("--recipe", default=None, help=f"recipe name (default {DEFAULT_RECIPE}); see `largebatch recipes`")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a YAML or JSON config (what `largebatch recipes NAME` prints, or a run's config.json or "
        "run directory) instead of --recipe; --set applies on top",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="local worker processes (default: the recipe's train.nproc); not with torchrun",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<recipe>-<timestamp>)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="continue from the newest valid checkpoint of the run directory (auto) or from PATH",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="R",
        help="restart all workers up to R times when one dies (killed, crashed); each restart resumes from "
        "the newest valid checkpoint. An error, SIGTERM or Ctrl-C is never retried",
    )
    p.set_defaults(func=cmd_train)

    p = _command(sub, "eval", "evaluate a run, a checkpoint or a model_final.pt on the test/validation split")
    p.add_argument(
        "path",
        nargs="?",
        default=None,
        help="a run directory (its model_final.pt, else its newest valid checkpoint), a checkpoint file "
        "(runs/<run>/checkpoints/*.pt) or a model_final.pt with its run's config.json beside it",
    )
    p.add_argument("--checkpoint", default=None, help="the same as PATH (kept for scripts)")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="test (default) or val: the data.val_size images held out of the training set",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--trust-plugins", action="store_true", help=trust_help)
    p.set_defaults(func=cmd_eval)

    p = _command(
        sub,
        "recipes",
        "list recipes, or print one's resolved config",
        "List the recipes, or print one's resolved config as YAML (edit it and pass it to train --config).",
    )
    p.add_argument("name", nargs="?", help="a recipe name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("data", help="data set tools: check, prepare", description="Data set tools: check, prepare.")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = _command(data_sub, "data check", "decode every image file of a data set; report bad and odd files")
    q.add_argument("root", help="the data set's root folder (e.g. holding train/ and val/)")
    q.add_argument("--report", default=None, help="also write the JSON report (every bad and odd file) to this path")
    q.add_argument("--workers", type=int, default=0, help="decoding processes (default: all CPU cores)")
    q.set_defaults(func=cmd_data_check)

    q = _command(data_sub, "data prepare", "convert an ImageNet folder into pre-resized tar shards with an index")
    q.add_argument("src", help="ImageNet-layout folder (train/<wnid>/*, val/<wnid>/*)")
    q.add_argument("dst", help="new directory for the shards (train with --set data.root=DST)")
    q.add_argument("--max-side", type=int, default=256, help="shorter side at most this many pixels (default 256)")
    q.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images (default 90)")
    q.add_argument("--shard-mb", type=float, default=256.0, help="approximate shard size in MiB (default 256)")
    q.add_argument("--workers", type=int, default=0, help="processes (default: all CPU cores)")
    q.set_defaults(func=cmd_data_prepare)

    p = _command(
        sub,
        "sweep",
        "accuracy against global batch size for several large-batch methods "
        "(Goyal et al. 2017, Fig. 1); table and figure",
    )
    p.add_argument(
        "--methods",
        default="no_scaling,linear_no_warmup,goyal,lars,lamb,akiba,mikami",
        help="comma-separated: no_scaling, linear_no_warmup, goyal, nesterov, lars, lamb, akiba, mikami",
    )
    p.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=[128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        help="comma-separated global batch sizes (default 128,...,16384)",
    )
    p.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of every run (default 4); schedules are scaled to it")
    p.add_argument("--nproc", type=int, default=1, help="worker processes per run (default 1)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set data.train_subset=16384",
    )
    p.add_argument(
        "--out", default="runs/sweep", help="sweep directory; runs already finished there are kept (default runs/sweep)"
    )
    g = p.add_argument_group("tuning (--tune): every (method, batch) searched on a validation split with Optuna")
    g.add_argument(
        "--tune",
        action="store_true",
        help="tune each cell instead of running the recipes as written; "
        "--seeds beyond the first re-run each cell's chosen trial",
    )
    g.add_argument("--trials", type=int, default=8, help="finished trials per tuned cell (default 8)")
    g.add_argument(
        "--objective",
        default="steps",
        choices=["steps", "accuracy"],
        help="steps: fewest steps to --target-val-top1, trials stop there (Shallue et al. 2018); "
        "accuracy: validation top-1 after --epochs (equal epochs). Default steps",
    )
    g.add_argument(
        "--target-val-top1",
        type=float,
        default=90.0,
        help="validation top-1 target in percent (default 90: Shallue et al.'s 0.10 error on Fashion-MNIST)",
    )
    g.add_argument("--val-size", type=int, default=5000, help="images held out of the training set (default 5000)")
    g.add_argument(
        "--evals-per-epoch",
        type=int,
        default=4,
        help="validation evaluations per epoch: the resolution of steps to target (default 4)",
    )
    g.add_argument(
        "--pruner",
        default="median",
        choices=["median", "halving", "none"],
        help="early stopping of trials that fall behind (default median)",
    )
    g.add_argument(
        "--epochs-at",
        type=_batch_epochs,
        default=[],
        metavar="B=E,...",
        help="epochs at given global batches instead of --epochs, e.g. 4096=16,8192=32 (larger batches "
        "need more epochs to reach the target)",
    )
    g.add_argument(
        "--search-budget",
        action="store_true",
        help="also search each trial's length in epochs (1/8 of the cell's epochs to all of them, the "
        "schedule scaled to it), as Shallue et al. retune the decay schedule; with --objective steps",
    )
    g.add_argument(
        "--search-range",
        type=_search_range,
        action="append",
        default=[],
        metavar="NAME=LOW,HIGH",
        help="replace a searched parameter's range in every method's space, on its own scale, e.g. "
        "base_lr=0.001,1 (LR per 256 images) or one_minus_momentum=0.001,0.2; repeatable. A study keeps "
        "its ranges: new ones need a new --storage",
    )
    g.add_argument(
        "--storage",
        default="",
        help="Optuna storage URL (default sqlite:///OUT/study.db); a PostgreSQL or MySQL URL shared by "
        "several machines runs one study on all of them",
    )
    p.set_defaults(func=cmd_sweep)

    p = _command(
        sub,
        "study-report",
        "one table and figure from the Optuna storages of tuned sweeps (budgets, machines and sessions "
        "merged): best trial per cell, the McCandlish et al. fit and the perfect-scaling region",
    )
    p.add_argument("storage", nargs="+", help="Optuna storage URLs of `largebatch sweep --tune` (sqlite:///PATH, ...)")
    p.add_argument(
        "--objective",
        choices=("steps", "accuracy"),
        default="steps",
        help="steps: fewest steps to the validation target over every budget (default); accuracy: "
        "final validation top-1 at equal epochs",
    )
    p.add_argument("--epochs", type=int, default=None, help="only the studies with this many epochs")
    p.add_argument("--methods", default="", help="comma-separated methods to keep (default: all)")
    p.add_argument("--batch-sizes", type=_int_list, default=[], help="comma-separated global batches to keep")
    p.add_argument("--out", default="runs/study_report", help="folder of tuned.md, tuned.json and the figure")
    p.set_defaults(func=cmd_study_report)

    p = _command(
        sub,
        "critical-batch",
        "measure the critical batch size by branching short runs at several "
        "batch sizes from checkpoints of a run (Merrill et al. 2025)",
    )
    p.add_argument("run", help="run directory of the reference run (its checkpoints/ and metrics.jsonl)")
    p.add_argument(
        "--steps",
        type=_int_list,
        default=None,
        help="comma-separated checkpoint steps to branch from (default: every checkpoint of the run)",
    )
    p.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=[128, 256, 512, 1024, 2048, 4096],
        help="comma-separated global batch sizes of the branches (default 128,...,4096)",
    )
    p.add_argument(
        "--budget-images",
        type=int,
        default=32768,
        help="training images of the longest branch, the same at every batch; each batch also runs 1/2, 1/4 "
        "and 1/8 of it, every branch decaying its LR linearly to 0 over its own images (default 32768)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.2,
        help="tolerance-based critical batch: the largest batch needing at most 1 + tolerance times the "
        "smallest batch's images to the middle loss level (default 0.2)",
    )
    p.add_argument(
        "--min-reduction",
        type=float,
        default=0.05,
        help="validation loss reduction (nats) the smallest batch must reach at the full budget; below it the "
        "budget is doubled (at most --max-doublings times), then the point is reported as not resolved "
        "(default 0.05, about 7x the seed-to-seed spread of a branch's final loss with precise BN on "
        "5,000 images, 0.007 nats)",
    )
    p.add_argument("--max-doublings", type=int, default=2, help="budget doublings per point (default 2)")
    p.add_argument(
        "--max-widenings", type=int, default=2, help="widenings of the LR grid per batch at a winning edge (default 2)"
    )
    p.add_argument(
        "--lr-multipliers",
        type=_float_list,
        default=[0.25, 0.5, 1.0, 2.0],
        help="multiples of the linear rule's LR tried at every batch, besides the reference's own LR; widened "
        "by 2x at an edge that wins (default 0.25,0.5,1,2)",
    )
    p.add_argument(
        "--seeds",
        type=_int_list,
        default=[0, 1],
        help="seeds: the first runs the LR grid (at half the budget), every seed runs every budget at its "
        "best LR (default 0,1)",
    )
    p.add_argument("--nproc", type=int, default=1, help="worker processes per branch (default 1)")
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="branches run side by side, the CPU cores shared out among them (default 1); on a small model "
        "2 one-thread branches use 2 cores better than one two-thread branch",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every branch")
    p.add_argument("--trust-plugins", action="store_true", help=trust_help)
    p.add_argument(
        "--out", default=None, help="study directory (default RUN/critical_batch); finished branches there are kept"
    )
    p.set_defaults(func=cmd_critical_batch)

    p = _command(
        sub,
        "advise",
        "measure the gradient noise scale in a short probe; report the critical "
        "batch size, the linear-scaling range, GPUs and time to train",
    )
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe to probe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument(
        "--probe-epochs",
        type=float,
        default=2.0,
        help="length of the probe in epochs (default 2): the recipe's run, its schedule unchanged, stopped "
        "there; it must leave the warmup by two windows of a quarter epoch",
    )
    p.add_argument(
        "--horizon-epochs",
        type=float,
        default=None,
        help="epoch up to which the prediction averages the noise scale (default: the first LR decay of a step "
        "schedule, else half the run)",
    )
    p.add_argument(
        "--probe-seeds",
        type=int,
        default=2,
        help="probes of different seeds, pooled; their spread widens the interval (default 2)",
    )
    p.add_argument(
        "--hessian",
        action="store_true",
        help="also measure the Hessian-corrected noise scale tr(H Sigma) / G^T H G at each probe's final weights "
        "(Hessian-vector products; seconds to minutes) and print the prediction it gives",
    )
    p.add_argument(
        "--hessian-small-batches",
        type=int,
        default=128,
        help="small batches (one BN group each) behind the Hessian-corrected estimate (default 128)",
    )
    p.add_argument("--nproc", type=int, default=2, help="worker processes of the probe (default 2; 1 works)")
    p.add_argument(
        "--preset",
        default="h100_ndr",
        help="cost-model cluster (see `largebatch simulate --help`; default h100_ndr); empty: no estimate",
    )
    p.add_argument(
        "--algorithm",
        default="auto",
        help="all-reduce of the estimate: auto (what NCCL would run; default), preset (the system's own), "
        "or a name of `largebatch simulate --algorithm`",
    )
    p.add_argument("--out", default=None, help="probe run directory (default runs/advise-<recipe>)")
    p.add_argument(
        "--measured",
        default=None,
        metavar="CRITICAL_BATCH_JSON",
        help="a report of `largebatch critical-batch`: compare the advice with each measured critical "
        "batch (ratio, and whether within 2x)",
    )
    p.add_argument(
        "--measured-throughput",
        nargs="+",
        default=None,
        metavar="RUN_DIR|B:IPS,...",
        help="calibrated cost model: your own training throughput of this recipe's model at two or more per-GPU "
        "batches, as `largebatch train` run directories (summary.json) or BATCH:IMAGES_PER_S pairs per GPU; "
        "replaces the preset's compute (the network stays the preset's)",
    )
    p.set_defaults(func=cmd_advise)

    from largebatch.sim import cli as sim_cli  # pure Python, no torch

    p = _command(
        sub,
        "simulate",
        "predict all-reduce time, step time and scaling efficiency at N GPUs (alpha-beta cost model, docs/comm.md)",
    )
    sim_cli.add_arguments(p)
    p.set_defaults(func=sim_cli.run)
    return parser


_LAUNCHED: tuple[Path, float] | None = None
"""(run directory, start time) once ``train`` has started its workers: a signal after that point is
reported from what the run left on disk (:func:`_stopped`)."""


_SIGTERM_SEEN = False


def _raise_terminated(signum, frame) -> None:
    global _SIGTERM_SEEN
    _SIGTERM_SEEN = True
    raise Terminated


def _stop_if_terminated() -> None:
    """Raise :class:`Terminated` for a SIGTERM whose exception was lost: one raised while an import
    compiles a module can vanish (seen on CPython 3.11 in about half of the tries whose signal came
    within a millisecond of the handler's installation). Called between the phases of ``train``."""
    if _SIGTERM_SEEN:
        raise Terminated


def _exit_with(code: int):
    """A SIGTERM handler for a command that has its exit status: leave with it at once."""

    def handler(signum, frame) -> None:
        print(f"largebatch: SIGTERM arrived as the command was exiting; exit status {code}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(code)

    return handler


def main(argv: list[str] | None = None) -> int:
    """The ``largebatch`` command. For ``train``, SIGTERM and SIGINT keep their contract from the
    first instant to the exit (docs/reliability.md): one line saying where the run stands, exit
    status 75 after SIGTERM (0 when the run had finished), 130 after Ctrl-C."""
    global _LAUNCHED, _SIGTERM_SEEN
    _SIGTERM_SEEN = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # first: torch's import takes seconds
    command, _LAUNCHED = "train", None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        if args.command != "train":
            signal.signal(signal.SIGTERM, previous)
        if args.command == "train" and args.nproc is not None and args.nproc < 1:
            return _fail(f"--nproc {args.nproc}: give at least 1 worker process")
        if args.command == "train" and args.max_restarts < 0:
            return _fail(f"--max-restarts {args.max_restarts}: give 0 or more restarts")
        code = args.func(args)
    except BrokenPipeError:  # the reader went away (`largebatch recipes NAME | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        code = 0
    except (Terminated, KeyboardInterrupt) as sig:
        name = "SIGTERM" if isinstance(sig, Terminated) else "SIGINT"
        if _LAUNCHED is not None:  # the run started: say where it stands
            code = _stopped(_LAUNCHED[0], name, _LAUNCHED[1])
        else:
            where = "before the run started; nothing was written" if command == "train" else f"({command} stopped)"
            print(f"largebatch: stopped by {name} {where}", file=sys.stderr)
            code = EXIT_PREEMPTED if name == "SIGTERM" else 128 + signal.SIGINT
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, _exit_with(code))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
