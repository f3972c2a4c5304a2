"""In-memory image data sets (Fashion-MNIST, synthetic) with batched augmentation.

The images stay as uint8 (N, C, H, W) tensors on the training device; a step gathers its indices,
augments the whole batch at once and normalizes. Augmentation parameters (crop offsets, flips) are
drawn for the *global* batch from a generator seeded by (seed, epoch, step), and each rank takes its
slice, so the augmented global batch does not depend on the number of processes either.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from largebatch.data.samplers import GlobalBatchSampler, derive_seed, eval_shard


def random_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding_px: int) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per sample, in one gather.

    Args:
        images: (N, C, H, W) tensor.
        offsets: (N, 2) int64 top-left corners (y, x) in the padded image, each in [0, 2 * padding_px].
        flips: (N,) bool, True mirrors the sample left-right.
        padding_px: zero padding on each side.

    Returns:
        (N, C, H, W) tensor of the same dtype.
    """
    n, c, h, w = images.shape
    if padding_px:
        padded = torch.nn.functional.pad(images, (padding_px,) * 4)
    else:
        padded = images
    dev = images.device
    rows = (offsets[:, 0:1] + torch.arange(h, device=dev)).view(n, 1, h, 1)
    cols = offsets[:, 1:2] + torch.arange(w, device=dev)
    cols = torch.where(flips[:, None], cols.flip(1), cols).view(n, 1, 1, w)
    return padded[
        torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols
    ]


class TensorImageData:
    """Train and test splits held as uint8 tensors; yields normalized float batches for one rank.

    Args:
        train_images, test_images: uint8 (N, C, H, W).
        train_labels, test_labels: int64 (N,).
        num_classes: number of classes.
        augment: apply random crop (with ``padding_px``) and flip to training batches.
        device: where batches are produced (the data is moved there once).
        val: optional (uint8 images, int64 labels) validation split held out of the training set,
            normalized with the training split's statistics and evaluated like the test split.
        resize_stages: progressive resizing, ``[(start_epoch, image_size_px), ...]`` in increasing
            start epochs: training batches of an epoch are resized (bilinear, antialiased) to the
            size of the last stage that started at or before it (0: the data's own size);
            evaluation batches never are.
    """

    def __init__(
        self,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        *,
        num_classes: int,
        augment: bool,
        padding_px: int,
        device: torch.device,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        classes: list[str] | None = None,
        resize_stages: list[tuple[int, int]] | None = None,
    ) -> None:
        if train_images.dtype != torch.uint8 or train_images.ndim != 4:
            raise ValueError(
                f"train images must be uint8 (N, C, H, W), got {train_images.dtype} {tuple(train_images.shape)}"
            )
        self.device = device
        self.train_images = train_images.to(device)
        self.train_labels = train_labels.to(device)
        self.test_images = test_images.to(device)
        self.test_labels = test_labels.to(device)
        self.val_images = val[0].to(device) if val is not None else None
        self.val_labels = val[1].to(device) if val is not None else None
        self.num_classes = num_classes
        self.classes = list(classes) if classes else None
        self.augment = augment
        self.padding_px = padding_px
        self.resize_stages = sorted(resize_stages or [])
        pixels = train_images.float().div_(255)
        # Per-channel statistics of the training split, used to normalize both splits.
        self.mean = pixels.mean(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)
        self.std = pixels.std(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]

    @property
    def num_test(self) -> int:
        return self.test_images.shape[0]

    @property
    def num_val(self) -> int:
        """Images of the held-out validation split (0: none)."""
        return 0 if self.val_images is None else self.val_images.shape[0]

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    def input_spec(self) -> dict:
        """What a model trained on these batches expects: channels, image size (H, W) in pixels,
        per-channel mean and std of pixels scaled to [0, 1] (``x = (pixels / 255 - mean) / std``),
        and the class names (None if unknown)."""
        return {
            "in_channels": self.in_channels,
            "image_size_px": list(self.train_images.shape[-2:]),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "num_classes": self.num_classes,
            "classes": self.classes,
            "eval_transform": "none: the image as is",
        }

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div_(255) - self.mean) / self.std

    def train_size_px(self, epoch: int) -> int:
        """Side of the training images in ``epoch`` under the resize stages (0: the data's own)."""
        size = 0
        for start, px in self.resize_stages:
            if start <= epoch:
                size = px
        return size

    def train_batches(self, sampler: GlobalBatchSampler, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rank's (images, labels) batches of the sampler's epoch, from its start step."""
        lo = sampler.rank * sampler.per_worker_batch_size
        hi = lo + sampler.per_worker_batch_size
        size = self.train_size_px(sampler.epoch)
        for step, idx in enumerate(sampler, start=sampler.start_step):
            idx = idx.to(self.device)
            images = self.train_images[idx]
            if self.augment:
                g = torch.Generator().manual_seed(derive_seed(seed, "augment", sampler.epoch, step))
                gbs = sampler.global_batch_size
                offsets = torch.randint(0, 2 * self.padding_px + 1, (gbs, 2), generator=g)[lo:hi]
                flips = (torch.rand(gbs, generator=g) < 0.5)[lo:hi]
                images = random_crop_flip(images, offsets.to(self.device), flips.to(self.device), self.padding_px)
            images = self._normalize(images)
            if size and tuple(images.shape[-2:]) != (size, size):
                images = torch.nn.functional.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            yield images, self.train_labels[idx]

    def eval_batches(
        self, *, world_size: int, rank: int, batch_size: int, split: str = "test"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rank's share of the ``test`` (or held-out ``val``) split, every sample exactly once
        across ranks."""
        images, labels = (self.val_images, self.val_labels) if split == "val" else (self.test_images, self.test_labels)
        if images is None:
            raise ValueError("no validation split: set data.val_size to hold out training images")
        idx = eval_shard(images.shape[0], world_size=world_size, rank=rank).to(self.device)
        for chunk in idx.split(batch_size):
            yield self._normalize(images[chunk]), labels[chunk]
