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
directory (its name carries the writer's host and pid, so a clean-up removes only a dead writer's
files: :func:`remove_stale_temp_files`), is flushed and fsynced, renamed over its final name, and the
directory fsynced; then the oldest checkpoints beyond ``keep`` are deleted, never the newest one
with finite weights. A checkpoint whose weights hold a NaN or an infinity is not usable:
:func:`load_checkpoint` refuses it and :func:`latest_valid_checkpoint` falls back past it. A reader therefore sees either the previous set of
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
import socket
import tempfile
import time
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
_TMP_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[^.]*\.tmp$")
FOREIGN_TMP_GRACE_S = 3600.0
"""A temporary checkpoint file written from another host is left alone this long after its last
change (its writer may be alive: a shared run directory under torchrun)."""


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


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:64] or "host"


def _writer_alive(name: str, age_s: float) -> bool:
    """Whether the process writing the temporary file ``name`` (last changed ``age_s`` seconds ago)
    may still be running. The name carries the writer's host and pid
    (``.ckpt_step<N>.pt.<host>-<pid>.<random>.tmp``): a writer on this host is alive while its pid
    is; one on another host (a run directory on a shared file system) counts as alive for
    :data:`FOREIGN_TMP_GRACE_S`. Names without an owner (earlier versions) count as dead."""
    m = _TMP_OWNER.search(name)
    if m is None:
        return False
    if m.group("host") != _host_tag():
        return age_s <= FOREIGN_TMP_GRACE_S
    pid = int(m.group("pid"))
    if pid == os.getpid():
        return False  # this process is not writing while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete what an interrupted checkpoint write or rotation left in ``checkpoints/``: temporary
    files whose writer is dead (:func:`_writer_alive`) and ``.sha256`` files whose checkpoint is
    gone. Rank 0 calls it as a run's workers start (each elastic restart too), under the run
    directory's lock and before it writes anything; a refused run never calls it. Returns what was
    removed."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    now, stale = time.time(), []
    for p in d.iterdir():
        if _STALE_TMP.match(p.name):
            try:
                if _writer_alive(p.name, now - p.stat().st_mtime):
                    continue
            except OSError:  # gone meanwhile
                continue
        elif not (p.name.endswith(".sha256") and _NAME.match(p.name.removesuffix(".sha256"))):
            continue
        elif p.with_name(p.name.removesuffix(".sha256")).exists():
            continue
        if p.is_file():
            p.unlink(missing_ok=True)
            stale.append(p)
            log.info("removed %s, left by an interrupted checkpoint write or rotation", p)
    return stale


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def checksum_path(path: Path) -> Path:
    """The ``.sha256`` file beside a checkpoint."""
    return Path(path).with_name(Path(path).name + ".sha256")


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    # the writer's host and pid in the name: a clean-up removes only a dead writer's files
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp")
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
    doomed = older[: max(0, len(older) - (keep - 1))]
    if bad := nonfinite_tensors(payload.get("model", {})):
        # Not a usable checkpoint: the rotation must not delete the newest one that is.
        keeper = next((p for p in reversed(older) if _usable(p)), None)
        doomed = [p for p in doomed if p != keeper]
        log.warning(
            "checkpoint %s holds non-finite weights (%s); resuming skips it, and %s",
            path,
            _count_names(bad, len(payload["model"])),
            f"{keeper.name} is kept as the newest usable one" if keeper else "no usable checkpoint exists",
        )
    for old in doomed:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    log.info("checkpoint %s", path)
    return path


def _usable(path: Path) -> bool:
    """Whether :func:`load_checkpoint` accepts ``path``."""
    try:
        load_checkpoint(path)
        return True
    except CheckpointError:
        return False


def _read_verifiable(path: Path) -> tuple[str, memoryview, int]:
    """(the recorded SHA-256, the archive's bytes, the format) of the checkpoint ``path``: format 2
    carries the checksum in its header, format 3 in the ``.sha256`` file beside it.

    Raises:
        CheckpointError: the file cannot be read, its format-2 header is cut, or (format 3) it has no
            checksum file.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if data.startswith(MAGIC):  # format 2: the checksum in a header
        if len(data) < _HEADER:
            raise CheckpointError(f"{path} is corrupt or truncated to {len(data)} bytes (format-2 header cut)")
        return data[len(MAGIC) : len(MAGIC) + 64].decode(errors="replace"), memoryview(data)[_HEADER:], LEGACY_FORMAT
    side = checksum_path(path)
    try:
        expected = side.read_text().split()[0] if side.is_file() else None
    except (OSError, UnicodeDecodeError, IndexError):
        expected = ""
    if expected is None:
        raise CheckpointError(
            f"{path} is not a largebatch checkpoint: no checksum file {side.name} beside it (copy both files)"
        )
    return expected, memoryview(data), FORMAT


def load_checkpoint(path: Path) -> dict:
    """Read and verify a checkpoint; nothing is unpickled beyond tensors and plain values.

    Raises:
        CheckpointError: if the file is missing, is not a largebatch checkpoint, fails its checksum
            (truncated or corrupt), holds pickled objects (refused by ``weights_only=True``), or its
            model weights are not all finite.
    """
    path = Path(path)
    expected, blob, fmt = _read_verifiable(path)
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
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state_dict of tensors")
    if bad := nonfinite_tensors(ckpt["model"]):
        raise CheckpointError(
            f"{path} holds non-finite weights ({_count_names(bad, len(ckpt['model']))}): not a usable checkpoint"
        )
    return ckpt


def nonfinite_tensors(state_dict: dict) -> list[str]:
    """The names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [
        name
        for name, t in state_dict.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _count_names(names: list[str], total: int) -> str:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} of {total} tensors: {shown}"


def load_model_state(model: torch.nn.Module, state: dict, source: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, after checking that the two have the same tensors.

    Raises:
        CheckpointError: one line naming ``source`` and the first missing, unexpected and mis-shaped
            tensors (``load_state_dict``'s own message spans many lines).
    """
    own = model.state_dict()
    problems = []
    if missing := [k for k in own if k not in state]:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected := [k for k in state if k not in own]:
        problems.append(
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} of another shape ({k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)"
        )
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model the config builds: tensors {'; '.join(problems)}; were the "
            f"weights written with another model.name, width or data set?"
        )
    model.load_state_dict(state)


def newest_usable_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that passes :func:`load_checkpoint` (checksum, format and
    finite weights), or None; quietly, for messages about what a stopped run kept."""
    return next((p for p in reversed(list_checkpoints(run_dir)) if _usable(p)), None)


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
    normalization mean/std, classes (:func:`largebatch.train.outputs.model_card`)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, [buffer.getvalue()])
    if info is not None:
        _atomic_write(path.with_suffix(".json"), [(json.dumps(info, indent=2) + "\n").encode()])
    return path
