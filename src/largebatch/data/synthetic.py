"""A synthetic image data set for benchmarks and tests: learnable, deterministic, no files.

Class c has a fixed random template image; a sample is its class template plus Gaussian noise,
quantized to uint8. Everything is drawn from a generator seeded by ``seed``.
"""

from __future__ import annotations

import torch


def make_synthetic(
    *, num_train: int, num_test: int, num_classes: int, channels: int, size_px: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_images, train_labels, test_images, test_labels), uint8 (N, C, S, S) and int64 (N,)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, size_px, size_px, generator=g) * 160 + 48

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, channels, size_px, size_px, generator=g) * 40
        return (templates[labels] + noise).clamp_(0, 255).to(torch.uint8), labels

    train_x, train_y = split(num_train)
    test_x, test_y = split(num_test)
    return train_x, train_y, test_x, test_y
