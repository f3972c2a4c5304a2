"""Checkpoints: written by rank 0 atomically with a checksum, loaded with ``weights_only=True``.

Files (format 3): ``checkpoints/ckpt_step<8 digits>.pt`` is a plain ``torch.save`` archive that
``torch.load(path, weights_only=True)`` reads anywhere; beside it ``ckpt_step<...>.pt.sha256`` holds
its SHA-256 in ``sha256sum`` format (``sha256sum -c`` checks it). The archive is a dict of tensors
and plain values (no pickled classes): ``format``, ``config`` (dict), ``config_hash``, ``model`` and
``optimizer`` state dicts, ``train_state`` (step, epoch, best_top1, ... counters; the LR schedule is
a pure function of the step, so it needs no state of its own), ``sampler`` (seed, epoch, step within
the epoch, batch stage), ``world_size`` and ``rng`` (torch RNG state of every rank). Checkpoints of
format 2 (one file: an ``LBCKPT2`` header with the checksum, then the archive) still load.

Writing: the checksum file first, then the archive; each goes to a temporary file in the same
directory, is flushed and fsynced, renamed over its final name, and the directory fsynced; then the
oldest checkpoints beyond ``keep`` are deleted. A reader therefore sees either the previous set of
checkpoints or the new one, never a partial file under a final name; a file truncated or altered
later (a full disk, a bad copy) fails its checksum, and :func:`latest_valid_checkpoint` falls back to
the previous one with a warning. Files get the mode the user's umask gives (0644 under the usual
022), so teammates can read a shared run directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = 3
LEGACY_FORMAT = 2
MAGIC = b"LBCKPT2\n"  # the header of format-2 files
_HEADER = len(MAGIC) + 65  # magic, 64 hex digits, newline
_NAME = re.compile(r"^ckpt_step(\d{8,})\.pt$")
REQUIRED_KEYS = ("config", "model")
"""Entries every training checkpoint holds (the run's config and the model's state)."""
_STALE_TMP = re.compile(r"^\.ckpt_step\d{8,}\.pt(\.sha256)?\..+\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, not ours, or holds pickled objects."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by step)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    """The step in a checkpoint's file name (``ckpt_step00000042.pt`` -> 42)."""
    return int(_NAME.match(Path(path).name).group(1))


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the ``.tmp`` files a writer killed mid-write left in ``checkpoints/`` (called before a
    run's workers start, when no writer can be running); returns what was removed."""
    d = checkpoint_dir(run_dir)
    stale = [p for p in d.iterdir() if _STALE_TMP.match(p.name) and p.is_file()] if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", p)
    return stale


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def checksum_path(path: Path) -> Path:
    """The ``.sha256`` file beside a checkpoint."""
    return Path(path).with_name(Path(path).name + ".sha256")


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_checkpoint(run_dir: Path, step: int, payload: dict, *, keep: int) -> Path:
    """Write ``payload`` as ``checkpoints/ckpt_step<step>.pt`` (module docstring) and delete the
    older checkpoints beyond the newest ``keep`` (this one counted); a file of a later step than
    ``step`` is never deleted. Returns the path.

    Raises:
        CheckpointError: a directory has the checkpoint's name.
    """
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt_step{step:08d}.pt"
    if path.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: a directory has that name; move it out of {d}")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    blob = buffer.getvalue()
    _atomic_write(checksum_path(path), [f"{hashlib.sha256(blob).hexdigest()}  {path.name}\n".encode()])
    _atomic_write(path, [blob])
    older = [p for p in list_checkpoints(run_dir) if step_of(p) < step]  # never a newer file than this one
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    log.info("checkpoint %s", path)
    return path


def load_checkpoint(path: Path) -> dict:
    """Read and verify a checkpoint; nothing is unpickled beyond tensors and plain values.

    Raises:
        CheckpointError: if the file is missing, is not a largebatch checkpoint, fails its checksum
            (truncated or corrupt), or holds pickled objects (refused by ``weights_only=True``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if data.startswith(MAGIC):  # format 2: the checksum in a header
        if len(data) < _HEADER:
            raise CheckpointError(f"{path} is corrupt or truncated to {len(data)} bytes (format-2 header cut)")
        expected, blob, fmt = (
            data[len(MAGIC) : len(MAGIC) + 64].decode(errors="replace"),
            memoryview(data)[_HEADER:],
            LEGACY_FORMAT,
        )
    else:
        side = checksum_path(path)
        try:
            expected = side.read_text().split()[0] if side.is_file() else None
        except (OSError, UnicodeDecodeError, IndexError):
            expected = ""
        if expected is None:
            raise CheckpointError(
                f"{path} is not a largebatch checkpoint: no checksum file {side.name} beside it (copy both files)"
            )
        blob, fmt = memoryview(data), FORMAT
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{path} is corrupt or truncated: SHA-256 {actual[:12]}... does not match the "
            f"recorded {expected[:12] or '(unreadable)'}... ({len(blob)} bytes)"
        )
    try:
        ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds pickled objects other than tensors and plain values; refused "
            f"(checkpoints are loaded with weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # torch raises several types for unreadable archives
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not a largebatch checkpoint of format {fmt}")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a largebatch training checkpoint: its header and checksum are valid but it has no "
            f"{' and no '.join(repr(k) for k in missing)} entry"
        )
    return ckpt


def latest_valid_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``run_dir`` that passes :func:`load_checkpoint`, skipping (with a
    warning naming the file and the reason) any newer one that does not; None if there is none."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            log.warning("%s; falling back to the previous checkpoint", err)
    return None


def export_weights(path: Path, state_dict: dict, info: dict | None = None) -> Path:
    """Write a plain ``state_dict`` (tensors only, torch.save format, atomically) that loads into
    the matching torchvision model with ``load_state_dict`` (every BN layer's state has the keys
    of ``torch.nn.BatchNorm2d``), and, given ``info``, a JSON sidecar (``model_final.pt`` ->
    ``model_final.json``) saying what the model expects: architecture, channels, input size,
    normalization mean/std, classes (:func:`largebatch.train.run.model_card`)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, [buffer.getvalue()])
    if info is not None:
        _atomic_write(path.with_suffix(".json"), [(json.dumps(info, indent=2) + "\n").encode()])
    return path


class ProcessRNG:
    """The torch RNG state of every rank, as a checkpoint part: ``state_dict()`` gathers the ranks'
    states (collective on several processes), ``load_state_dict`` restores this rank's only when the
    checkpoint has one per rank of this run (on another number of processes training draws nothing
    from them: sample order and augmentation depend on (seed, epoch, step) only)."""

    def __init__(self, env) -> None:
        self.env = env

    def state_dict(self) -> list[torch.Tensor]:
        rng = torch.get_rng_state()
        if not self.env.distributed:
            return [rng]
        states = [None] * self.env.world_size
        torch.distributed.all_gather_object(states, rng)
        return states

    def load_state_dict(self, states: list[torch.Tensor]) -> None:
        if len(states) == self.env.world_size:
            torch.set_rng_state(states[self.env.rank])
