"""``largebatch data check``: validate every image file of a data set before a long run.

Real ImageNet holds files that break or surprise a pipeline: a few CMYK and grayscale JPEGs, a PNG
saved under a ``.JPEG`` name, and, after a bad copy, zero-byte or truncated files. Each file is read
and decoded with torchvision.io (libjpeg-turbo, libpng: the decoders the training pipeline uses) and
classified:

* bad (the run would fail on them, or skip them under ``data.imagefolder.bad_file_policy=skip``): ``empty``
  (zero bytes), ``unreadable`` (the OS refused), ``not_an_image`` (no known image signature and not
  decodable), ``corrupt`` (an image signature, but decoding fails: truncated or damaged);
* odd but valid (decoded and converted to RGB by the pipeline): ``cmyk``, ``grayscale``,
  ``png_as_jpeg`` (PNG data under a JPEG name), ``other_format`` (GIF, BMP, WebP, TIFF data).

The report (JSON) lists every bad and odd file with its kind and the decoder's message, and the
counts. Exit status: 0 when no file is bad, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they are still the
# libjpeg-turbo / libpng decoders the pipeline uses, so the check uses them too (docs/data.md).
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

BAD_KINDS = ("empty", "unreadable", "not_an_image", "corrupt")
ODD_KINDS = ("cmyk", "grayscale", "png_as_jpeg", "other_format")
JPEG_SUFFIXES = (".jpg", ".jpeg")
SKIPPED_SUFFIXES = (".txt", ".csv", ".json", ".tsv", ".xml", ".md")
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF8": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}


@dataclass
class FileResult:
    path: str
    kind: str
    """``ok``, one of BAD_KINDS or one of ODD_KINDS."""
    detail: str = ""


def _signature(head: bytes) -> str:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _SIGNATURES.items():
        if head.startswith(magic):
            return name
    return ""


def check_file(path: str) -> FileResult:
    """Classify one file (module docstring). Never raises."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return FileResult(path, "unreadable", str(err))
    if not data:
        return FileResult(path, "empty", "0 bytes")
    fmt = _signature(data[:16])
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as err:
        message = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        return FileResult(path, "corrupt" if fmt else "not_an_image", f"{fmt or 'unknown'} data: {message}")
    channels = image.shape[0]
    jpeg_name = Path(path).suffix.lower() in JPEG_SUFFIXES
    if fmt == "png" and jpeg_name:
        return FileResult(path, "png_as_jpeg", f"PNG data, {channels} channel(s)")
    if fmt not in ("jpeg", "png"):
        return FileResult(path, "other_format", f"{fmt or 'unknown'} data, {channels} channel(s)")
    if channels == 4 and fmt == "jpeg":
        return FileResult(path, "cmyk", "4-channel (CMYK) JPEG")
    if channels in (1, 2):
        return FileResult(path, "grayscale", f"{channels} channel(s)")
    return FileResult(path, "ok")


@dataclass
class CheckReport:
    root: str
    files: int = 0
    counts: dict = field(default_factory=dict)
    bad: list = field(default_factory=list)
    odd: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


def data_files(root: Path) -> list[Path]:
    """Every regular, non-hidden file below ``root`` except metadata (labels files and the like)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.lower().endswith(SKIPPED_SUFFIXES):
                out.append(Path(dirpath) / name)
    return out


def check_dataset(root: str, *, workers: int = 0, progress: bool = True) -> CheckReport:
    """Check every data file below ``root`` with ``workers`` processes (0: all CPU cores).

    Raises:
        FileNotFoundError: if ``root`` is not a directory.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"{root!r} is not a directory; give the data set's root (e.g. the folder holding train/ and val/)"
        )
    files = [str(p) for p in data_files(base)]
    workers = workers or os.cpu_count() or 1
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="file", desc="checking", disable=not progress, dynamic_ncols=True)
    results: list[FileResult] = []
    if workers == 1 or len(files) < 64:
        for path in files:
            results.append(check_file(path))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(check_file, files, chunksize=64):
                results.append(result)
                bar.update(1)
    bar.close()
    report = CheckReport(root=str(base), files=len(files))
    for r in results:
        report.counts[r.kind] = report.counts.get(r.kind, 0) + 1
        if r.kind in BAD_KINDS:
            report.bad.append(asdict(r))
        elif r.kind in ODD_KINDS:
            report.odd.append(asdict(r))
    return report


def write_report(report: CheckReport, path: Path) -> None:
    data = asdict(report)
    data["ok"] = report.ok
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def summary_lines(report: CheckReport) -> list[str]:
    lines = [
        f"{report.files} files checked under {report.root}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    ]
    for r in report.bad:
        lines.append(f"BAD  {r['kind']:<13} {r['path']}  ({r['detail']})")
    for r in report.odd:
        lines.append(f"odd  {r['kind']:<13} {r['path']}  ({r['detail']}; converted to RGB in training)")
    return lines
