"""Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test images, 28x28 grayscale, 10 classes.

The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally ``.gz``) are read from ``data.root``; by default from
``$LARGEBATCH_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``, where Debian's
``dataset-fashion-mnist`` package puts them.
Parsing is torchvision's (``torchvision.datasets.FashionMNIST``); gzip files are first decompressed
into a cache directory, atomically, so concurrent workers never read a half-written file.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
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


def default_root() -> str:
    """$LARGEBATCH_FASHION_MNIST if set, else Debian's location."""
    return os.environ.get("LARGEBATCH_FASHION_MNIST") or DEFAULT_ROOT


def cache_dir() -> Path:
    """Where decompressed files go: $LARGEBATCH_CACHE, else ~/.cache/largebatch."""
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


def _prepare_raw(files: dict[str, Path]) -> Path:
    """A folder laid out as torchvision expects (``<root>/FashionMNIST/raw/<name>``) holding the
    decompressed files; returns ``<root>``."""
    if all(p.suffix != ".gz" for p in files.values()):
        parents = {p.parent for p in files.values()}
        if len(parents) == 1 and next(iter(parents)).parts[-2:] == ("FashionMNIST", "raw"):
            return next(iter(parents)).parent.parent
    key = str(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()))

    root = cache_dir() / f"fashion-mnist-{derive_seed(key):016x}"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        dst = raw / name
        if dst.is_file():
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        os.replace(tmp, dst)
    return root


def load_fashion_mnist(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_images, train_labels, test_images, test_labels): uint8 (N, 1, 28, 28) and int64 (N,).

    Raises:
        FileNotFoundError: if a file is missing (see :func:`find_files`).
        ValueError: if a file is not a valid IDX file of the expected shape.
    """
    from torchvision.datasets import FashionMNIST

    tv_root = _prepare_raw(find_files(root))
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
