"""ImageNet-layout folders through torchvision: ``root/train/<class>/*`` and ``root/val/<class>/*``.

The plain pipeline (PIL decoding in DataLoader workers, torchvision transforms): the standard
training augmentation (random-resized crop to ``image_size_px`` with scale (0.08, 1) and aspect
(3/4, 4/3), horizontal flip, per-channel normalization) and evaluation (resize to 256/224 of the
crop, centre crop). Batches follow the same :class:`GlobalBatchSampler` as the in-memory data sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Subset

from largebatch.data.samplers import GlobalBatchSampler, derive_seed, eval_shard

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_layout(root: str) -> tuple[Path, Path]:
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
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            loose = d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())
            raise FileNotFoundError(
                f"data.root={root!r}: {d} is missing or has no class folders"
                f"{' (it holds images directly: put each class in its own folder)' if loose else ''}; {layout}"
            )
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for c in d.iterdir() if c.is_dir() for p in c.iterdir()):
            raise FileNotFoundError(f"data.root={root!r}: the class folders of {d} hold no image files "
                                    f"({', '.join(IMAGE_SUFFIXES)}); {layout}")
        dirs.append(d)
    return dirs[0], dirs[1]


class BadImageError(RuntimeError):
    """An image file could not be decoded (zero-byte, truncated, not an image)."""


class _CheckedImages(torch.utils.data.Dataset):
    """An ImageFolder whose unreadable files follow ``policy``: ``fail`` raises
    :class:`BadImageError` naming the file; ``skip`` substitutes the next readable sample of the
    data set (so every batch keeps its size and BN groups) and reports the file with the sample.
    Odd but valid files (grayscale, CMYK, palette PNG) are converted to RGB by PIL."""

    def __init__(self, folder, policy: str) -> None:
        self.folder, self.policy = folder, policy

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        bad = []
        for attempt in range(len(self.folder)):
            i = (index + attempt) % len(self.folder)
            path = self.folder.samples[i][0]
            try:
                image, label = self.folder[i]
                return image, label, "\n".join(bad)
            except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken files
                if self.policy == "fail":
                    raise BadImageError(f"cannot decode {path}: {err}; fix or remove the file, or set "
                                        f"data.bad_file_policy=skip to skip it and get a report") from None
                bad.append(f"{path}\t{type(err).__name__}: {err}")
        raise BadImageError(f"no readable image in {self.folder.root}")


class ImageFolderData:
    """Train/val ImageFolders read by DataLoader workers; same interface as TensorImageData."""

    def __init__(self, root: str, *, image_size_px: int, augment: bool, loader_workers: int,
                 train_subset: int, test_subset: int, device: torch.device, bad_file_policy: str = "fail") -> None:
        from torchvision import datasets, transforms

        train_dir, val_dir = check_layout(root)
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if augment:
            train_tf = transforms.Compose([
                transforms.RandomResizedCrop(image_size_px, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ])
        else:
            train_tf = transforms.Compose([transforms.Resize(image_size_px * 256 // 224),
                                           transforms.CenterCrop(image_size_px), transforms.ToTensor(), normalize])
        eval_tf = transforms.Compose([transforms.Resize(image_size_px * 256 // 224),
                                      transforms.CenterCrop(image_size_px), transforms.ToTensor(), normalize])
        train_folder = datasets.ImageFolder(str(train_dir), transform=train_tf)
        val_folder = datasets.ImageFolder(str(val_dir), transform=eval_tf)
        if train_folder.classes != val_folder.classes:
            raise ValueError(f"data.root={root!r}: train/ and val/ have different class folders")
        self.num_classes = len(val_folder.classes)
        self.train_set = _CheckedImages(train_folder, bad_file_policy)
        self.val_set = _CheckedImages(val_folder, bad_file_policy)
        self.bad_files: list[str] = []
        """Files skipped under bad_file_policy=skip, as 'path<TAB>reason' (this rank's)."""
        if train_subset:
            self.train_set = Subset(self.train_set, range(min(train_subset, len(self.train_set))))
        if test_subset:
            self.val_set = Subset(self.val_set, range(min(test_subset, len(self.val_set))))
        self.in_channels = 3
        self.loader_workers = loader_workers
        self.device = device

    @property
    def num_train(self) -> int:
        return len(self.train_set)

    @property
    def num_test(self) -> int:
        return len(self.val_set)

    def _loader(self, dataset, batch_sampler, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.loader_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )

    def train_batches(self, sampler: GlobalBatchSampler, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler.as_lists = True
        loader_seed = derive_seed(seed, "loader", sampler.rank, sampler.epoch, sampler.start_step)
        for images, labels, bad in self._loader(self.train_set, sampler, loader_seed):
            self._note(bad)
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _note(self, bad: list[str]) -> None:
        for entry in bad:
            for line in filter(None, entry.split("\n")):
                if line not in self.bad_files:
                    self.bad_files.append(line)

    def eval_batches(self, *, world_size: int, rank: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = eval_shard(self.num_test, world_size=world_size, rank=rank)
        batches = [c.tolist() for c in idx.split(batch_size)]
        for images, labels, bad in self._loader(self.val_set, batches, 0):
            self._note(bad)
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
