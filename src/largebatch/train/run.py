"""One process's part of a run: distributed setup, run directory, trainer, outputs.

``run_worker`` is the entry point of every worker, whether it was started by ``largebatch train
--nproc N`` (torch.distributed's elastic launcher), by ``torchrun ... -m largebatch train`` or as a
single process. Its steps are named functions: set up (:func:`_set_up`), agree on the run directory
(:func:`~largebatch.train.rundir.agree_on_run_dir`, then :func:`_open_run_dir`), build
(:func:`_build`), fit (:func:`_fit`), finish (:func:`_finish`, the files of
:mod:`largebatch.train.outputs`). SIGTERM and SIGINT are :class:`StopSignals`' over the whole life.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from largebatch.config import Config, ConfigError, config_from_dict
from largebatch.dist import cleanup, setup
from largebatch.dist.env import close_log_file, log_to_file
from largebatch.dist.launch import WorkerFailed
from largebatch.errors import EXIT_FAILED, EXIT_PREEMPTED
from largebatch.plan import resolve_stages
from largebatch.train import outputs
from largebatch.train.checkpoint_manager import kept_checkpoint_note
from largebatch.train.guard import NonFiniteGradient
from largebatch.train.metrics import plot_curves
from largebatch.train.precision import choose_precision
from largebatch.train.rundir import RunDirDecision, agree_on_run_dir, open_run_dir
from largebatch.train.trainer import Preempted, Trainer

log = logging.getLogger(__name__)


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
        """This rank's stop level (:data:`~largebatch.train.checkpoint_manager.STOP_SIGNALS`; 0: no signal): the ranks
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
    """Set up, agree on the run directory, build, fit, finish (:func:`run_worker`)."""
    cfg: Config = config_from_dict(cfg_dict)
    tempfile.tempdir = None  # a forked worker inherits the launcher's temporary folder for torch's error files
    restarts = restart or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts and out:
        resume = "auto"  # an elastic restart continues from the newest valid checkpoint of the run
    env, startup = _set_up(cfg)
    try:
        stages = resolve_stages(cfg, env.world_size, local_world_size=env.local_world_size)
        precision = choose_precision(cfg.train.precision, env.device)
        decision = agree_on_run_dir(cfg, out, resume, env)
        _open_run_dir(decision, cfg, env, precision, restarts)
        trainer = _build(cfg, stages, env, decision, precision, startup)
        stop.attach(trainer)
        under_agent = "TORCHELASTIC_RUN_ID" in os.environ
        try:
            _fit(trainer, cfg, env, decision.run_dir)
        except Preempted as stopped:
            step, agreed = stopped.args
            if under_agent:  # see StopSignals: the checkpoint is on disk, leave with the agreed signal's status
                cleanup()
                exit_now(exit_status(agreed))
            return {"preempted": True, "signal": agreed, "step": step, "run_dir": str(decision.run_dir)}
        summary = _finish(trainer, cfg, env, precision, startup, decision.run_dir)
        _leave_if_signalled(stop, under_agent)
        return summary
    finally:
        cleanup()


def _set_up(cfg: Config):
    """(the distributed environment, the startup timings so far in seconds)."""
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
    return env, startup


def _open_run_dir(decision: RunDirDecision, cfg: Config, env, precision, restarts: int) -> None:
    """Rank 0 creates the directory and writes config.json and env.json; every rank logs to train.log."""
    run_dir = decision.run_dir
    if env.is_main:
        open_run_dir(run_dir)
        info = {**outputs.environment_info(env), **precision.as_dict()}
        outputs.write_run_record(run_dir, cfg, info, resumed=not decision.fresh)
    log_to_file(run_dir / "train.log", env.rank)
    if env.is_main:
        log.info("run directory %s", run_dir)
    if restarts and env.is_main:
        log.warning(
            "elastic restart %d: continuing from %s",
            restarts,
            decision.resume_path or "the start (no valid checkpoint)",
        )


def _build(cfg: Config, stages, env, decision: RunDirDecision, precision, startup: dict) -> Trainer:
    """The trainer (the config is validated once here), resumed from the decided checkpoint."""
    t_build = time.perf_counter()
    trainer = Trainer(cfg, stages[0].plan, env, decision.run_dir, precision=precision, stages=stages)
    startup.update(trainer.build_times)
    startup["trainer_build_s"] = time.perf_counter() - t_build
    if decision.resume_path is not None:
        trainer.load(decision.resume_path, ckpt=decision.checkpoint)
    return trainer


def _fit(trainer: Trainer, cfg: Config, env, run_dir: Path) -> None:
    """``trainer.fit()``, its errors said in the run's terms.

    Raises:
        RuntimeError: a collective timed out (the message says which key to raise), or another
            torch.distributed error.
        NonFiniteGradient: with what the run kept on disk.
        Preempted: a signal stopped the run after a checkpoint.
    """
    try:
        trainer.fit()
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
        raise NonFiniteGradient(f"{err}. {kept_checkpoint_note(run_dir)}") from None


def _finish(trainer: Trainer, cfg: Config, env, precision, startup: dict, run_dir: Path) -> dict | None:
    """The run's outputs (rank 0): final weights and model card, bad_files.txt, summary.json and
    curves.png; returns the summary on rank 0, None elsewhere. Collective (the skipped files)."""
    bad_files = outputs.gather_bad_files(getattr(trainer.data, "bad_files", []), env)
    if not env.is_main:
        return None
    outputs.write_final_weights(run_dir, cfg, trainer)
    if bad_files:
        (run_dir / "bad_files.txt").write_text("\n".join(bad_files) + "\n")
        log.warning(
            "%d unreadable image file(s) were skipped (data.imagefolder.bad_file_policy=skip), listed in %s: %s%s",
            len(bad_files),
            run_dir / "bad_files.txt",
            "; ".join(b.split("\t")[0] for b in bad_files[:5]),
            " ..." if len(bad_files) > 5 else "",
        )
    summary = outputs.run_summary(cfg, trainer, env, precision, startup, len(bad_files), run_dir)
    path = summary.write(run_dir)
    plot_curves(run_dir)
    state = trainer.state
    log.info(
        "done: top-1 %.2f%% (best %.2f%%) in %.1f s, %.0f images/s; %s",
        state.top1,
        state.best_top1,
        state.train_wall_s,
        summary.images_per_s or 0.0,
        path,
    )
    return summary.to_dict()


def _leave_if_signalled(stop: StopSignals, under_agent: bool) -> None:
    """A signal that came after the last step: the run's outputs are complete (summary.json on rank
    0); under an elastic agent leave with the signal's status now rather than wait for a stopping
    agent (see :class:`StopSignals`); the launcher sees the summary and reports the run as finished."""
    if stop.received is not None and under_agent:
        cleanup()
        exit_now(exit_status(stop.name))
