"""NVIDIA DALI as the image pipeline (``data.imagefolder.decoder=dali``; ``pip install 'largebatch[dali]'``).

Our global-batch sampler still decides which samples each worker reads at each step (so the split
over nodes, the BN groups and resuming are the same as with the DataLoader path); DALI takes the
encoded bytes of a batch through ``fn.external_source`` and decodes and augments them:

- on a CUDA device: ``fn.decoders.image(device="mixed")`` (nvJPEG, the hardware JPEG decoder on
  A100/H100), random-resized crop, flip and the uint8 batch stay on the GPU;
- on a CPU run: the same graph on DALI's CPU operators (libjpeg-turbo), which is what the tests and
  ``benchmarks/data_pipeline.py`` exercise on a machine without a GPU.

Augmentation follows the standard ImageNet recipe (Goyal et al. 2017, sec. 5.1; Szegedy et al.
2015): random-resized crop to ``image_size_px`` with area (0.08, 1) and aspect (3/4, 4/3),
horizontal flip with probability 1/2; evaluation resizes the shorter side to 256/224 of the crop
and centre-crops. The random stream is DALI's own, seeded from (seed, rank, epoch, first step) of
each ``batches`` call, as the DataLoader path seeds its workers; it differs from the torchvision path's crops and depends on
the number of processes (documented in docs/data.md).

Files DALI cannot decode are identified by decoding the failed batch again with torchvision.io,
then ``data.imagefolder.bad_file_policy`` applies exactly as on the DataLoader path (``fail`` names the file,
``skip`` substitutes the next readable sample and reports it). A DALI pipeline is dead after an
error, so it is rebuilt.
"""

from __future__ import annotations

import numpy as np
import torch

from largebatch.data.batch_decode import BatchDecoder


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def require_dali() -> None:
    """Raises ImportError with the install command when DALI is missing."""
    if not dali_available():
        raise ImportError(
            "data.imagefolder.decoder=dali needs NVIDIA DALI: pip install 'largebatch[dali]' (the "
            "nvidia-dali-cuda130 wheel, for torch's CUDA 13 build; 'largebatch[dali-cuda12]' for a cu12x build; "
            "it also runs CPU-only), or use data.imagefolder.decoder=torchvision"
        )


class DaliRunner(BatchDecoder):
    """Decode and augment batches of encoded images with a DALI pipeline (arguments and yields
    of :class:`~largebatch.data.batch_decode.BatchDecoder`). The pipeline is built for the largest
    batch seen and the seed of the ``batches`` call, and rebuilt after a decoding error.

    Raises:
        ImportError: when DALI is not installed, with the command that installs it.
    """

    def __init__(self, *args, **kwargs) -> None:
        require_dali()
        super().__init__(*args, **kwargs)
        self._pipe, self._pipe_key, self._max_batch = None, None, 0

    def batches(self, index_batches, *, seed: int, dataset_size: int):
        self._pipe = None  # a fresh random stream for each call, as the DataLoader path's workers
        return super().batches(index_batches, seed=seed, dataset_size=dataset_size)

    def _build(self, max_batch: int, seed: int):
        from nvidia.dali import fn, pipeline_def, types

        cuda = self.device.type == "cuda"
        size, train = self.size, self.train
        resize = size * 256 // 224

        @pipeline_def(
            batch_size=max_batch,
            num_threads=self.threads,
            device_id=(self.device.index or 0) if cuda else None,
            seed=seed,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            images = fn.decoders.image(encoded, device="mixed" if cuda else "cpu", output_type=types.RGB)
            if train:
                images = fn.random_resized_crop(
                    images,
                    size=(size, size),
                    random_area=(0.08, 1.0),
                    random_aspect_ratio=(3 / 4, 4 / 3),
                    antialias=True,
                )
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.resize(images, resize_shorter=resize, antialias=True)
                mirror = 0
            return fn.crop_mirror_normalize(
                images, crop=(size, size), dtype=types.UINT8, output_layout="CHW", mirror=mirror
            )

        pipe = pipeline()
        pipe.build()
        return pipe

    def _run(self, encoded: list[np.ndarray], seed: int) -> torch.Tensor:
        # One pipeline per batches() call (seeded from its seed), rebuilt only for a larger batch or
        # after an error: building allocates decoder state, which is not for every step.
        self._max_batch = max(self._max_batch, len(encoded))
        key = (self._max_batch, self.segment_seed if self.train else 0)
        if self._pipe is None or self._pipe_key != key:
            self._pipe, self._pipe_key = self._build(*key), key
        self._pipe.feed_input("encoded", encoded)
        try:
            (out,) = self._pipe.run()
        except RuntimeError:
            self._pipe = None  # a DALI pipeline is invalid after an error
            raise
        if self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dense = out.as_tensor()
            images = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(dense, images, cuda_stream=torch.cuda.current_stream(self.device))
            return images
        return torch.from_numpy(out.as_array())
