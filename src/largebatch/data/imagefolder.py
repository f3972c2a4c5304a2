"""ImageNet-layout folders through torchvision: ``root/train/<class>/*`` and ``root/val/<class>/*``.

The plain pipeline (PIL decoding in DataLoader workers, torchvision transforms): the standard
training augmentation (random-resized crop to ``image_size_px`` with scale (0.08, 1) and aspect
(3/4, 4/3), horizontal flip, per-channel normalization) and evaluation (resize to 256/224 of the
crop, centre crop). Batches follow the same :class:`GlobalBatchSampler` as the in-memory data sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from largebatch.data.batch_decode import TorchvisionBatchDecoder
from largebatch.data.dali import DaliRunner, require_dali
from largebatch.data.layout import (  # noqa: F401
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImageError,
    check_layout,
    read_val_labels,
)
from largebatch.data.samplers import GlobalBatchSampler, derive_seed, eval_shard
from largebatch.data.shards import ShardImages, is_prepared


class _CheckedImages(torch.utils.data.Dataset):
    """An ImageFolder whose unreadable files follow ``policy``: ``fail`` raises
    :class:`BadImageError` naming the file; ``skip`` substitutes the next readable sample of the
    data set (so every batch keeps its size and BN groups) and reports the file with the sample.
    Odd but valid files (grayscale, CMYK, palette PNG) are converted to RGB by PIL."""

    def __init__(self, folder, policy: str) -> None:
        self.folder, self.policy = folder, policy

    def __len__(self) -> int:
        return len(self.folder)

    def __getitems__(self, indices: list[int]) -> list:
        """The DataLoader's batched fetch: a remote data set's batch is requested at once."""
        if hasattr(self.folder, "prefetch"):
            self.folder.prefetch(list(indices))
        return [self[i] for i in indices]

    def __getitem__(self, index: int):
        bad = []
        for attempt in range(len(self.folder)):
            i = (index + attempt) % len(self.folder)
            path = self.folder.samples[i][0]  # ImageFolder and _DecodedImages both have .samples
            try:
                image, label = self.folder[i]
                return image, label, "\n".join(bad)
            except (OSError, ValueError, SyntaxError, RuntimeError) as err:  # PIL's and torchvision.io's errors
                if self.policy == "fail":
                    raise BadImageError(
                        f"cannot decode {path}: {err}; fix or remove the file, or set "
                        f"data.imagefolder.bad_file_policy=skip to skip it and get a report"
                    ) from None
                bad.append(f"{path}\t{type(err).__name__}: {err}")
        raise BadImageError(f"no readable image in {getattr(self.folder, 'root', 'the data set')}")


_WORKER_ERROR = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.")


def worker_error(err: BaseException) -> BaseException | None:
    """The error a DataLoader worker raised, as one line, from the one torch raises again in the
    loading process (``Caught X in DataLoader worker process N.`` followed by the worker's whole
    traceback), or None for any other error. The same class when it can be made from the message
    (:class:`BadImageError` naming the file), else a RuntimeError ``X: message``."""
    text = str(err.args[0]) if err.args and isinstance(err.args[0], str) else str(err)
    found = _WORKER_ERROR.match(text)
    if found is None or "Original Traceback" not in text:
        return None
    name = found.group(1)
    message = ""
    for line in reversed(text.rstrip().splitlines()):  # the traceback's last 'module.Name: message' line
        head, sep, rest = line.partition(": ")
        if sep and not line[:1].isspace() and (head == name or head.endswith("." + name)):
            message = rest.strip()
            break
    if type(err).__name__ == name:
        try:
            return type(err)(message)
        except Exception:
            pass
    return RuntimeError(f"{name}: {message}")


def _one_line_worker_errors(batches):
    """Iterate ``batches`` (a DataLoader), raising a worker's error as :func:`worker_error` gives it
    (chained to torch's, so the worker's traceback stays in the log) instead of torch's many lines."""
    iterator = iter(batches)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as err:
            plain = worker_error(err)
            if plain is None:
                raise
            raise plain from err
        yield item


class _DecodedImages(torch.utils.data.Dataset):
    """(path, label) samples decoded with torchvision.io (libjpeg-turbo / libpng, straight to RGB
    uint8 CHW, CMYK and grayscale converted) and transformed on uint8 tensors. Normalization happens
    later, batched, on the training device (:meth:`ImageFolderData._normalize`)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def read_bytes(self, index: int) -> bytes:
        return Path(self.samples[index][0]).read_bytes()

    def __getitem__(self, index: int):
        from torchvision.io import ImageReadMode, decode_image

        path, label = self.samples[index]
        data = self.read_bytes(index)
        if not data:
            raise OSError("zero-byte file")
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return self.transform(image), label


def _check_decoding(decoder: str, decode_on: str) -> None:
    """Refuse a decode placement the decoder does not support; make sure DALI imports when asked for.

    Raises:
        ValueError: ``decode_on`` unknown, or ``device`` with a decoder other than torchvision.
        ImportError: (from :func:`require_dali`) ``decoder="dali"`` without NVIDIA DALI installed.
    """
    if decode_on not in ("workers", "device"):
        raise ValueError(f"data.imagefolder.decode_on={decode_on!r} is unknown; accepted: workers, device")
    if decode_on == "device" and decoder != "torchvision":
        raise ValueError(
            f"data.imagefolder.decode_on=device works with data.imagefolder.decoder=torchvision (got {decoder!r}); "
            f"data.imagefolder.decoder=dali always decodes on the device"
        )
    if decoder == "dali":
        require_dali()


def _val_samples(root: str, val_dir, val_labels: str, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) of every validation image: from ``val/<class>/`` folders, or from a flat
    ``val/`` with a labels file (ImageNet's LOC_val_solution.csv or '<file> <wnid>' lines).

    Raises:
        ValueError: a flat val/ file without a label, or val/ folders that differ from train/'s.
    """
    from torchvision import datasets

    if val_labels:
        labels = read_val_labels(val_labels, classes)
        files = sorted(p for p in val_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        missing = [p.name for p in files if p.name not in labels and p.stem not in labels]
        if missing:
            raise ValueError(
                f"data.imagefolder.val_labels={val_labels!r} has no label for {len(missing)} file(s) of {val_dir}, "
                f"e.g. {missing[:3]}"
            )
        return [(str(p), labels.get(p.name, labels.get(p.stem))) for p in files]
    val_folder = datasets.ImageFolder(str(val_dir))
    if val_folder.classes != classes:
        raise ValueError(f"data.root={root!r}: train/ and val/ have different class folders")
    return val_folder.samples


class ImageFolderData:
    """ImageNet-layout folders read by DataLoader workers; same interface as TensorImageData.

    ``decoder="torchvision"`` (default, the fast path): files are decoded from bytes with
    torchvision.io and augmented on uint8 tensors (transforms.v2: crop first, then an antialiased
    resize of the crop only), batches travel as uint8 (4x less than float) and are normalized on the
    training device. ``decoder="pil"``: torchvision's plain ImageFolder + PIL pipeline (the
    baseline of benchmarks/data_pipeline.py). Same augmentation either way.
    """

    def __init__(
        self,
        root: str,
        *,
        image_size_px: int,
        augment: bool,
        loader_workers: int,
        train_subset: int,
        test_subset: int,
        device: torch.device,
        bad_file_policy: str = "fail",
        decoder: str = "torchvision",
        val_labels: str = "",
        decode_on: str = "workers",
    ) -> None:
        from torchvision import datasets

        _check_decoding(decoder, decode_on)
        self.decoder, self.decode_on, self.image_size_px, self.augment = decoder, decode_on, image_size_px, augment
        if is_prepared(root):  # `largebatch data prepare` output: read the shards by index
            if decoder == "pil":
                raise ValueError(
                    f"data.root={root!r} holds prepared shards, read with data.imagefolder.decoder=torchvision or dali"
                )
            train_tf, eval_tf = self._transforms("torchvision", image_size_px, augment)
            self._finish(
                ShardImages(root, "train", train_tf),
                ShardImages(root, "val", eval_tf),
                bad_file_policy,
                train_subset,
                test_subset,
                loader_workers,
                device,
            )
            self.num_classes = len(self.train_set_classes)
            return
        train_dir, val_dir = check_layout(root, flat_val=bool(val_labels))
        train_folder = datasets.ImageFolder(str(train_dir))
        classes = train_folder.classes
        val_samples = _val_samples(root, val_dir, val_labels, classes)
        self.num_classes = len(classes)
        train_tf, eval_tf = self._transforms(decoder, image_size_px, augment)
        if decoder in ("torchvision", "dali"):
            train_base, val_base = _DecodedImages(train_folder.samples, train_tf), _DecodedImages(val_samples, eval_tf)
        elif decoder == "pil":
            train_base = datasets.ImageFolder(str(train_dir), transform=train_tf)
            val_base = datasets.ImageFolder(str(train_dir), transform=eval_tf)  # replaced below
            val_base.samples = val_base.imgs = list(val_samples)
            val_base.targets = [label for _, label in val_samples]
        else:
            raise ValueError(f"data.imagefolder.decoder={decoder!r} is unknown; accepted: torchvision, pil, dali")
        self._finish(train_base, val_base, bad_file_policy, train_subset, test_subset, loader_workers, device)

    def _finish(self, train_base, val_base, bad_file_policy, train_subset, test_subset, loader_workers, device) -> None:
        self.train_set_classes = getattr(train_base, "classes", None)
        self._bases, self.bad_file_policy = {"train": train_base, "val": val_base}, bad_file_policy
        self._batch_decoders: dict[str, object] = {}
        self.train_set = _CheckedImages(train_base, bad_file_policy)
        self.val_set = _CheckedImages(val_base, bad_file_policy)
        self.bad_files: list[str] = []
        """Files skipped under bad_file_policy=skip, as 'path<TAB>reason' (this rank's)."""
        if train_subset:
            self.train_set = Subset(self.train_set, range(min(train_subset, len(self.train_set))))
        if test_subset:
            self.val_set = Subset(self.val_set, range(min(test_subset, len(self.val_set))))
        self.in_channels = 3
        self.loader_workers = loader_workers
        self.device = device
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        self._scale, self._shift = 1.0 / std, -mean / std

    def input_spec(self) -> dict:
        """What a model trained on these batches expects (see ``TensorImageData.input_spec``): RGB,
        the evaluation transform (resize of the short side, center crop), ImageNet's mean and std."""
        size = self.image_size_px
        return {
            "in_channels": 3,
            "image_size_px": [size, size],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "num_classes": self.num_classes,
            "classes": self.train_set_classes,
            "eval_transform": f"resize the short side to {size * 256 // 224} px, center crop {size} px",
        }

    @staticmethod
    def _transforms(decoder: str, size: int, augment: bool):
        resize = size * 256 // 224
        if decoder == "torchvision":
            from torchvision.transforms import v2

            train = (
                v2.Compose(
                    [
                        v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
                        v2.RandomHorizontalFlip(),
                    ]
                )
                if augment
                else v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])
            )
            return train, v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])
        from torchvision import transforms

        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train = (
            transforms.Compose(
                [
                    transforms.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    normalize,
                ]
            )
            if augment
            else transforms.Compose(
                [transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
            )
        )
        return train, transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
        )

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batches (fast path) to normalized float on the device; float batches pass through."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:  # one conversion, then in place: x * (1/std) - mean/std
            images = images.float().mul_(self._scale).add_(self._shift)
        return images

    @property
    def num_train(self) -> int:
        return len(self.train_set)

    @property
    def num_test(self) -> int:
        return len(self.val_set)

    num_val = 0
    """No held-out validation split (data.val_size applies to the in-memory data sets)."""

    def _loader(self, dataset, batch_sampler, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.loader_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.loader_workers else None,
            generator=torch.Generator().manual_seed(seed),
        )

    def _batch_decoder(self, split: str):
        """The in-process batch decoder of ``split`` (DALI, or torchvision on the device), or None
        for the DataLoader path."""
        if self.decoder != "dali" and self.decode_on != "device":
            return None
        if split not in self._batch_decoders:
            base = self._bases[split]
            kwargs = dict(
                image_size_px=self.image_size_px,
                train=split == "train" and self.augment,
                device=self.device,
                threads=max(1, self.loader_workers),
                describe=lambda i: base.samples[i][0],
                policy=self.bad_file_policy,
                read_many=base.read_many if getattr(base, "remote", False) else None,
            )
            labels = [label for _, label in base.samples]
            decoder_class = DaliRunner if self.decoder == "dali" else TorchvisionBatchDecoder
            self._batch_decoders[split] = decoder_class(base.read_bytes, labels, **kwargs)
        return self._batch_decoders[split]

    def _batches(self, split: str, dataset, index_batches, seed: int):
        """(images uint8 or float, labels, skipped files) from the batch decoder or DataLoader."""
        decoder = self._batch_decoder(split)
        if decoder is None:  # a loader worker's error (a file that cannot be decoded) in one line
            return _one_line_worker_errors(self._loader(dataset, index_batches, seed))
        return decoder.batches(index_batches, seed=seed, dataset_size=len(dataset))

    def train_batches(self, sampler: GlobalBatchSampler, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized images and labels of this rank's share of each global batch.

        Raises:
            BadImageError: a file cannot be decoded under ``bad_file_policy=fail`` (one line naming
                it, also when a loader worker met it).
        """
        sampler.as_lists = True
        loader_seed = derive_seed(seed, "loader", sampler.rank, sampler.epoch, sampler.start_step)
        for images, labels, bad in self._batches("train", self.train_set, sampler, loader_seed):
            self._note(bad)
            yield self._normalize(images), labels.to(self.device, non_blocking=True)

    def _note(self, bad: list[str]) -> None:
        for entry in bad:
            for line in filter(None, entry.split("\n")):
                if line not in self.bad_files:
                    self.bad_files.append(line)

    def eval_batches(
        self, *, world_size: int, rank: int, batch_size: int, split: str = "test"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split != "test":
            raise ValueError("imagefolder has no held-out validation split (data.val_size is 0 there)")
        idx = eval_shard(self.num_test, world_size=world_size, rank=rank)
        batches = [c.tolist() for c in idx.split(batch_size)]
        for images, labels, bad in self._batches("val", self.val_set, batches, 0):
            self._note(bad)
            yield self._normalize(images), labels.to(self.device, non_blocking=True)
