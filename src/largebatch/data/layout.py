"""Files of an ImageNet-layout folder, without torch: the layout check, the flat-val labels file, the
image suffixes, ImageNet's normalization and the error of an undecodable image. Every image-folder
module (the DataLoader pipeline, the batch decoders, DALI, the shards) uses these; they import
nothing of each other's."""

from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_layout(root: str, *, flat_val: bool = False) -> tuple[Path, Path]:
    """Return (train_dir, val_dir) of an ImageNet-layout folder; cheap enough to run before workers
    start (it lists folders and stops at the first image of each split).

    Raises:
        FileNotFoundError: naming the missing or empty folder and the expected layout.
    """
    base = Path(root)
    layout = f"expected {base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG"
    if not base.is_dir():
        raise FileNotFoundError(f"data.root={root!r} is not a directory; {layout}")
    dirs = []
    for split in ("train", "val"):
        d = base / split
        if split == "val" and flat_val:  # images directly in val/, labels from data.imagefolder.val_labels
            if not d.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()):
                raise FileNotFoundError(
                    f"data.root={root!r}: {d} holds no image files (data.imagefolder.val_labels is set, so "
                    f"val/ is read flat: {base}/val/*.JPEG)"
                )
            dirs.append(d)
            continue
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            loose = d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())
            raise FileNotFoundError(
                f"data.root={root!r}: {d} is missing or has no class folders"
                f"{' (it holds images directly: put each class in its own folder)' if loose else ''}; {layout}"
            )
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for c in d.iterdir() if c.is_dir() for p in c.iterdir()):
            raise FileNotFoundError(
                f"data.root={root!r}: the class folders of {d} hold no image files "
                f"({', '.join(IMAGE_SUFFIXES)}); {layout}"
            )
        dirs.append(d)
    return dirs[0], dirs[1]


class BadImageError(RuntimeError):
    """An image file could not be decoded (zero-byte, truncated, not an image)."""


def read_val_labels(path: str, classes: list[str]) -> dict[str, int]:
    """{file name: class index} from a labels file for a flat ``val/``: either ImageNet's
    ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first word is the wnid) or lines of
    ``<file name> <wnid or class index>``.

    Raises:
        ValueError: naming the file and line that cannot be read, or an unknown class.
    """
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    lines = Path(path).read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("ImageId"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected '<file> <class>' or ImageNet's CSV, got {line!r}")
        name, label = parts[0], parts[1]
        if label in index:
            value = index[label]
        elif label.isdigit() and int(label) < len(classes):
            value = int(label)
        else:
            raise ValueError(f"{path}:{n}: class {label!r} is not one of the {len(classes)} train/ class folders")
        out[name] = value
        stem = Path(name).stem
        out.setdefault(stem, value)
    return out
