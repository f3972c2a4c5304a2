"""Data sets, samplers and batched augmentation."""

from __future__ import annotations

from pathlib import Path

import torch

from largebatch.data.samplers import GlobalBatchSampler, derive_seed, eval_shard
from largebatch.plan import FASHION_MNIST_TRAIN_SAMPLES, train_images, train_set_images  # noqa: F401  (re-exported)

__all__ = ["GlobalBatchSampler", "build_data", "check_data", "derive_seed", "eval_shard", "validation_split"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Label names of Fashion-MNIST's classes 0-9 (Xiao, Rasul, Vollgraf 2017, Table 1)."""


def check_data(cfg) -> None:
    """Cheap checks that run before any worker starts: the files or folders exist, and the training
    set (where its size is known without reading it) holds at least one global batch (a user factory
    is checked against its contract by :func:`largebatch.config.validate`).

    Fashion-MNIST's files are decompressed into the cache here, once, and their IDX headers,
    lengths and label ranges checked.

    Raises:
        FileNotFoundError: naming the path and how to fix it.
        ConfigError: when the training set is smaller than the global batch, or a Fashion-MNIST file
            is damaged (truncated gzip, wrong magic number, wrong length, a label outside 0-9; the
            file named).
    """
    from largebatch.config import ConfigError

    data_cfg = cfg.data
    if train_set_images(cfg) is not None:  # the size is known without reading the data
        n = train_images(cfg, val_size=0)
        if data_cfg.val_size >= n:
            raise ConfigError(
                f"data.val_size={data_cfg.val_size} holds out all {n} training samples of "
                f"{data_cfg.name}; hold out fewer (5000 of Fashion-MNIST's 60,000, say)"
            )
        n = train_images(cfg)
        largest, key = cfg.train.global_batch_size, "train.global_batch_size"
        for i, stage in enumerate(cfg.train.batch_schedule):
            if stage.global_batch_size > largest:
                largest, key = stage.global_batch_size, f"train.batch_schedule[{i}].global_batch_size"
        if n < largest:
            raise ConfigError(
                f"{key}={largest} exceeds the {n} training samples of "
                f"{data_cfg.name} (data.train_subset={data_cfg.train_subset}); an epoch would have no step: lower "
                f"the global batch or use more samples"
            )
    if data_cfg.name == "fashion_mnist":
        from largebatch.data.fashion_mnist import prepare_files

        try:
            prepare_files(data_cfg.root)  # decompressed into the cache and checked, once, here
        except ValueError as err:
            raise ConfigError(str(err)) from None
    elif data_cfg.name == "imagefolder":
        from largebatch.data.layout import check_layout

        if data_cfg.imagefolder.decoder == "dali":
            from largebatch.data.dali import require_dali

            require_dali()

        from largebatch.data.shards import is_prepared

        if is_prepared(data_cfg.root):
            return
        check_layout(data_cfg.root, flat_val=bool(data_cfg.imagefolder.val_labels))
        if data_cfg.imagefolder.val_labels and not Path(data_cfg.imagefolder.val_labels).is_file():
            raise FileNotFoundError(
                f"data.imagefolder.val_labels={data_cfg.imagefolder.val_labels!r} is not a file; give ImageNet's "
                f"LOC_val_solution.csv or a '<file> <wnid>' list, or leave it empty for val/<wnid>/"
            )


def build_data(cfg, *, device: torch.device):
    """The data set named by ``cfg.data.name``, with ``num_train``, ``num_test``, ``num_classes``,
    ``in_channels``, ``train_batches(sampler, seed=...)`` and ``eval_batches(...)``."""
    d = cfg.data
    if d.name == "imagefolder":
        from largebatch.data.imagefolder import ImageFolderData

        return ImageFolderData(
            d.root,
            image_size_px=d.image_size_px,
            augment=d.augment,
            loader_workers=d.imagefolder.loader_workers,
            train_subset=d.train_subset,
            test_subset=d.test_subset,
            device=device,
            bad_file_policy=d.imagefolder.bad_file_policy,
            decoder=d.imagefolder.decoder,
            val_labels=d.imagefolder.val_labels,
            decode_on=d.imagefolder.decode_on,
        )
    train_x, train_y, test_x, test_y, num_classes, classes = _tensors(cfg)
    if d.train_subset:
        train_x, train_y = train_x[: d.train_subset], train_y[: d.train_subset]
    if d.test_subset:
        test_x, test_y = test_x[: d.test_subset], test_y[: d.test_subset]
    val = None
    if d.val_size:
        train_idx, val_idx = validation_split(train_x.shape[0], d.val_size, seed=cfg.train.seed)
        val = (train_x[val_idx], train_y[val_idx])
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    from largebatch.data.tensors import TensorImageData

    return TensorImageData(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        augment=d.augment,
        padding_px=d.crop_padding_px,
        device=device,
        val=val,
        classes=classes,
        resize_stages=[(st.start_epoch, st.image_size_px) for st in d.resize_stages],
    )


def _tensors(cfg):
    """(train images, train labels, test images, test labels, number of classes, class names or None)
    of an in-memory data set: Fashion-MNIST, the synthetic set or a user factory.

    Raises:
        ValueError: ``data.name`` is none of these and not a user factory.
    """
    d = cfg.data
    if d.name == "fashion_mnist":
        from largebatch.data.fashion_mnist import load_fashion_mnist

        train_x, train_y, test_x, test_y = load_fashion_mnist(d.root)
        num_classes, classes = 10, list(FASHION_MNIST_CLASSES)
    elif d.name == "synthetic":
        from largebatch.data.synthetic import make_synthetic

        train_x, train_y, test_x, test_y = make_synthetic(
            num_train=d.synthetic.train_samples,
            num_test=d.synthetic.test_samples,
            num_classes=d.synthetic.classes,
            channels=d.synthetic.channels,
            size_px=d.image_size_px,
            seed=cfg.train.seed,
        )
        num_classes, classes = d.synthetic.classes, None
    else:
        from largebatch.registry import DATASET_GROUP, is_plugin, load_user_dataset

        if not is_plugin(d.name, DATASET_GROUP):
            raise ValueError(
                f"data.name={d.name!r} is unknown; accepted: fashion_mnist, synthetic, imagefolder or a "
                f"user factory package.module:callable (docs/api.md)"
            )
        user = load_user_dataset(d.name, root=d.root, seed=cfg.train.seed)
        train_x, train_y, test_x, test_y = (
            user[k] for k in ("train_images", "train_labels", "test_images", "test_labels")
        )
        num_classes, classes = user["num_classes"], user.get("classes")
    return train_x, train_y, test_x, test_y, num_classes, classes


def validation_split(num_samples: int, val_size: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) of a training set of ``num_samples``: ``val_size``
    indices drawn by a permutation seeded by (seed, "validation split"), both sorted, disjoint and
    covering all samples. A function of its arguments only, so every rank holds out the same images.

    Raises:
        ValueError: if ``val_size`` is not in [1, num_samples).
    """
    if not 0 < val_size < num_samples:
        raise ValueError(
            f"data.val_size={val_size} must be between 1 and {num_samples - 1} "
            f"(the training set has {num_samples} samples)"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, "validation split"))
    perm = torch.randperm(num_samples, generator=g)
    return perm[val_size:].sort().values, perm[:val_size].sort().values
