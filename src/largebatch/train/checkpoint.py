"""Checkpoints: written by rank 0, atomically, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and plain values (no pickled classes):
``format``, ``config`` (dict), ``config_hash``, ``model`` and ``optimizer`` state dicts,
``train_state`` (step, epoch, best_top1, ... counters; the LR schedule is a pure function of the
step, so it needs no state of its own), ``sampler`` (seed, epoch, step within the epoch),
``world_size`` and ``rng`` (torch RNG state of every rank).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"^ckpt_step(\d{8,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by step)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: Path, step: int, payload: dict, *, keep: int) -> Path:
    """Write ``payload`` as ``checkpoints/ckpt_step<step>.pt`` (temporary file, fsync, rename) and
    delete all but the newest ``keep`` checkpoints."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt_step{step:08d}.pt"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    log.info("checkpoint %s", path)
    return path


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without unpickling code (``weights_only=True``).

    Raises:
        ValueError: if the file is not a largebatch checkpoint of a known format.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a largebatch checkpoint (format {FORMAT})")
    return ckpt
