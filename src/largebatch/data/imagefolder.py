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


def check_layout(root: str) -> tuple[Path, Path]:
    """Return (train_dir, val_dir) of an ImageNet-layout folder.

    Raises:
        FileNotFoundError: naming the missing folder and the expected layout.
    """
    base = Path(root)
    dirs = []
    for split in ("train", "val"):
        d = base / split
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            raise FileNotFoundError(
                f"data.root={root!r}: {d} is missing or has no class folders; expected "
                f"{base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG"
            )
        dirs.append(d)
    return dirs[0], dirs[1]


class ImageFolderData:
    """Train/val ImageFolders read by DataLoader workers; same interface as TensorImageData."""

    def __init__(self, root: str, *, image_size_px: int, augment: bool, loader_workers: int,
                 train_subset: int, test_subset: int, device: torch.device) -> None:
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
        self.train_set = datasets.ImageFolder(str(train_dir), transform=train_tf)
        self.val_set = datasets.ImageFolder(str(val_dir), transform=eval_tf)
        if self.train_set.classes != self.val_set.classes:
            raise ValueError(f"data.root={root!r}: train/ and val/ have different class folders")
        self.num_classes = len(self.val_set.classes)
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
        for images, labels in self._loader(self.train_set, sampler, loader_seed):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def eval_batches(self, *, world_size: int, rank: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = eval_shard(self.num_test, world_size=world_size, rank=rank)
        batches = [c.tolist() for c in idx.split(batch_size)]
        for images, labels in self._loader(self.val_set, batches, 0):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
