"""Decoding whole batches in the training process, on the training device.

The DataLoader path decodes one image at a time in CPU worker processes. On a GPU node that costs
several CPU cores per GPU (docs/data.md); decoding the batch on the GPU instead needs only the
encoded bytes from the CPU. Two decoders share this module's loop:

- :class:`TorchvisionBatchDecoder` (``data.imagefolder.decode_on=device``): ``torchvision.io.decode_jpeg`` on a
  list of encoded tensors with ``device="cuda"`` (batched nvJPEG), then random-resized crop, flip
  or resize + centre crop with ``torchvision.transforms.v2.functional`` on the GPU tensors. On a CPU
  run the same code decodes with libjpeg-turbo in the training process (it is how the tests run it;
  on CPU the DataLoader workers are faster).
- :class:`largebatch.data.dali.DaliRunner` (``data.imagefolder.decoder=dali``): NVIDIA DALI.

Both take the sampler's index batches, read the bytes on a thread pool one batch ahead, and apply
``data.imagefolder.bad_file_policy`` to files that cannot be decoded: ``fail`` raises
:class:`~largebatch.data.imagefolder.BadImageError` naming the file, ``skip`` substitutes the next
readable sample of the data set (as the DataLoader path does) and reports the file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from largebatch.data.layout import BadImageError
from largebatch.data.samplers import derive_seed


class BatchDecoder(ABC):
    """Base of the in-process batch decoders; subclasses implement :meth:`_run`.

    Args:
        read_bytes: sample index -> encoded file bytes (a folder's file or a shard's member).
        labels: label of every sample index.
        image_size_px: side S of the output crop.
        train: random-resized crop + flip (True) or resize to S*256/224 + centre crop (False).
        device: the training device.
        threads: threads reading file bytes (and DALI's CPU threads).
        describe: sample index -> a name for messages (its path).
        policy: ``fail`` or ``skip`` for files that cannot be decoded.
        read_many: indices -> their bytes in one call (remote shards: concurrent range requests);
            default: ``read_bytes`` on a thread pool.
    """

    def __init__(
        self,
        read_bytes: Callable[[int], bytes],
        labels: Sequence[int],
        *,
        image_size_px: int,
        train: bool,
        device: torch.device,
        threads: int,
        describe: Callable[[int], str],
        policy: str,
        read_many: Callable[[list[int]], list[bytes]] | None = None,
    ) -> None:
        self.read_bytes, self.read_many, self.labels, self.size = read_bytes, read_many, labels, image_size_px
        self.train, self.device, self.threads = train, device, max(1, threads)
        self.describe, self.policy = describe, policy
        self._pool = ThreadPoolExecutor(max_workers=self.threads)  # file reads
        self._ahead = ThreadPoolExecutor(max_workers=1)  # the next batch's reads, while this one decodes

    @abstractmethod
    def _run(self, encoded: list[np.ndarray], seed: int) -> torch.Tensor:
        """uint8 images (B, 3, S, S) on the device; RuntimeError when a sample cannot be decoded.
        ``seed``: this batch's, from (the call's seed, batch number)."""

    def _encoded(self, indices: Sequence[int]) -> list[np.ndarray]:
        blobs = self.read_many(list(indices)) if self.read_many else self._pool.map(self.read_bytes, indices)
        return [np.frombuffer(b, dtype=np.uint8) for b in blobs]

    @staticmethod
    def _bad_reason(data: np.ndarray) -> str:
        """'' when torchvision.io decodes ``data`` on the CPU, else the reason."""
        from torchvision.io import ImageReadMode, decode_image

        if data.size == 0:
            return "OSError: zero-byte file"
        try:
            decode_image(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB)
        except (OSError, RuntimeError, ValueError) as err:
            return f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}"
        return ""

    def batches(
        self, index_batches: Iterator[Sequence[int]], *, seed: int, dataset_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """(uint8 images (B, 3, S, S) on the device, int64 labels (B,) on the CPU, skipped files as
        'path<TAB>reason') for each index batch. Batch k's random crops depend only on (seed, k)."""
        self.segment_seed = seed % (2**31 - 1)
        pending = None
        for k, indices in enumerate(index_batches):
            indices = [int(i) for i in indices]
            future = self._ahead.submit(self._encoded, indices)  # read ahead while the previous batch decodes
            if pending is not None:
                yield self._decode(*pending, dataset_size=dataset_size)
            pending = (indices, future, derive_seed(seed, k) % (2**31 - 1))
        if pending is not None:
            yield self._decode(*pending, dataset_size=dataset_size)

    def _decode(self, indices: list[int], future, seed: int, *, dataset_size: int):

        encoded = future.result()
        skipped: list[str] = []
        for _ in range(dataset_size + 1):
            try:
                if any(e.size == 0 for e in encoded):
                    raise RuntimeError("empty sample")
                images = self._run(encoded, seed)
                return images, torch.tensor([self.labels[i] for i in indices], dtype=torch.int64), skipped
            except RuntimeError as decode_error:
                bad = [(pos, reason) for pos, e in enumerate(encoded) if (reason := self._bad_reason(e))]
                if not bad:
                    raise
                for pos, reason in bad:
                    name = self.describe(indices[pos])
                    if self.policy == "fail":
                        raise BadImageError(
                            f"cannot decode {name}: {reason}; fix or remove the file, or set "
                            f"data.imagefolder.bad_file_policy=skip to skip it and get a report"
                        ) from decode_error
                    skipped.append(f"{name}\t{reason}")
                    indices[pos] = (indices[pos] + 1) % dataset_size
                    encoded[pos] = self._encoded([indices[pos]])[0]
        raise BadImageError("no readable image in the data set")


def crop_params(
    height: int, width: int, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random-resized crop (the Inception crop:
    Szegedy et al. 2015, sec. 6; Goyal et al. 2017, sec. 5.1): area uniform in ``scale`` of the
    image, log-aspect uniform in log ``ratio``, 10 tries, else the centre crop of the clamped
    aspect. torchvision's algorithm with an explicit generator, so threads can draw without the
    global RNG."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = float(
            torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator))
        )
        w = int(round((target * aspect) ** 0.5))
        h = int(round((target / aspect) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TorchvisionBatchDecoder(BatchDecoder):
    """``data.imagefolder.decode_on=device``: batched ``torchvision.io.decode_jpeg`` on the training device
    (nvJPEG on CUDA) then the augmentation there; on a CPU run each image is decoded
    (libjpeg-turbo) and augmented on one of ``threads`` threads of the training process (the C++
    kernels release the GIL), with no worker processes and no copies between processes. Non-JPEG
    or CMYK files that nvJPEG refuses are decoded on the CPU and moved over. Image k of a batch
    uses the random crop and flip drawn from (batch seed, k)."""

    def _decode_cuda(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        try:
            return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass  # one odd file in the batch: per image below, on the CPU where nvJPEG refuses
        out = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                out.append(decode_image(t, mode=ImageReadMode.RGB).to(self.device))
        return out

    def _transform(self, image: torch.Tensor, seed: int, k: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        size = self.size
        if not self.train:
            return TF.center_crop(TF.resize(image, size * 256 // 224, antialias=True), [size, size])
        g = torch.Generator().manual_seed(seed * 4099 + k)
        top, left, h, w = crop_params(image.shape[-2], image.shape[-1], g)
        crop = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        return TF.horizontal_flip(crop) if bool(torch.rand((), generator=g) < 0.5) else crop

    def _run(self, encoded: list[np.ndarray], seed: int) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image

        tensors = [torch.from_numpy(e.copy()) for e in encoded]
        out = torch.empty(len(tensors), 3, self.size, self.size, dtype=torch.uint8, device=self.device)
        if self.device.type == "cuda":
            for k, image in enumerate(self._decode_cuda(tensors)):
                out[k] = self._transform(image, seed, k)
            return out

        def one(k: int) -> None:
            out[k] = self._transform(decode_image(tensors[k], mode=ImageReadMode.RGB), seed, k)

        list(self._pool.map(one, range(len(tensors))))
        return out
