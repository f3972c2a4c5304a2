"""One process's part of a run: distributed setup, run directory, trainer, outputs.

``run_worker`` is the entry point of every worker, whether it was started by ``largebatch train
--nproc N`` (torch.distributed's elastic launcher), by ``torchrun ... -m largebatch train`` or as a
single process.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from largebatch._version import __version__
from largebatch.config import Config, ConfigError, config_from_dict, to_dict
from largebatch.dist import cleanup, setup
from largebatch.dist.env import close_log_file, log_to_file
from largebatch.dist.launch import WorkerFailed
from largebatch.errors import EXIT_FAILED, EXIT_PREEMPTED
from largebatch.plan import resolve_stages
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.guard import NonFiniteGradient
from largebatch.train.metrics import plot_curves
from largebatch.train.precision import choose_precision
from largebatch.train.trainer import Preempted, Trainer

log = logging.getLogger(__name__)


def default_run_dir(recipe: str, runs_root: Path = Path("runs")) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if that already exists)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = runs_root / f"{recipe}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def choose_run_dir(recipe: str, out: str | None, resume: str | None) -> tuple[Path, Path | None]:
    """Decide the run directory and the checkpoint to resume from.

    * ``--resume PATH``: that checkpoint; the run directory is ``--out`` or the checkpoint's run.
    * ``--resume auto``: the newest checkpoint in ``--out`` (or, without ``--out``, in the newest
      ``runs/<recipe>-*`` directory holding one); a fresh run if there is none.
    * no ``--resume``: a new run; an ``--out`` that already holds checkpoints is refused, so a run
      is never overwritten.

    Raises:
        ConfigError: for a checkpoint path that does not exist, or an ``--out`` holding checkpoints
            without ``--resume``.
    """
    if resume and resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(
                f"--resume {resume!r}: no such checkpoint file; use --resume auto or a path "
                f"under <run dir>/checkpoints/"
            )
        return (Path(out) if out else path.parent.parent), path
    if resume == "auto":
        if out:
            found = ckpt_io.list_checkpoints(Path(out))
            return Path(out), (found[-1] if found else None)
        candidates = sorted(
            (p for p in Path("runs").glob(f"{recipe}-*") if ckpt_io.list_checkpoints(p)),
            key=lambda p: ckpt_io.list_checkpoints(p)[-1].stat().st_mtime,
        )
        if candidates:
            return candidates[-1], ckpt_io.list_checkpoints(candidates[-1])[-1]
        return default_run_dir(recipe), None
    if out:
        if ckpt_io.list_checkpoints(Path(out)):
            raise ConfigError(
                f"--out {out!r} already holds checkpoints of a run; pass --resume auto to continue it, "
                f"or choose another --out (nothing was overwritten)"
            )
        return Path(out), None
    return default_run_dir(recipe), None


def model_card(cfg: Config, data) -> dict:
    """What ``model_final.pt`` needs to be used outside largebatch (written as ``model_final.json``):
    the architecture and how to build it, the input (channels, size in pixels, the evaluation
    transform, whether the reported top-1 used test-time flips, and the normalization
    ``x = (pixels / 255 - mean) / std`` per channel) and the classes."""
    spec = data.input_spec()
    m = cfg.model
    if m.name == "resnet_fmnist":
        build = (
            f"largebatch.nn.build_model('resnet_fmnist', num_classes={spec['num_classes']}, "
            f"in_channels={spec['in_channels']}, width={m.width}, blocks_per_stage={m.blocks_per_stage}, "
            f"stem_stride={m.stem_stride})"
        )
    elif ":" in m.name:
        build = f"{m.name}(num_classes={spec['num_classes']}, in_channels={spec['in_channels']})"
    else:
        build = f"torchvision.models.get_model({m.name!r}, num_classes={spec['num_classes']})"
    return {
        "format": "largebatch model card 1",
        "weights": "model_final.pt (a state_dict: torch.load(path, weights_only=True))",
        "architecture": {
            "name": m.name,
            "width": m.width,
            "blocks_per_stage": m.blocks_per_stage,
            "stem_stride": m.stem_stride,
            "build": build,
        },
        "input": {
            "channels": spec["in_channels"],
            "size_px": spec["image_size_px"],
            "memory_format": "channels_last" if m.channels_last else "contiguous",
            "eval_transform": spec["eval_transform"],
            "test_time_flip": cfg.train.eval_flip,
            "test_time_flip_means": "the run's top-1 averages the logits of each image and of its left-right "
            "mirror (train.eval_flip)"
            if cfg.train.eval_flip
            else "the run's top-1 is of the image alone",
            "normalization": {
                "mean": spec["mean"],
                "std": spec["std"],
                "formula": "x = (pixels / 255 - mean) / std, per channel",
            },
        },
        "num_classes": spec["num_classes"],
        "classes": spec["classes"],
        "recipe": cfg.recipe,
        "data": cfg.data.name,
    }


def _process_start_perf() -> float:
    """This process's start, on the ``time.perf_counter`` clock (from /proc; the first import of
    this module elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.perf_counter() - max(age, 0.0)
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


_IMPORTED_AT = time.perf_counter()


def environment_info(env) -> dict:
    """Versions, world size and hardware, for env.json."""
    import torchvision

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "largebatch": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads_per_worker": torch.get_num_threads(),
        "world_size": env.world_size,
        "local_world_size": env.local_world_size,
        "backend": env.backend,
        "device": str(env.device),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "argv": sys.argv,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return info


def _gather_bad_files(mine: list[str], env) -> list[str]:
    """Every rank's skipped files, merged and sorted (on every rank)."""
    if not env.distributed:
        return sorted(set(mine))
    lists: list = [None] * env.world_size
    torch.distributed.all_gather_object(lists, list(mine))
    return sorted({b for lst in lists for b in lst})


def _agree(value, env):
    """Rank 0's ``value`` on every rank."""
    if not env.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def exit_now(code: int) -> None:
    """Flush the logs and leave the process with ``code`` (no interpreter teardown)."""
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class StopSignals:
    """SIGTERM and SIGINT over a worker's whole life (Slurm, Kubernetes and torchrun's agent send
    SIGTERM; Ctrl-C sends SIGINT to every process of the terminal).

    Neither raises inside library code (an exception from a signal handler can land in any callee,
    and some wrap it into errors of their own): before the trainer exists the signal is remembered;
    during training the trainer writes a checkpoint at the next step boundary and stops
    (:class:`~largebatch.train.trainer.Preempted`); after training the run's outputs are finished all
    the same. A second SIGINT raises ``KeyboardInterrupt`` at once. Under an elastic agent a worker
    that stopped leaves with :func:`exit_status` of the signal the ranks agreed on instead of returning: a returning worker
    waits for the agent to collect its result, and an agent that is itself stopping never does (it
    kills the worker 30 s later)."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal's number
        self.trainer: Trainer | None = None

    def __call__(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum
        if self.trainer is not None:
            self.trainer.stop_requested = max(self.trainer.stop_requested, self.level)
        log.warning("%s: writing a checkpoint at the next step boundary, then exiting", signal.Signals(signum).name)

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        trainer.stop_requested = self.level

    @property
    def level(self) -> int:
        """This rank's stop level (:data:`~largebatch.train.loop.STOP_SIGNALS`; 0: no signal): the ranks
        agree on the highest, so a rank that got no signal leaves as the signalled one does."""
        return {None: 0, signal.SIGTERM: 1, signal.SIGINT: 2}.get(self.received, 1)

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name


def exit_status(signal_name: str) -> int:
    """75 (EX_TEMPFAIL) after SIGTERM, 130 (128 + SIGINT) after SIGINT."""
    return 128 + signal.SIGINT if signal_name == "SIGINT" else EXIT_PREEMPTED


def run_in_process(cfg_dict: dict, out: str, resume: str | None = None) -> dict | None:
    """:func:`run_worker` in this process (one worker, no launcher), failing the way a launched
    worker fails: the traceback goes to ``<out>/train.log`` and a one-line
    :class:`~largebatch.dist.launch.WorkerFailed` is raised.

    Raises:
        ConfigError: contradictory settings.
        WorkerFailed: the run failed (e.g. a non-finite stop, unreadable data).
    """
    try:
        return run_worker(cfg_dict, out, resume)
    except ConfigError:
        raise
    except Exception as err:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / "train.log", "a") as f:
            f.write(
                f"{_dt.datetime.now():%H:%M:%S} [rank 0] ERROR {__name__}: the run failed\n{traceback.format_exc()}"
            )
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WorkerFailed(
            f"the run failed: {type(err).__name__}: {first}",
            EXIT_FAILED,
            "error",
            type(err).__name__,
        ) from None


def run_worker(cfg_dict: dict, out: str | None = None, resume: str | None = None, restart: int = 0) -> dict | None:
    """Train on this process; returns the summary on rank 0 (None elsewhere), or, on every rank,
    ``{"preempted": True, "step": ..., "run_dir": ...}`` when SIGTERM stopped the run after a
    checkpoint. ``restart`` > 0 (or TORCHELASTIC_RESTART_COUNT > 0 under torchrun) marks a restart
    of the worker group, which resumes from the newest valid checkpoint of ``out``.

    Raises:
        ConfigError: contradictory settings (the CLI turns it into exit status 2).
    """
    stop = StopSignals()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run_worker(cfg_dict, out, resume, restart, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_log_file()


def _run_worker(cfg_dict: dict, out: str | None, resume: str | None, restart: int, stop: StopSignals):
    cfg: Config = config_from_dict(cfg_dict)
    tempfile.tempdir = None  # a forked worker inherits the launcher's temporary folder for torch's error files
    restarts = restart or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts and out:
        resume = "auto"  # an elastic restart continues from the newest valid checkpoint of the run

    t_setup = time.perf_counter()
    env = setup(
        cfg.train.device,
        threads_per_worker=cfg.train.threads_per_worker,
        timeout_s=cfg.train.collective_timeout_s,
        malloc_cache_mib=cfg.train.malloc_cache_mib,
    )
    startup = {
        "process_start_to_worker_s": t_setup - _process_start_perf(),
        "dist_setup_s": time.perf_counter() - t_setup,
    }
    try:
        stages = resolve_stages(cfg, env.world_size, local_world_size=env.local_world_size)
        plan = stages[0].plan
        precision = choose_precision(cfg.train.precision, env.device)
        # Rank 0 decides the run directory (a timestamped default differs per process) and the
        # checkpoint to resume from (the newest one that passes its checksum), and tells the others.
        decision, loaded = None, None  # rank 0 keeps the checkpoint it verified, to load it only once
        if env.is_main:
            try:
                run_dir, resume_path = choose_run_dir(cfg.recipe, out, resume)
                if resume == "auto":
                    found = ckpt_io.latest_valid_checkpoint(run_dir)
                    resume_path, loaded = found if found else (None, None)
                elif resume_path is not None:
                    loaded = ckpt_io.load_checkpoint(resume_path)  # a named checkpoint must be valid
                decision = ("ok", str(run_dir), str(resume_path) if resume_path else None)
            except (ConfigError, ckpt_io.CheckpointError) as err:
                decision = ("error", str(err), None)
        decision = _agree(decision, env)
        if decision[0] == "error":
            raise ConfigError(decision[1])
        run_dir, resume_path = Path(decision[1]), (Path(decision[2]) if decision[2] else None)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            # what a killed writer left (this run's earlier attempt included); no writer of it is alive now
            ckpt_io.remove_stale_temp_files(run_dir)
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            env_path, info = run_dir / "env.json", {**environment_info(env), **precision.as_dict()}
            if resume_path is not None and env_path.is_file():
                # Keep the first segment's record; each resume adds its own environment.
                first = json.loads(env_path.read_text())
                first.setdefault("resumes", []).append(info)
                info = first
            env_path.write_text(json.dumps(info, indent=2) + "\n")
        log_to_file(run_dir / "train.log", env.rank)
        if env.is_main:
            log.info("run directory %s", run_dir)
        if restarts and env.is_main:
            log.warning(
                "elastic restart %d: continuing from %s", restarts, resume_path or "the start (no valid checkpoint)"
            )
        t_build = time.perf_counter()
        trainer = Trainer(cfg, plan, env, run_dir, precision=precision, stages=stages)  # validated once here
        startup.update(trainer.build_times)
        startup["trainer_build_s"] = time.perf_counter() - t_build
        if resume_path is not None:
            trainer.load(resume_path, ckpt=loaded)

        stop.attach(trainer)
        under_agent = "TORCHELASTIC_RUN_ID" in os.environ
        try:
            state = trainer.fit()
        except RuntimeError as err:  # torch.distributed's DistError and gloo / NCCL errors are RuntimeErrors
            if env.distributed and ("timed out" in str(err).lower() or "timeout" in type(err).__name__.lower()):
                raise RuntimeError(
                    f"rank {env.rank}: a collective waited more than train.collective_timeout_s="
                    f"{cfg.train.collective_timeout_s:g} s for the other workers, so one of them is hung, "
                    f"stopped or far slower (raise the key if a step or an evaluation legitimately takes longer); "
                    f"the last checkpoint is kept: {str(err).splitlines()[0][:200]}"
                ) from err
            raise
        except NonFiniteGradient as err:  # say, from the disk, what the run kept
            usable = ckpt_io.newest_usable_checkpoint(run_dir)
            kept = (
                f"the newest usable checkpoint (finite weights) is {usable}; --resume auto continues from it"
                if usable
                else "no usable checkpoint (with finite weights) exists"
            )
            raise NonFiniteGradient(f"{err}. {kept}") from None
        except Preempted as stopped:
            step, agreed = stopped.args
            if under_agent:  # see StopSignals: the checkpoint is on disk, leave with the agreed signal's status
                cleanup()
                exit_now(exit_status(agreed))
            return {"preempted": True, "signal": agreed, "step": step, "run_dir": str(run_dir)}
        bad_files = _gather_bad_files(getattr(trainer.data, "bad_files", []), env)
        if env.is_main:
            ckpt_io.export_weights(
                run_dir / "model_final.pt", trainer.model.state_dict(), model_card(cfg, trainer.data)
            )
            if bad_files:
                (run_dir / "bad_files.txt").write_text("\n".join(bad_files) + "\n")
                log.warning(
                    "%d unreadable image file(s) were skipped (data.imagefolder.bad_file_policy=skip), listed in %s: %s%s",
                    len(bad_files),
                    run_dir / "bad_files.txt",
                    "; ".join(b.split("\t")[0] for b in bad_files[:5]),
                    " ..." if len(bad_files) > 5 else "",
                )
        if not env.is_main:
            _leave_if_signalled(stop, under_agent)
            return None
        summary = {
            "recipe": cfg.recipe,
            "top1": state.top1,
            "best_top1": state.best_top1,
            "epochs": cfg.train.epochs,
            "steps": state.step,
            # a batch-size schedule (Mikami et al. 2018) is named by its final, largest stage, as the paper does
            "global_batch_size": trainer.stages[-1].plan.global_batch_size,
            "bn_batch_size": trainer.stages[-1].plan.bn_batch_size,
            "simulated_workers": trainer.stages[-1].plan.simulated_workers,
            "world_size": env.world_size,
            "peak_lr": trainer.stages[-1].plan.peak_lr,
            "bn_statistics": cfg.train.bn.statistics,
            "batch_stages": [
                {
                    "start_epoch": st.start_epoch,
                    "global_batch_size": st.plan.global_batch_size,
                    "bn_batch_size": st.plan.bn_batch_size,
                    "accumulation_steps": st.plan.accumulation_steps,
                    "peak_lr": st.plan.peak_lr,
                }
                for st in trainer.stages
            ],
            "images_per_s": state.images_seen / state.step_time_s if state.step_time_s else None,
            "wall_s": state.train_wall_s,
            "eval_s": state.eval_s,
            "checkpoint_s": state.checkpoint_s,
            "target_top1": cfg.train.target_top1 or None,
            "time_to_target_s": state.time_to_target_s,
            "val_top1": state.val_top1,
            "best_val_top1": state.best_val_top1,
            "val_size": cfg.data.val_size,
            "val_target_top1": (cfg.train.stop_at_val_top1 or cfg.train.val_target_top1) or None,
            "steps_to_val_target": state.steps_to_val_target,
            "images_to_val_target": state.images_to_val_target,
            "stopped_at_target": state.stopped_at_target,
            "stopped_at_budget": state.stopped_at_budget,
            "init_from": cfg.train.init_from or None,
            **precision.as_dict(),
            # seconds of rank 0 before its first training step (this segment of the run)
            "startup_s": startup,
            # when this segment's training loop started (Unix time): with the command's own start it
            # gives the time to target from the start of the command, the MLPerf way
            "train_started_unix_s": trainer.fit_started_unix_s,
            "skipped_steps": state.skipped_steps,
            "bad_files": len(bad_files),
            "run_dir": str(run_dir),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_curves(run_dir)
        log.info(
            "done: top-1 %.2f%% (best %.2f%%) in %.1f s, %.0f images/s; %s",
            state.top1,
            state.best_top1,
            state.train_wall_s,
            summary["images_per_s"] or 0.0,
            run_dir / "summary.json",
        )
        _leave_if_signalled(stop, under_agent)
        return summary
    finally:
        cleanup()


def _leave_if_signalled(stop: StopSignals, under_agent: bool) -> None:
    """A signal that came after the last step: the run's outputs are complete (summary.json on rank
    0); under an elastic agent leave with the signal's status now rather than wait for a stopping
    agent (see :class:`StopSignals`); the launcher sees the summary and reports the run as finished."""
    if stop.received is not None and under_agent:
        cleanup()
        exit_now(exit_status(stop.name))
