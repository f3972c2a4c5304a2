"""Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test images, 28x28 grayscale, 10 classes.

The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally ``.gz``) are read from ``data.root``; by default from
``$LARGEBATCH_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``, where Debian's
``dataset-fashion-mnist`` package puts them.
Parsing is torchvision's (``torchvision.datasets.FashionMNIST``); gzip files are first decompressed
into a cache directory, atomically, so concurrent workers never read a half-written file, and a file
that cannot be decompressed leaves nothing behind. :func:`prepare_files` runs before any worker starts
and checks each file's IDX header (magic number, dimensions) and length, naming the file at fault.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from largebatch.data.samplers import derive_seed

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HOW_TO_GET = (
    "On Debian/Ubuntu as root: apt-get install -y dataset-fashion-mnist (puts them in "
    f"{DEFAULT_ROOT}). Elsewhere: download the four files from "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) into a folder and pass "
    "--set data.root=THAT_FOLDER."
)


IDX = {  # magic number (0x0803: unsigned bytes, 3 dimensions; 0x0801: 1 dimension), image dimensions
    "train-images-idx3-ubyte": (0x0803, (28, 28)),
    "train-labels-idx1-ubyte": (0x0801, ()),
    "t10k-images-idx3-ubyte": (0x0803, (28, 28)),
    "t10k-labels-idx1-ubyte": (0x0801, ()),
}
NUM_CLASSES = 10
"""Labels of Fashion-MNIST are 0-9; a larger one would index past the model's 10 logits."""


def check_idx(raw: Path, name: str, source: Path) -> int:
    """Check that the decompressed file ``raw`` is an IDX file as Fashion-MNIST's ``name`` is (its
    magic number, 28x28 images, a length that matches its header, labels in [0, 10)); returns its
    number of items.

    Raises:
        ValueError: naming ``source`` (the user's file) and what is wrong.
    """
    magic, item = IDX[name]
    header = 8 + 4 * len(item)
    with open(raw, "rb") as f:
        head = f.read(header)
    if len(head) < header:
        raise ValueError(f"{source}: {len(head)} bytes, shorter than an IDX header; replace it with a fresh copy")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        raise ValueError(
            f"{source}: not the IDX file {name} (magic number {got:#010x}, expected {magic:#010x}); "
            f"is it another file under that name?"
        )
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(1 + len(item)))
    if dims[1:] != item:
        raise ValueError(f"{source}: holds items of shape {dims[1:]}, Fashion-MNIST's {name} holds {item}")
    size, want = raw.stat().st_size, header + math.prod(dims)
    if size != want:
        raise ValueError(
            f"{source}: {size} bytes{' after decompression' if source != raw else ''}, expected {want} for "
            f"{dims[0]} items (truncated or padded); replace it with a fresh copy"
        )
    if not item:  # a labels file: every label one of the 10 classes (60,000 bytes at most, read at C speed)
        with open(raw, "rb") as f:
            labels = f.read()[header:]
        if labels and max(labels) >= NUM_CLASSES:
            index = next(i for i, label in enumerate(labels) if label >= NUM_CLASSES)
            raise ValueError(
                f"{source}: label {labels[index]} at index {index} is outside Fashion-MNIST's classes "
                f"0-{NUM_CLASSES - 1} (a damaged file or another data set's); replace it with a fresh copy"
            )
    return dims[0]


def _check_pairs(counts: dict[str, int], files: dict[str, Path]) -> None:
    for split in ("train", "t10k"):
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if images != labels:
            raise ValueError(
                f"{files[f'{split}-labels-idx1-ubyte']}: {labels} labels for the {images} images of "
                f"{files[f'{split}-images-idx3-ubyte']}; the two files do not belong together"
            )


def prepare_files(root: str) -> Path:
    """Find, decompress (into the cache) and check the four files; returns torchvision's root.

    Raises:
        FileNotFoundError: a file is missing (see :func:`find_files`).
        ValueError: a file cannot be decompressed or is not the IDX file it is named after.
    """
    return _prepare_raw(find_files(root))


def default_root() -> str:
    """$LARGEBATCH_FASHION_MNIST if set, else Debian's location."""
    return os.environ.get("LARGEBATCH_FASHION_MNIST") or DEFAULT_ROOT


def cache_dir() -> Path:
    """Where decompressed files go: $LARGEBATCH_CACHE, else ~/.cache/largebatch; about 53 MB per
    set of source files (one ``fashion-mnist-*`` entry each, see :func:`_prepare_raw`). Deleting the
    folder is safe: it is rebuilt on the next run."""
    return Path(os.environ.get("LARGEBATCH_CACHE", Path.home() / ".cache" / "largebatch"))


def find_files(root: str) -> dict[str, Path]:
    """Map each of the four IDX names to the file found in ``root`` (plain or .gz).

    Raises:
        FileNotFoundError: naming the folder, the missing files and how to get them.
    """
    folder = Path(root or default_root())
    found, missing = {}, []
    for name in FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file() and candidate.stat().st_size > 0:
                found[name] = candidate
                break
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {folder} lacks {', '.join(missing)} (plain or .gz). {HOW_TO_GET}"
        )
    return found


SOURCES_FILE = "sources.json"
"""In each cache entry: the absolute paths of the source files it was made from (a JSON list)."""

ENTRY_PREFIX = "fashion-mnist-"
"""Cache entries are the folders ``<cache_dir()>/fashion-mnist-<hash of the sources' paths, sizes, mtimes>``."""


def _flock(fd: int, operation: int) -> bool:
    """flock(2) on ``fd``; False when a non-blocking request would block."""
    try:
        fcntl.flock(fd, operation)
        return True
    except BlockingIOError:
        return False


def _enter_entry(root: Path) -> int:
    """Make the cache entry ``root`` if needed and hold a shared lock on it (an open descriptor of the
    folder; flock). A process that removes an entry holds it exclusively, so an entry in use by
    another process (being written or read) is never removed, and one removed meanwhile is made again.

    Raises:
        ValueError: the cache folder cannot be written (naming it and ``LARGEBATCH_CACHE``).
    """
    for _ in range(20):
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:  # removed between mkdir and open by a process cleaning the cache
            continue
        except OSError as err:
            raise ValueError(
                f"the Fashion-MNIST cache {root.parent} cannot be written ({err.strerror or err}); set "
                f"LARGEBATCH_CACHE to a writable folder"
            ) from None
        _flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(root).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # removed while we waited for the lock: make it again
    raise ValueError(f"the Fashion-MNIST cache entry {root} keeps disappearing; is another program removing it?")


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_entry_if_unused(entry: Path, fd: int) -> bool:
    """Remove the cache entry ``entry`` (``fd``: an open descriptor of it) when no other process holds
    it; True when removed."""
    if entry.is_symlink() or not _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
        return False
    shutil.rmtree(entry, ignore_errors=True)
    return True


def _remove_older_entries(entry: Path, sources: list[str]) -> None:
    """Remove the other cache entries made from the same source paths (older copies or versions of
    the same files), except those another process is writing or reading. Only folders named
    ``fashion-mnist-*`` directly in the cache folder that record their sources are considered."""
    for other in entry.parent.glob(f"{ENTRY_PREFIX}*"):
        if other == entry or other.is_symlink() or not other.is_dir():
            continue
        try:
            if json.loads((other / SOURCES_FILE).read_text()) != sources:
                continue
            fd = os.open(other, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (OSError, ValueError):  # no record (another program's folder, an older version's), or gone
            continue
        try:
            _remove_entry_if_unused(other, fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _prepared(files: dict[str, Path]) -> Iterator[Path]:
    """:func:`_prepare_raw` whose cache entry is held (not removed by another process) while inside."""
    if all(p.suffix != ".gz" for p in files.values()):
        parents = {p.parent for p in files.values()}
        if len(parents) == 1 and next(iter(parents)).parts[-2:] == ("FashionMNIST", "raw"):
            _check_pairs({name: check_idx(src, name, src) for name, src in files.items()}, files)
            yield next(iter(parents)).parent.parent
            return
    key = str(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()))
    sources = sorted(os.path.abspath(p) for p in files.values())
    root = cache_dir() / f"{ENTRY_PREFIX}{derive_seed(key):016x}"
    fd = _enter_entry(root)
    try:
        try:
            if not (root / SOURCES_FILE).is_file():
                _write_atomically(root / SOURCES_FILE, json.dumps(sources) + "\n")
            _fill_entry(root, files)
        except BaseException:  # nothing usable: leave no entry behind (unless another process holds it)
            _remove_entry_if_unused(root, fd)
            raise
        _remove_older_entries(root, sources)
        yield root
    finally:
        os.close(fd)


def _prepare_raw(files: dict[str, Path]) -> Path:
    """A folder laid out as torchvision expects (``<root>/FashionMNIST/raw/<name>``) holding the
    decompressed files; returns ``<root>``.

    The cache stays bounded: making the entry of a set of source files removes the entries made
    before from the same paths (a touched or re-copied source), and a failed attempt leaves no entry.
    Entries another process is using are left alone.

    Raises:
        ValueError: a file cannot be decompressed or is not the IDX file it is named after, or the
            cache folder cannot be written.
    """
    with _prepared(files) as root:
        return root


def _fill_entry(root: Path, files: dict[str, Path]) -> None:
    """Decompress (atomically) and check the files into the entry ``root``, reusing valid ones."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, src in files.items():
        dst = raw / name
        if dst.is_file():
            try:
                counts[name] = check_idx(dst, name, src)
                continue
            except ValueError:
                dst.unlink(missing_ok=True)  # not what it should be: decompress again
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb") as inp:
                shutil.copyfileobj(inp, out)
            counts[name] = check_idx(Path(tmp), name, src)
        except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            Path(tmp).unlink(missing_ok=True)
            raise ValueError(
                f"{src}: cannot be read as {'gzip' if src.suffix == '.gz' else 'a file'} ({err}); "
                f"replace it with a fresh copy"
            ) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.replace(tmp, dst)
    _check_pairs(counts, files)


def load_fashion_mnist(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_images, train_labels, test_images, test_labels): uint8 (N, 1, 28, 28) and int64 (N,).

    Raises:
        FileNotFoundError: if a file is missing (see :func:`find_files`).
        ValueError: if a file is not a valid IDX file of the expected shape.
    """
    from torchvision.datasets import FashionMNIST

    with _prepared(find_files(root)) as tv_root:  # the cache entry is held while torchvision reads it
        out = []
        for train in (True, False):
            try:
                ds = FashionMNIST(str(tv_root), train=train, download=False)
            except (AssertionError, RuntimeError, ValueError) as err:
                raise ValueError(
                    f"Fashion-MNIST files in {root or default_root()} are not valid IDX files: {err}"
                ) from None
            if ds.data.shape[1:] != (28, 28) or ds.data.shape[0] != ds.targets.shape[0]:
                raise ValueError(
                    f"Fashion-MNIST files in {root or default_root()} have unexpected shapes {tuple(ds.data.shape)}"
                )
            out += [ds.data.unsqueeze(1).contiguous(), ds.targets.long()]
    return out[0], out[1], out[2], out[3]
