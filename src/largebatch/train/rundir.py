"""The run directory and the resume decision, in one place: which directory a run writes to, whether
it starts fresh, resumes a checkpoint or is refused. The launching process decides before any worker
starts (:func:`largebatch.api.prepare_run`: ``decide_run_dir(..., before_launch=True)``) and rank 0
of the workers decides again for all ranks (:func:`agree_on_run_dir`), both by :func:`decide_run_dir`.

The rules (``out``: ``--out``; ``resume``: ``--resume``):

========  ===========================  ============================================================
resume    ``out``                      decision
========  ===========================  ============================================================
None      given, without checkpoints   fresh, in ``out``
None      given, holding checkpoints   refused: a run is never overwritten
None      not given                    fresh, in a new ``runs/<recipe>-<YYYYmmdd-HHMMSS>``
auto      given                        the newest valid checkpoint of ``out``; fresh if it has none
auto      not given                    the newest checkpoint of the newest ``runs/<recipe>-*`` holding
                                       one; fresh in a new directory if none does
PATH      any                          that checkpoint (it must be valid), in ``out`` or its own run
========  ===========================  ============================================================

Before launch, and only then, a run is also refused when its directory cannot be written, when
another live run holds it (the lock of :mod:`largebatch.train.runlock`), when ``--resume auto``
finds checkpoints of which none can be read (the workers, after an elastic restart, start from step
0 instead), and when the checkpoint was written with another config (the workers check it when the
trainer loads it, with the precision: :func:`~largebatch.train.checkpoint_manager.check_resumable`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from pathlib import Path

import torch

from largebatch.config import Config, ConfigError
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.checkpoint_manager import refuse_other_config
from largebatch.train.runlock import check_not_in_use


@dataclasses.dataclass(frozen=True)
class RunDirDecision:
    """Where a run writes and what it resumes from."""

    run_dir: Path
    resume_path: Path | None = None
    """The checkpoint the run resumes from; None: the run starts at step 0."""
    checkpoint: dict | None = dataclasses.field(default=None, repr=False, compare=False)
    """That checkpoint, read and verified by whoever decided (rank 0 loads it only once); None elsewhere."""

    @property
    def fresh(self) -> bool:
        return self.resume_path is None


def default_run_dir(recipe: str, runs_root: Path = Path("runs")) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if that already exists)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = runs_root / f"{recipe}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def choose_run_dir(recipe: str, out: str | None, resume: str | None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint file ``resume`` names in it (not yet verified): the
    table of the module docstring.

    Raises:
        ConfigError: for a checkpoint path that does not exist, or an ``out`` holding checkpoints
            without ``resume``.
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


def check_writable(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or written, before anything is written.

    Raises:
        ConfigError: a part of the path is a file, or the nearest existing folder is not writable
            (permissions, a read-only mount).
    """
    existing = Path(run_dir).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r}: {existing} is a file, not a folder; give another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {str(run_dir)!r}: cannot write in {existing} (permissions or a read-only file system); "
            f"give a writable --out"
        )


def decide_run_dir(cfg: Config, out: str | None, resume: str | None, *, before_launch: bool = False) -> RunDirDecision:
    """The run directory and the checkpoint to resume from, verified (module docstring).

    ``resume``: None, ``"auto"`` or a checkpoint path. ``before_launch``: the launching process's
    decision, which also refuses an unwritable or locked directory, unreadable checkpoints under
    ``--resume auto`` and another config's checkpoint.

    Raises:
        ConfigError: the run is refused (one line saying why and what to do).
    """
    run_dir, named = choose_run_dir(cfg.recipe, out, resume)
    if before_launch:
        check_writable(run_dir)
        check_not_in_use(run_dir)
    try:
        if resume == "auto":
            found = ckpt_io.latest_valid_checkpoint(run_dir) if named is not None else None
        else:
            found = (named, ckpt_io.load_checkpoint(named)) if named is not None else None  # must be valid
    except ckpt_io.CheckpointError as err:
        raise ConfigError(str(err)) from None
    if before_launch and named is not None and found is None:
        # every checkpoint unreadable: never train from step 0 over them silently
        names = ", ".join(p.name for p in ckpt_io.list_checkpoints(run_dir))
        raise ConfigError(
            f"--resume auto: no checkpoint in {run_dir / 'checkpoints'} can be read ({names}; the log above "
            f"says why); move them out of the way to start over, or pass --resume PATH to a good copy "
            f"(nothing was deleted)"
        )
    if found is None:
        return RunDirDecision(run_dir)
    if before_launch:  # refuse another config's checkpoint before any worker starts
        refuse_other_config(cfg, found[1]["config"], found[0])
    return RunDirDecision(run_dir, found[0], found[1])


def agree_on_run_dir(cfg: Config, out: str | None, resume: str | None, env) -> RunDirDecision:
    """Rank 0's :func:`decide_run_dir` on every rank: a timestamped default differs per process, and
    the newest valid checkpoint must be the same for all. Rank 0 keeps the checkpoint it verified (to
    load it only once); the other ranks get its path. Collective on several processes.

    Raises:
        ConfigError: on every rank, when rank 0 refused the run.
    """
    decision, told = None, None
    if env.is_main:
        try:
            decision = decide_run_dir(cfg, out, resume)
            told = ("ok", str(decision.run_dir), str(decision.resume_path) if decision.resume_path else None)
        except ConfigError as err:
            told = ("error", str(err), None)
    if env.distributed:
        box = [told]
        torch.distributed.broadcast_object_list(box, src=0)
        told = box[0]
    if told[0] == "error":
        raise ConfigError(told[1])
    return decision or RunDirDecision(Path(told[1]), Path(told[2]) if told[2] else None)


def open_run_dir(run_dir: Path) -> None:
    """Create the run directory and remove what a killed checkpoint writer left in it (this run's
    earlier attempt included: no writer of it is alive now). Rank 0, once the run is decided.

    Raises:
        OSError: the directory cannot be created.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_io.remove_stale_temp_files(run_dir)
