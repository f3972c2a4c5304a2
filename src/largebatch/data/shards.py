"""``largebatch data prepare``: an ImageNet folder as pre-resized tar shards with an index.

Layout of a prepared directory::

    largebatch-shards.json            classes, splits, and per split the shard files and the index
    train-000000.tar, train-000001.tar ...   members <index>.jpg (JPEG bytes) and <index>.cls (label)
    val-000000.tar ...

Each image is decoded (torchvision.io: CMYK, grayscale and PNG-under-JPEG files become RGB), its
shorter side resized to at most ``max_side_px`` (antialiased; smaller images are kept as they are),
re-encoded as JPEG at ``quality`` and written in file order into shards of about ``shard_mb``. The tars
are plain POSIX tars (any tar tool, WebDataset, object storage streaming read them); the index
records each sample's shard, byte offset, size and label, so training reads sample i directly with one
seek and one read, and the global-batch sampler splits every epoch over nodes and workers exactly as
for a folder (no sample twice, none skipped). Files that cannot be decoded are left out and listed in
the manifest (``bad_files``).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from largebatch.data.layout import check_layout

MANIFEST = "largebatch-shards.json"

warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)


def _resize_encode(job: tuple[str, int, int]) -> tuple[bytes | None, str]:
    """(JPEG bytes or None, error message) for one source file."""
    from torchvision.io import ImageReadMode, decode_image, encode_jpeg
    from torchvision.transforms.v2 import functional as TF

    path, max_side, quality = job
    try:
        data = Path(path).read_bytes()
        if not data:
            return None, "zero-byte file"
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError) as err:
        return None, str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
    h, w = image.shape[-2:]
    if min(h, w) > max_side:
        scale = max_side / min(h, w)
        image = TF.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    return encode_jpeg(image, quality=quality).numpy().tobytes(), ""


def _write_split(out: Path, split: str, samples, encoded, shard_mb: float, bad_files: list, bar) -> tuple[list, list]:
    """Write one split's encoded images into tar shards of about ``shard_mb`` MiB under ``out``
    (``SPLIT-NNNNNN.tar``, members ``KEY.cls`` and ``KEY.jpg``); files that failed to decode go to
    ``bad_files``. Returns (shard names, index rows [shard, byte offset, length, label])."""
    shards: list[str] = []
    index: list[list[int]] = []
    tar, shard_bytes = None, 0
    for (path, label), (blob, error) in zip(samples, encoded):
        bar.update(1)
        if blob is None:
            bad_files.append({"path": path, "error": error})
            continue
        if tar is None or shard_bytes >= shard_mb * 2**20:
            if tar is not None:
                tar.close()
            name = f"{split}-{len(shards):06d}.tar"
            shards.append(name)
            tar, shard_bytes = tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT), 0
        key = f"{len(index):08d}"
        for suffix, payload in ((".cls", str(label).encode()), (".jpg", blob)):
            info = tarfile.TarInfo(key + suffix)
            info.size, info.mtime = len(payload), 0
            data_offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
            tar.addfile(info, io.BytesIO(payload))
        tar.members.clear()  # the index below is what we keep; do not hold every TarInfo in memory
        index.append([len(shards) - 1, data_offset, len(blob), label])
        shard_bytes += len(blob) + 1024
    if tar is not None:
        tar.close()
    return shards, index


def _checked_paths(src: str, dst: str, max_side_px: int, quality: int, shard_mb: float) -> tuple[Path, Path, Path]:
    """(train folder, val folder, destination) of :func:`prepare`, after its checks (see there)."""
    if max_side_px < 8 or not 1 <= quality <= 100 or shard_mb <= 0:
        raise ValueError(
            f"max_side_px={max_side_px}, quality={quality}, shard_mb={shard_mb}: accepted max_side_px >= 8, "
            f"quality in 1..100, shard_mb > 0"
        )
    train_dir, val_dir = check_layout(src)
    out = Path(dst)
    if (out / MANIFEST).exists():
        raise ValueError(
            f"{dst} already holds a prepared data set ({MANIFEST}); choose another destination "
            f"(nothing was overwritten)"
        )
    return train_dir, val_dir, out


def prepare(
    src: str,
    dst: str,
    *,
    max_side_px: int = 256,
    quality: int = 90,
    shard_mb: float = 256.0,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Convert the ImageNet-layout folder ``src`` (train/<wnid>/*, val/<wnid>/*) into shards in
    ``dst``; returns the manifest.

    Raises:
        FileNotFoundError: for a source without the layout (from ``check_layout``).
        ValueError: for a destination that already holds a prepared data set, or bad sizes.
    """
    from torchvision import datasets
    from tqdm import tqdm

    train_dir, val_dir, out = _checked_paths(src, dst, max_side_px, quality, shard_mb)
    out.mkdir(parents=True, exist_ok=True)
    classes = datasets.ImageFolder(str(train_dir)).classes
    manifest: dict = {
        "format": 1,
        "classes": classes,
        "max_side_px": max_side_px,
        "quality": quality,
        "source": str(Path(src).resolve()),
        "splits": {},
        "bad_files": [],
    }
    pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        for split, folder in (("train", train_dir), ("val", val_dir)):
            folder_set = datasets.ImageFolder(str(folder))
            if folder_set.classes != classes:
                raise ValueError(f"{src}: train/ and val/ have different class folders")
            bar = tqdm(
                total=len(folder_set.samples),
                unit="img",
                desc=f"prepare {split}",
                disable=not progress,
                dynamic_ncols=True,
            )
            jobs = ((path, max_side_px, quality) for path, _ in folder_set.samples)
            encoded = pool.map(_resize_encode, jobs, chunksize=16)
            shards, index = _write_split(out, split, folder_set.samples, encoded, shard_mb, manifest["bad_files"], bar)
            bar.close()
            manifest["splits"][split] = {"shards": shards, "index": index, "samples": len(index)}
    finally:
        pool.shutdown()
    (out / MANIFEST).write_text(json.dumps(manifest) + "\n")
    return manifest


def is_remote(root: str) -> bool:
    """True for an fsspec URL (``s3://``, ``gs://``, ``https://``, ``file://`` ...), False for a path."""
    return "://" in root


def _filesystem(root: str):
    """(fsspec file system, path of ``root`` on it).

    Raises:
        ImportError: when fsspec (or the back-end of the URL's protocol) is missing, with the command.
    """
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            f"data.root={root!r} is a URL; reading shards from object storage needs fsspec: "
            f"pip install 'largebatch[remote]'"
        ) from None
    try:
        return fsspec.core.url_to_fs(root)
    except ImportError as err:
        raise ImportError(
            f"data.root={root!r}: {err} (pip install 'largebatch[remote]' installs the s3, gs and http back-ends)"
        ) from None


def is_prepared(root: str) -> bool:
    """Whether ``root`` (a directory or a URL) holds a prepared data set. For a URL this is one
    request, made before any worker starts.

    Raises:
        FileNotFoundError: for a URL without a prepared data set (a URL cannot be an image folder).
    """
    if not is_remote(root):
        return (Path(root) / MANIFEST).is_file()
    fs, path = _filesystem(root)
    if not fs.exists(f"{path.rstrip('/')}/{MANIFEST}"):
        raise FileNotFoundError(
            f"data.root={root!r} holds no {MANIFEST}: a URL must point at the output of "
            f"`largebatch data prepare` (copied to object storage as it is, e.g. with "
            f"`aws s3 sync`); image folders are read from a file system"
        )
    return True


class ShardImages(torch.utils.data.Dataset):
    """One split of a prepared directory: sample i is read from its shard by offset and decoded like
    a folder's file (the same transforms follow). ``samples`` holds (\"shard:offset\", label) for
    reports.

    ``root`` may be a URL that fsspec reads (``s3://bucket/imagenet-shards``, ``gs://...``,
    ``https://...``): each sample is then one byte-range request, and a batch's requests are issued
    together (``fs.cat_ranges``, concurrent on the asynchronous back-ends), from
    :meth:`prefetch` (the DataLoader's batched ``__getitems__``) or :meth:`read_many` (the in-process
    batch decoders). Nothing is downloaded ahead of the epoch, and the split over nodes and workers is
    the sampler's, as for local shards.
    """

    def __init__(self, root: str, split: str, transform) -> None:
        self.remote = is_remote(root)
        if self.remote:
            fs, path = _filesystem(root)
            manifest = json.loads(fs.cat_file(f"{path.rstrip('/')}/{MANIFEST}"))
        else:
            manifest = json.loads((Path(root) / MANIFEST).read_text())
        part = manifest["splits"][split]
        self.root, self.transform = (root.rstrip("/") if self.remote else Path(root)), transform
        self.shards = part["shards"]
        self.index = part["index"]
        self.classes = manifest["classes"]
        self.samples = [(f"{self.shards[s]}:{off}", label) for s, off, _, label in self.index]
        self._files: dict[int, int] = {}
        self._fs = None
        self._cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _remote_fs(self):
        if self._fs is None or self._fs[0] != os.getpid():  # one per process: forked workers make their own
            self._fs = (os.getpid(), *_filesystem(self.root))
        return self._fs[1:]

    def read_many(self, indices: list[int]) -> list[bytes]:
        """The encoded bytes of samples ``indices``; for a URL, all requests at once."""
        if not self.remote:
            return [self.read_bytes(i) for i in indices]
        fs, path = self._remote_fs()
        rows = [self.index[i] for i in indices]
        return fs.cat_ranges(
            [f"{path}/{self.shards[r[0]]}" for r in rows], [r[1] for r in rows], [r[1] + r[2] for r in rows]
        )

    def prefetch(self, indices: list[int]) -> None:
        """Fetch a batch's samples of a remote data set together; :meth:`read_bytes` then takes
        them from memory (each once)."""
        if self.remote:
            self._cache.update(zip(indices, self.read_many(indices)))

    def read_bytes(self, i: int) -> bytes:
        if i in self._cache:
            return self._cache.pop(i)
        shard, offset, size, _ = self.index[i]
        if self.remote:
            fs, path = self._remote_fs()
            return fs.cat_file(f"{path}/{self.shards[shard]}", start=offset, end=offset + size)
        fd = self._files.get(shard)
        if fd is None:  # one descriptor per shard and process; pread keeps concurrent threads apart
            fd = self._files[shard] = os.open(self.root / self.shards[shard], os.O_RDONLY)
        return os.pread(fd, size, offset)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_image

        image = decode_image(torch.frombuffer(bytearray(self.read_bytes(i)), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return self.transform(image), self.index[i][3]

    def __getstate__(self):  # open files do not travel to DataLoader workers
        state = dict(self.__dict__)
        state["_files"], state["_fs"], state["_cache"] = {}, None, {}
        return state
