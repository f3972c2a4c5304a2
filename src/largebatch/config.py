"""The config tree: typed, keyword-only dataclasses, overrides, validation and hashing.

A recipe (``largebatch.recipes``) returns a complete :class:`Config`. Users edit it with
``--set KEY=VALUE`` overrides, which OmegaConf merges into the typed tree, so an unknown key or a
value of the wrong type is rejected by the library rather than by hand-written parsing.
:func:`validate` checks every key that does not depend on the number of workers; the batch planner
(:mod:`largebatch.plan`) checks the rest and computes the derived values (per-worker batch, BN
groups, accumulation, peak LR) once, into a ``Plan``. Derived values are never written back into
the config.

Every error is a :class:`ConfigError` (a ``ValueError``) whose message names the key, the value and
what is accepted; the CLI turns it into exit status 2 before any worker starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from largebatch.choices import (  # noqa: F401  (re-exported: largebatch.config.OPTIM_NAMES, ...)
    ALPHA_VARIANTS,
    BAD_FILE_POLICIES,
    BN_STATISTICS,
    COMM_ALGORITHMS,
    COMM_COMPRESSIONS,
    DATA_NAMES,
    DECODE_ON,
    DECODERS,
    DEVICES,
    HIERARCHICAL_MODES,
    LR_SCALINGS,
    MODEL_NAMES,
    NONFINITE_CHECKS,
    NONFINITE_POLICIES,
    OPTIM_NAMES,
    PRECISIONS,
    SCHEDULE_NAMES,
    VARIANCE_AVERAGINGS,
)
from largebatch.errors import ConfigError  # noqa: F401  (re-exported: largebatch.config.ConfigError)


@dataclass(frozen=True)
class ReferenceLR:
    """An optimizer's reference learning rate: ``base_lr`` at ``base_batch_size`` images, carried to
    other global batch sizes by ``lr_scaling`` (Goyal et al. 2017 sec. 2.1 for the linear rule;
    Krizhevsky 2014 and You et al. 2019 sec. 4 for the square-root rule)."""

    base_lr: float
    base_batch_size: int
    lr_scaling: str
    source: str


REFERENCE_LRS: dict[str, ReferenceLR] = {
    # The Fashion-MNIST ResNet-8 of the CPU recipes; docs/optimizers.md says where each was chosen.
    "sgd": ReferenceLR(0.4, 256, "linear", "goyal2017_fashion_mnist_28px: tuned at 512 (docs/recipes.md)"),
    "lars": ReferenceLR(
        2.5,
        256,
        "linear",
        "you2018_lars_fashion_mnist untuned (trust coefficient 0.001); "
        "its 2048 tuning (3.8) fits that batch and schedule only",
    ),
    "lamb": ReferenceLR(
        0.01,
        256,
        "linear",
        "chosen at 512 on the default recipe in 2 epochs: 0.005-0.0075 per 256 "
        "trained slower, 0.015 diverged (docs/optimizers.md)",
    ),
    "rmsprop_warmup": ReferenceLR(
        0.4,
        256,
        "linear",
        "the default recipe's LR as eta_base of the SGD phase (akiba2017_fashion_mnist untuned); "
        "its 2048 tuning (0.0916) fits that batch and schedule only",
    ),
}
"""The LR each optimizer takes when ``--set optim.name=NAME`` switches a recipe's optimizer and no
``optim.base_lr``, ``optim.base_batch_size`` or ``optim.lr_scaling`` is given: the LR of one
optimizer means nothing to another (LARS multiplies it by a trust ratio of about 0.001)."""


@dataclass(kw_only=True)
class ResizeStage:
    """One stage of progressive resizing: training images at a lower resolution in early epochs."""

    start_epoch: int = 0
    """First epoch of the stage."""
    image_size_px: int = 0
    """Side, in pixels, to which training batches are resized (bilinear, antialiased) from
    start_epoch on; 0: the data set's own size."""


@dataclass(kw_only=True)
class DataConfig:
    name: str = "fashion_mnist"
    """Data set: ``fashion_mnist`` (IDX files, held in memory), ``synthetic`` (random tensors, for
    benchmarks) or ``imagefolder`` (an ImageNet-layout folder ``root/train/<class>/*``,
    ``root/val/<class>/*`` read with torchvision)."""
    root: str = ""
    """Directory of the data set. Empty: ``/usr/share/datasets/fashion-mnist`` for fashion_mnist
    (Debian's ``dataset-fashion-mnist``); required for imagefolder."""
    train_subset: int = 0
    """Use only the first N training samples (0: all). For tests and short studies."""
    test_subset: int = 0
    """Evaluate on only the first N test samples (0: all)."""
    val_size: int = 0
    """Hold out N images of the training set (after ``train_subset``) as a validation split: a
    permutation seeded by ``train.seed`` picks them, they are never trained on, and the split is
    the same on any number of workers. Evaluated at every evaluation, like the test set, and logged
    as ``val_top1`` / ``val_loss``; choose hyperparameters on it, never on the test set (0: none).
    fashion_mnist and synthetic only."""
    augment: bool = True
    """Training augmentation: random crop with padding + horizontal flip (Fashion-MNIST, synthetic);
    random-resized crop + flip (imagefolder)."""
    crop_padding_px: int = 2
    """Zero padding, in pixels, on each side before the random crop back to the input size."""
    image_size_px: int = 224
    """Training crop side for imagefolder, and the side of synthetic images."""
    resize_stages: list[ResizeStage] = field(default_factory=list)
    """Progressive resizing (fast.ai's and FFCV's ImageNet runs; Howard 2018, Leclerc et al. 2023):
    stages of (start_epoch, image_size_px), each resizing the training batches from its start epoch
    on, after augmentation and normalization; evaluation always sees the data set's own size, so
    the model must be fully convolutional (global pooling). Empty: the own size throughout.
    fashion_mnist, synthetic and user data sets (in-memory tensors) only. Which sizes help is
    measured per recipe, not a published constant [U]."""
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig())
    """``data.name=synthetic``: size, classes and channels of the random data set."""
    imagefolder: ImageFolderConfig = field(default_factory=lambda: ImageFolderConfig())
    """``data.name=imagefolder``: the loader, the decoder and the bad-file policy."""


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "resnet_fmnist"
    """``resnet_fmnist`` (small ResNet for 28x28 inputs, see ``largebatch.nn.models``) or any
    torchvision classification model (``resnet18``, ``resnet50``, ``efficientnet_b0``, ...; ImageNet
    layout, untrained, every BatchNorm2d replaced by ghost BN)."""
    width: int = 16
    """resnet_fmnist: channels of the first stage (doubled at each of the three stages)."""
    blocks_per_stage: int = 1
    """resnet_fmnist: BasicBlocks per stage."""
    stem_stride: int = 1
    """resnet_fmnist: stride of the 3x3 stem, 1 or 2. 2 halves the side of every stage (14, 7 and 4
    px on 28x28 images instead of 28, 14 and 7): about a quarter of the FLOPs, the same parameters."""
    zero_init_residual: bool = True
    """Zero-init the last BN gamma of every residual block (Goyal et al. 2017, sec. 5.1)."""
    fc_init_std: float = 0.01
    """Std of the N(0, std^2) init of the final FC weight (Goyal et al. 2017, sec. 5.1); 0 keeps
    torchvision's default init."""
    channels_last: bool = True
    """Use the channels_last memory format (faster convolutions on CPU and on tensor cores)."""


@dataclass(kw_only=True)
class BatchStage:
    """One stage of a batch-size schedule (Mikami et al. 2018's batch-size control)."""

    start_epoch: int = 0
    """First epoch of the stage (the first stage starts at 0)."""
    global_batch_size: int = 256
    """Global batch from start_epoch on."""
    lr_scaling: str = "linear"
    """Peak LR of the stage from optim.base_lr per optim.base_batch_size: ``linear``, ``sqrt`` or
    ``none``; ignored when peak_lr is set."""
    peak_lr: float = 0.0
    """Explicit peak LR of the stage (0: use lr_scaling)."""
    bn_batch_size: int = 0
    """BN batch of the stage (0: keep train.bn.batch_size); Mikami's per-GPU batch, and so its BN
    batch, doubles at the switch."""


@dataclass(kw_only=True)
class BNConfig:
    """Batch normalization over the global batch (docs/bn.md)."""

    batch_size: int = 32
    """Samples per BN group, the BN batch: the paper's per-worker n (Goyal et al. 2017 sec. 2.3). Each
    process splits its batch into groups of this size and normalizes each group on its own (ghost BN,
    Hoffer et al. 2017 sec. 4.1). 0: one group per forward pass. With sync_ranks = g > 1 it is the BN
    span: each of g processes holds batch_size / g of a group."""
    statistics: str = "moving_average"
    """Where the evaluation statistics of BN come from: ``moving_average`` (momentum 0.1, averaged
    over workers before evaluation), ``last_batch`` (Akiba et al. 2017 sec. 3.3: the last step's batch
    statistics averaged over workers, no moving average) or ``precise`` (population statistics
    recomputed over precise_batches training batches before each evaluation, all-reduced)."""
    variance_averaging: str = "mean"
    """``last_batch``: average the workers' variances (``mean``, the literal reading) or take the
    variance of their union (``pooled``) [U]."""
    precise_batches: int = 10
    """``precise``: number of global training batches whose statistics are accumulated."""
    sync_ranks: int = 1
    """Group-synchronized BN: consecutive processes that share BN statistics (Ying et al. 2018's
    distributed BN; NVIDIA's MLPerf entry uses 2 GPUs x 16 = 32). 1: per-process BN."""


@dataclass(kw_only=True)
class TrainConfig:
    epochs: int = 90
    """Number of passes over the training set (at most 1,000,000)."""
    global_batch_size: int = 256
    """Samples per optimizer step summed over all workers (the paper's kn)."""
    bn: BNConfig = field(default_factory=lambda: BNConfig())
    """Batch normalization across workers: the BN batch, the evaluation statistics, synchronization."""
    batch_schedule: list[BatchStage] = field(default_factory=list)
    """Batch-size control (Mikami et al. 2018): stages of (start_epoch, global_batch_size, LR rule).
    Empty: train.global_batch_size throughout. The first stage starts at epoch 0 with
    train.global_batch_size."""
    accumulation_steps: int = 0
    """Forward/backward passes per optimizer step on each process (gradient accumulation). 0: the
    fewest that keep a forward pass within max_micro_batch_size samples."""
    max_micro_batch_size: int = 256
    """Most samples one forward pass may hold (memory bound); used when accumulation_steps is 0."""
    nproc: int = 1
    """Local worker processes that ``largebatch train`` starts when --nproc is not given (ignored
    under torchrun, which sets the world size itself)."""
    seed: int = 0
    """Seed of model init, the per-epoch shuffle and augmentation; process r also seeds torch's
    global RNG with seed + r. An integer in [0, 2**63 - 1]."""
    eval_every_epochs: int = 1
    """Evaluate on the test split every N epochs (and always after the last)."""
    eval_batch_size: int = 1000
    """Samples per forward pass during evaluation, per process."""
    eval_flip: bool = False
    """Test-time augmentation: every evaluation (test and validation) averages the logits of each
    image and of its left-right mirror, at twice the evaluation cost [U]."""
    log_every_steps: int = 20
    """Steps between metric lines (loss is reduced across workers only at these points)."""
    checkpoint_every_epochs: int = 1
    """Write a checkpoint every N epochs (and always at the end)."""
    checkpoint_every_steps: int = 0
    """Also write a checkpoint every N optimizer steps (0: only per epoch and at the end)."""
    checkpoint_every_minutes: float = 0.0
    """Also write a checkpoint when this many minutes of training passed since the last one
    (0: off); rank 0's clock decides, all ranks follow."""
    keep_checkpoints: int = 2
    """Number of newest checkpoints kept in ``checkpoints/``."""
    nonfinite_policy: str = "skip"
    """A NaN or Inf in the gradients of a step: ``skip`` the step (no update, counted) or ``stop`` the
    run with a message naming the step, the LR and the layers. fp16 runs leave this to the loss
    scaler, which skips such steps and lowers the scale."""
    nonfinite_check: str = "auto"
    """Where the gradients are checked: ``host`` (one sync per step: free on CPU), ``device`` (no
    sync: the step is applied, then undone on the device where a gradient was not finite; counted
    and reported at the next log interval, evaluation or checkpoint) or ``auto`` (device on CUDA,
    host elsewhere)."""
    max_nonfinite_steps: int = 20
    """``skip``: after this many skipped steps the run stops; its message names the newest usable
    checkpoint (finite weights), which the rotation never deletes."""
    target_top1: float = 0.0
    """Test top-1 (percent) whose first crossing is reported as time_to_target_s (0: none)."""
    val_every_steps: int = 0
    """Also evaluate the validation split (data.val_size > 0) every N optimizer steps, logged as
    ``val_top1`` eval records: the resolution of steps to target (Shallue et al. 2018 sec. 3.2
    measure it at regular step intervals). 0: only with the per-epoch evaluations."""
    val_at_steps: list[int] = field(default_factory=list)
    """Also evaluate the validation split at these optimizer steps (each >= 1; data.val_size > 0):
    unevenly spaced evaluations, such as the log-spaced ones of ``largebatch critical-batch``'s
    branches, which resolve a loss curve's fast start. []: none."""
    stop_at_val_top1: float = 0.0
    """Stop training at the first evaluation whose validation top-1 (percent) reaches this target,
    after a final test evaluation and checkpoint; summary.json records ``steps_to_val_target`` and
    ``images_to_val_target``. Needs data.val_size > 0. 0: train all epochs (a crossing is still
    recorded when this is 0 and val_target_top1 is set)."""
    val_target_top1: float = 0.0
    """Validation top-1 (percent) whose first crossing is recorded as steps_to_val_target without
    stopping (stop_at_val_top1 sets it too). 0: none."""
    stop_after_images: int = 0
    """End the run (final test evaluation and checkpoint) once this many training images have been
    seen, mid-epoch if need be; the schedule is still laid out over train.epochs. A fixed data budget
    for every batch size, as the branches of Merrill et al. 2025 use. 0: all epochs."""
    init_from: str = ""
    """A checkpoint (file) whose model weights and BN buffers start this run, with a fresh optimizer,
    schedule and step count: the branches of Merrill et al. 2025 ("Critical batch size revisited",
    sec. 3) start this way from checkpoints of one run. Empty: initialize from train.seed."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss (torch's built-in; 0.1 in MLPerf's reference)."""
    noise_scale: bool = True
    """Measure the gradient noise scale B_simple (McCandlish et al. 2018) from each worker's gradient
    and the all-reduced one (a DDP hook: two norms per bucket, no extra communication), logged as
    ``noise_scale`` in metrics and TensorBoard at every log interval. Needs 2 or more workers."""
    noise_scale_decay: float = 0.99
    """Per-step decay of the moving averages behind the noise scale (0.99: about 100 steps)."""
    noise_scale_small_batch: str = "worker"
    """The small batch of the two-batch estimate (McCandlish et al. 2018, app. A.1): ``worker`` (one
    worker's gradient of its per-worker batch, from the DDP hook; needs 2 or more workers) or
    ``micro_batch`` (the gradient of each micro-batch of the accumulation, from differences of the
    accumulated gradients: small batches of one BN group, on one process or many; the automatic
    ``train.accumulation_steps`` then makes each micro-batch one BN group). ``micro_batch`` also logs
    every step's estimates of |G|^2 and tr(Sigma) (``noise_scale_steps`` in the train records), which
    ``largebatch advise`` reads in windows (docs/noise_scale.md)."""
    precision: str = "auto"
    """``auto`` (bf16 where the device runs it natively: CUDA GPUs with bf16, CPUs with AVX-512 BF16
    or AMX; fp32 elsewhere; see ``largebatch.train.precision``), ``fp32``, ``bf16`` (autocast) or
    ``fp16`` (autocast + dynamic loss scaling; the optimizer sees the unscaled, all-reduced
    gradient, and a step with a non-finite gradient is skipped). docs/precision.md says what each
    changes."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    compile: bool = False
    """``torch.compile`` the model in place (``nn.Module.compile``: the same parameters, buffers and
    checkpoint keys) after DDP wraps it, so DDP's optimizer splits the graph at its buckets. The
    first steps pay the compilation (tens of seconds on ResNet-50)."""
    threads_per_worker: int = 0
    """torch intra-op threads per process, at most 4 per CPU core; 0: CPU cores divided by local workers."""
    malloc_cache_mib: int = 1024
    """MiB of freed memory each worker process keeps for reuse instead of returning it to the kernel
    (glibc's ``M_TRIM_THRESHOLD``; tensors up to 32 MiB are then served from the heap instead of
    fresh ``mmap`` calls). Without it a CPU step of the main job's network page-faults its
    activations back in (7,600 faults, a quarter of the step) until glibc's own thresholds grow,
    in ``largebatch train`` after the first epoch (docs/performance.md). Same results either way.
    0 keeps the C library's defaults; no effect where the C library is not glibc."""
    collective_timeout_s: float = 900.0
    """Seconds a collective (and the process group's store) waits for the other workers before it
    raises: a hung or stopped worker ends the run with a message naming this key instead of
    stalling it (torch's default is 1800 s)."""


@dataclass(kw_only=True)
class LarsConfig:
    trust_coefficient: float = 0.001
    """Trust coefficient eta (You et al. 2017: 0.001; apex LARC uses 0.02 with clipping)."""
    eps: float = 0.0
    """Epsilon in the trust-ratio denominator (MLPerf: 0; TF turns 0 into 1e-7)."""
    clip: bool = False
    """apex LARC clipping mode: effective LR min(lr, local LR)."""


@dataclass(kw_only=True)
class LambConfig:
    beta1: float = 0.9
    """First-moment decay."""
    beta2: float = 0.999
    """Second-moment decay."""
    eps: float = 1e-6
    """Epsilon (TF-Addons default)."""


@dataclass(kw_only=True)
class RMSpropWarmupConfig:
    lr: float = 3e-4
    """eta_RMSprop of alpha_RMSprop = (1 - alpha_SGD) * eta_RMSprop / lr [S]."""
    alpha: float = 0.99
    """Second-moment decay mu2 [S]."""
    eps: float = 1e-8
    """Epsilon [S]."""
    center_epochs: float = 10.0
    """beta_center of the alpha_SGD schedule, in epochs [S]."""
    period_epochs: float = 5.0
    """beta_period of the alpha_SGD schedule, in epochs [S]."""
    variant: str = "printed"
    """alpha_SGD: ``printed`` (as published, discontinuous) or ``smooth`` (our C1 reading) [U]."""


@dataclass(kw_only=True)
class PolyConfig:
    power: float = 2.0
    """The exponent (2 in You et al. and MLPerf)."""


@dataclass(kw_only=True)
class SlowStartConfig:
    epochs: list[float] = field(default_factory=lambda: [40.0, 70.0, 85.0])
    """Epochs where the next factor begins (Akiba sec. 3.2: 40/70/85 of 90) [S]."""
    factors: list[float] = field(default_factory=lambda: [0.5, 0.075, 0.01, 0.001])
    """Multiples of the scaled LR, one more than ``epochs`` [S]."""


@dataclass(kw_only=True)
class ImageFolderConfig:
    loader_workers: int = 4
    """DataLoader worker processes per training process."""
    decoder: str = "torchvision"
    """``torchvision`` (decode from bytes with torchvision.io, augment uint8 tensors,
    normalize batched on the device; the fast path) or ``pil`` (torchvision's plain ImageFolder +
    PIL pipeline) or ``dali`` (NVIDIA DALI, ``pip install 'largebatch[dali]'``: nvJPEG decoding
    and augmentation on the GPU, DALI's CPU operators on a CPU run; see docs/data.md)."""
    decode_on: str = "workers"
    """With decoder=torchvision: ``workers`` (each image decoded and augmented in a
    DataLoader worker process on the CPU) or ``device`` (the workers' threads only read bytes; the
    training process decodes the whole batch on the training device: batched nvJPEG on CUDA)."""
    val_labels: str = ""
    """A labels file for a flat ``val/`` (``val/*.JPEG``): ImageNet's
    LOC_val_solution.csv or lines of ``<file> <wnid>``; empty: ``val/<wnid>/*`` folders."""
    bad_file_policy: str = "fail"
    """An image file that cannot be decoded (zero-byte, truncated, not an image)
    ``fail``s the run with a message naming it, or is ``skip``ped (replaced by the next readable
    sample, so batches keep their size) and listed in bad_files.txt and summary.json at the end."""


@dataclass(kw_only=True)
class SyntheticConfig:
    train_samples: int = 4096
    """Number of training samples."""
    test_samples: int = 1024
    """Number of test samples."""
    classes: int = 10
    """Number of classes."""
    channels: int = 1
    """Channels of the images."""


@dataclass(kw_only=True)
class OptimConfig:
    name: str = "sgd"
    """``sgd`` (torch.optim.SGD, Goyal et al. form (9): no momentum correction needed), ``lars``
    (You et al. 2017), ``lamb`` (You et al. 2019) or ``rmsprop_warmup`` (Akiba et al. 2017)."""
    base_lr: float = 0.1
    """Learning rate at ``base_batch_size``, scaled to the global batch by ``lr_scaling``."""
    base_batch_size: int = 256
    """The batch size at which base_lr is given (0.1 per 256 in Goyal et al.)."""
    lr_scaling: str = "linear"
    """``linear`` (Goyal sec. 2.1: lr = base_lr * B / base_batch), ``sqrt`` (lr = base_lr *
    sqrt(B / base_batch), an option for adaptive optimizers) or ``none`` (lr = base_lr)."""
    momentum: float = 0.9
    """Momentum coefficient m (sgd, lars; mu1 of rmsprop_warmup)."""
    nesterov: bool = True
    """Nesterov momentum (sgd, lars)."""
    weight_decay: float = 1e-4
    """L2 coefficient lambda (coupled for sgd/lars/rmsprop_warmup, Goyal eq. 8; decoupled inside the
    update for lamb)."""
    norm_weight_decay: bool = False
    """Apply weight decay to normalization gamma/beta (Goyal: no)."""
    bias_weight_decay: bool = False
    """Apply weight decay to biases (Goyal is silent; we follow the BN rule: no)."""
    fc_bias_weight_decay: bool = False
    """Apply weight decay to the classifier's bias even when other biases are excluded (NVIDIA's
    MLPerf LARS)."""
    norm_adaptation: bool = False
    """Apply the LARS/LAMB trust ratio to normalization parameters (MLPerf: no)."""
    bias_adaptation: bool = False
    """Apply the LARS/LAMB trust ratio to biases (MLPerf: no)."""
    lars: LarsConfig = field(default_factory=lambda: LarsConfig())
    """``optim.name=lars``: LARS's own settings."""
    lamb: LambConfig = field(default_factory=lambda: LambConfig())
    """``optim.name=lamb``: LAMB's own settings."""
    rmsprop_warmup: RMSpropWarmupConfig = field(default_factory=lambda: RMSpropWarmupConfig())
    """``optim.name=rmsprop_warmup``: the RMSprop blend and its alpha_SGD schedule."""


@dataclass(kw_only=True)
class ScheduleConfig:
    name: str = "step"
    """``step`` (Goyal), ``poly`` (MLPerf, You et al.), ``cosine`` or ``slow_start`` (Akiba);
    each after a linear warmup. See ``largebatch.schedules.lr``."""
    warmup_epochs: float = 5.0
    """Epochs of gradual (per-iteration linear) warmup to the scaled LR; 0 disables it."""
    warmup_start_lr: float | None = None
    """LR at step 0 of the warmup. None: optim.base_lr, i.e. the small-batch LR (Goyal sec. 2.2);
    MLPerf starts at 0. A start above the scaled LR (global batch below base_batch_size) is lowered
    to it: no warmup."""
    decay_epochs: list[float] = field(default_factory=lambda: [30.0, 60.0, 80.0])
    """``step``: epochs at which the LR is multiplied by decay_factor (30/60/80 of 90 in Goyal et al.)."""
    decay_factor: float = 0.1
    """``step``: the multiplier applied at each decay epoch."""
    end_lr: float = 1e-4
    """``poly`` and ``cosine``: the final LR (MLPerf: 1e-4)."""
    poly: PolyConfig = field(default_factory=lambda: PolyConfig())
    """``schedule.name=poly``: its exponent."""
    decay_end_epochs: float | None = None
    """``poly`` and ``cosine``: epoch at which the decay reaches end_lr (None: train.epochs; NVIDIA's
    MLPerf 57k run decays over 78 epochs)."""
    slow_start: SlowStartConfig = field(default_factory=lambda: SlowStartConfig())
    """``schedule.name=slow_start``: boundaries and factors (Akiba et al. 2017 sec. 3.2)."""


@dataclass(kw_only=True)
class CommConfig:
    algorithm: str = "allreduce"
    """Gradient all-reduce: ``allreduce`` (DDP's own), ``hierarchical`` (intra-node, inter-node,
    intra-node; Goyal et al. 2017 sec. 4, Jia et al. 2018) or ``torus2d`` (Mikami et al. 2018), as DDP
    communication hooks (largebatch.dist.hooks)."""
    compression: str = "none"
    """Cast gradients to ``fp16`` or ``bf16`` for the communication (PyTorch's compression hooks and
    wrappers), or ``none``."""
    bucket_cap_mb: float = 25.0
    """DDP bucket size in MiB (PyTorch's default 25)."""
    workers_per_node: int = 0
    """Workers per node for the hierarchical and torus algorithms; 0: torchrun's LOCAL_WORLD_SIZE
    (with --nproc, all local workers are one node). Set it to simulate several nodes on one machine."""
    torus_x: int = 0
    """2D-torus row length X (X * Y = number of workers); 0: workers_per_node (a row is a node)."""
    hierarchical_mode: str = "scatter"
    """``scatter`` (reduce-scatter / all-reduce of shards / all-gather) or ``reduce`` (reduce to
    local rank 0 / all-reduce among nodes / broadcast, Goyal's three phases)."""


@dataclass(kw_only=True)
class Config:
    recipe: str = "custom"
    """Name of the recipe this config came from."""
    description: str = ""
    """One line on what the recipe is."""
    source: str = ""
    """Paper and section the recipe follows."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    comm: CommConfig = field(default_factory=CommConfig)


LEGACY_KEYS = {
    "optim.trust_coefficient": "optim.lars.trust_coefficient",
    "optim.lars_eps": "optim.lars.eps",
    "optim.lars_clip": "optim.lars.clip",
    "optim.lamb_beta1": "optim.lamb.beta1",
    "optim.lamb_beta2": "optim.lamb.beta2",
    "optim.lamb_eps": "optim.lamb.eps",
    "optim.rmsprop_lr": "optim.rmsprop_warmup.lr",
    "optim.rmsprop_alpha": "optim.rmsprop_warmup.alpha",
    "optim.rmsprop_eps": "optim.rmsprop_warmup.eps",
    "optim.alpha_sgd_center_epochs": "optim.rmsprop_warmup.center_epochs",
    "optim.alpha_sgd_period_epochs": "optim.rmsprop_warmup.period_epochs",
    "optim.alpha_sgd_variant": "optim.rmsprop_warmup.variant",
    "schedule.poly_power": "schedule.poly.power",
    "schedule.slow_start_epochs": "schedule.slow_start.epochs",
    "schedule.slow_start_factors": "schedule.slow_start.factors",
    "data.synthetic_train_samples": "data.synthetic.train_samples",
    "data.synthetic_test_samples": "data.synthetic.test_samples",
    "data.synthetic_classes": "data.synthetic.classes",
    "data.synthetic_channels": "data.synthetic.channels",
    "data.loader_workers": "data.imagefolder.loader_workers",
    "data.decoder": "data.imagefolder.decoder",
    "data.decode_on": "data.imagefolder.decode_on",
    "data.val_labels": "data.imagefolder.val_labels",
    "data.bad_file_policy": "data.imagefolder.bad_file_policy",
    "train.bn_batch_size": "train.bn.batch_size",
    "train.bn_statistics": "train.bn.statistics",
    "train.bn_variance_averaging": "train.bn.variance_averaging",
    "train.precise_bn_batches": "train.bn.precise_batches",
    "train.bn_sync_ranks": "train.bn.sync_ranks",
}
"""Flat keys of configs written before the optimizer, schedule, data-source and BN settings were
nested (``optim.lars_eps`` is now ``optim.lars.eps``, ``train.bn_batch_size`` ``train.bn.batch_size``): :func:`migrate` moves them, so old checkpoints, run
directories and ``--set`` lines keep working."""


CHOICE_KEYS = {
    "optim": ("name", {"lars": ("lars",), "lamb": ("lamb",), "rmsprop_warmup": ("rmsprop_warmup",)}),
    "schedule": (
        "name",
        {
            "decay_epochs": ("step",),
            "decay_factor": ("step",),
            "poly": ("poly",),
            "end_lr": ("poly", "cosine"),
            "decay_end_epochs": ("poly", "cosine"),
            "slow_start": ("slow_start",),
        },
    ),
    "data": ("name", {"synthetic": ("synthetic",), "imagefolder": ("imagefolder",)}),
}
"""Per section: the key that chooses, and {key: the choices that read it} for the keys only some
choices read (``optim.lamb`` only by ``optim.name=lamb``)."""


def active_dict(cfg: Config) -> dict:
    """:func:`to_dict` without the keys that the chosen optimizer, schedule and data source do not read
    (a LAMB config has no ``optim.lars``); reading it back gives the same config, since an omitted key
    keeps its default and nothing reads it."""
    data = to_dict(cfg)
    for section, (chooser, keys) in CHOICE_KEYS.items():
        chosen = data[section][chooser]
        for key, readers in keys.items():
            if chosen not in readers:
                data[section].pop(key, None)
    return data


def get_key(cfg, key: str):
    """The value of a dotted key (``optim.lars.eps``) of a config."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def migrate_key(key: str) -> str:
    """The current name of a config key (a legacy flat key is renamed; others are returned as given)."""
    return LEGACY_KEYS.get(key.strip(), key.strip())


def migrate(data: dict) -> dict:
    """A copy of a config dict (``to_dict`` output, a checkpoint's or a run's ``config.json``) with
    every legacy flat key moved to its nested place."""
    out = {sec: dict(val) if isinstance(val, dict) else val for sec, val in data.items()}
    for old, new in LEGACY_KEYS.items():
        section, name = old.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            value = out[section].pop(name)
            _, sub, leaf = new.split(".")
            out[section].setdefault(sub, {})
            out[section][sub] = {**out[section][sub], leaf: value}
    return out


def _section_keys(section: Any, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_section_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def all_keys(cfg: Config | None = None) -> list[str]:
    """Every settable dotted key of the config tree, e.g. ``train.global_batch_size``."""
    return _section_keys(cfg if cfg is not None else Config(), "")


def _field_type_name(key: str) -> str:
    section: Any = Config
    parts = key.split(".")
    for part in parts[:-1]:
        factory = {f.name: f for f in dataclasses.fields(section)}[part].default_factory
        section = factory if isinstance(factory, type) else type(factory())  # a class or a lambda building one
    f = {f.name: f for f in dataclasses.fields(section)}[parts[-1]]
    return str(f.type)


def schedule_warnings(cfg: Config) -> list[str]:
    """One line per schedule point that falls at or after the end of training, where it never
    applies (a step decay at epoch 30 of a 9-epoch run, a warmup as long as the run, a poly or cosine
    decay that ends after it); empty when there is none."""
    epochs, s = cfg.train.epochs, cfg.schedule
    out = []
    late = [e for e in s.decay_epochs if e >= epochs] if s.name == "step" else []
    if late:
        out.append(
            f"schedule.decay_epochs {', '.join(f'{e:g}' for e in late)} fall at or after the end of training "
            f"(train.epochs={epochs:g}): those decays never apply"
        )
    if s.warmup_epochs >= epochs:
        out.append(
            f"schedule.warmup_epochs={s.warmup_epochs:g} >= train.epochs={epochs:g}: the run ends inside the warmup"
        )
    if s.name in ("poly", "cosine") and s.decay_end_epochs is not None and s.decay_end_epochs > epochs:
        out.append(
            f"schedule.decay_end_epochs={s.decay_end_epochs:g} > train.epochs={epochs:g}: the LR never reaches "
            f"schedule.end_lr={s.end_lr:g}"
        )
    return out


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``KEY=VALUE`` overrides applied (values parsed as YAML).

    Raises:
        ConfigError: an override without ``=``, an unknown key (the message lists the keys of that
            section), a value that cannot be converted to the key's type, or a value that is a
            recursive YAML alias or nested too deeply (see :func:`check_yaml_tree`).
    """
    base = OmegaConf.structured(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE; example: --set train.epochs=10")
        key, raw = item.split("=", 1)
        key = migrate_key(key)  # a legacy flat key (optim.lars_eps) names its nested place (optim.lars.eps)
        if key not in all_keys(cfg):
            section = key.rsplit(".", 1)[0] if "." in key else ""
            near = [k for k in all_keys(cfg) if k.startswith(section + ".")] if section else []
            accepted = near or sorted({k.split(".")[0] for k in all_keys(cfg)})
            guess = difflib.get_close_matches(key, list(all_keys(cfg)), n=1, cutoff=0.75)
            raise ConfigError(
                f"unknown config key {key!r} (value {raw!r}); {f'did you mean {guess[0]!r}? ' if guess else ''}"
                f"accepted keys{' in ' + repr(section) if near else ''}: {', '.join(accepted)}"
            )
        shown = raw if len(raw) <= 100 else f"{raw[:100]}... ({len(raw)} characters)"
        try:
            parsed = yaml.safe_load(raw)
        except Exception:  # not YAML, too deep, a bad date (ValueError): omegaconf reports it
            parsed = None
        check_yaml_tree(parsed, f"config key {key!r}")  # recursive aliases, deep nesting: before omegaconf recurses
        try:
            patch = OmegaConf.from_dotlist([f"{key}={raw}"])
            base = OmegaConf.merge(base, patch)
        except RecursionError:
            raise ConfigError(
                f"config key {key!r} got value {shown!r}, which is nested too deeply for a {_field_type_name(key)}"
            ) from None
        except (ConfigKeyError, ConfigAttributeError) as err:  # pragma: no cover - caught above
            raise ConfigError(f"unknown config key {key!r}: {err}") from None
        except OmegaConfBaseException as err:
            raise ConfigError(
                f"config key {key!r} got value {shown!r}, which is not a valid "
                f"{_field_type_name(key)}: {str(err).splitlines()[0]}"
            ) from None
        except (TypeError, ValueError) as err:  # e.g. a mapping given for a list key: omegaconf cannot merge them
            raise ConfigError(
                f"config key {key!r} got value {shown!r}, which is not a valid {_field_type_name(key)}: {err}"
            ) from None
        except yaml.YAMLError as err:  # the value is not YAML at all (e.g. an unclosed "[")
            raise ConfigError(
                f"config key {key!r} got value {shown!r}, which is not valid YAML for a "
                f"{_field_type_name(key)} ({str(err).splitlines()[0]}); quote strings, write lists as [a, b]"
            ) from None
    try:
        result = OmegaConf.to_object(base)
    except OmegaConfBaseException as err:  # e.g. a required list entry left incomplete
        raise ConfigError(
            f"the overrides {list(overrides)!r} do not give a complete config: {str(err).splitlines()[0]}"
        ) from None
    given = {item.split("=", 1)[0].strip() for item in overrides}
    lr_keys = {"optim.base_lr", "optim.base_batch_size", "optim.lr_scaling"}
    if result.optim.name != cfg.optim.name and result.optim.name in REFERENCE_LRS and not given & lr_keys:
        ref = REFERENCE_LRS[result.optim.name]
        result = dataclasses.replace(
            result,
            optim=dataclasses.replace(
                result.optim, base_lr=ref.base_lr, base_batch_size=ref.base_batch_size, lr_scaling=ref.lr_scaling
            ),
        )
    _check_list_items(result, "")
    return result


def _check_list_items(section: Any, prefix: str) -> None:
    """omegaconf does not type the items of a ``list[float]`` node on merge (``[{a: 1}]`` passes):
    check every list field's items against the declared item type.

    Raises:
        ConfigError: naming the key, the bad item and the type expected.
    """
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, hint, key = getattr(section, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_list_items(value, key + ".")
        elif typing.get_origin(hint) is list and isinstance(value, list):
            (item_type,) = typing.get_args(hint)
            accepted = (int, float) if item_type is float else item_type  # an int is a valid float
            for i, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, accepted):
                    raise ConfigError(
                        f"config key {key!r}: item {i} is {item!r}, expected a {item_type.__name__}"
                        + (f"; example: {key}=[30, 60, 80]" if item_type in (int, float) else " mapping")
                    )
                if dataclasses.is_dataclass(item):
                    _check_list_items(item, f"{key}[{i}].")


MAX_NESTING = 32
"""Deepest nesting of mappings and lists a config file or ``--set`` value may hold (the config tree
itself is 4 deep)."""
MAX_NODES = 10_000
"""Most mappings and lists a config may expand to (a config has a few hundred; YAML aliases of
aliases can expand a small file into billions)."""


def check_yaml_tree(data: Any, where: str) -> None:
    """Refuse what YAML can build but a config never is: a recursive alias (``a: &a [*a]``, a
    structure inside itself), nesting deeper than :data:`MAX_NESTING` and aliases expanding to more
    than :data:`MAX_NODES` nodes, which would otherwise end in a RecursionError or fill the memory.
    Iterative, so a deep tree cannot overflow the stack here.

    Raises:
        ConfigError: naming ``where`` and the path of the offending node.
    """
    stack: list[tuple[Any, str, int, bool]] = [(data, "", 0, False)]
    on_path: set[int] = set()
    nodes = 0
    while stack:
        node, path, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if not isinstance(node, dict | list):
            continue
        if id(node) in on_path:
            raise ConfigError(
                f"{where}: {path[:80] or 'the top level'} is a recursive YAML alias (an anchor used inside "
                f"itself), which no config holds; write the values out"
            )
        nodes += 1
        if depth > MAX_NESTING or nodes > MAX_NODES:
            what = f"nested more than {MAX_NESTING} levels deep" if depth > MAX_NESTING else "too large"
            raise ConfigError(
                f"{where}: {what} (at {path[:80]}); a config is a mapping of sections of settings "
                f"(`largebatch recipes NAME` prints one)"
            )
        on_path.add(id(node))
        stack.append((node, path, depth, True))
        children = list(node.items() if isinstance(node, dict) else enumerate(node))
        for k, child in reversed(children):  # popped in the file's order: the first offender is named
            sub = (f"{path}.{k}" if path else str(k)) if isinstance(node, dict) else f"{path}[{k}]"
            stack.append((child, sub, depth + 1, False))


def to_dict(cfg: Config) -> dict:
    """The config as plain JSON-able dicts."""
    return dataclasses.asdict(cfg)


OPERATIONAL_KEYS = (
    "train.nproc",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.nonfinite_check",
    "train.checkpoint_every_minutes",
    "train.keep_checkpoints",
    "train.max_nonfinite_steps",
    "train.threads_per_worker",
    "train.malloc_cache_mib",
    "train.noise_scale",
    "train.noise_scale_decay",
    "train.noise_scale_small_batch",
)
"""Keys that do not change what is computed: a run may resume with other values (e.g. on another
number of workers, or with another checkpoint interval), so they are left out of the config hash."""

DOCUMENTARY_KEYS = ("description", "source")
"""Top-level keys that only describe a recipe: a checkpoint resumes after a recipe's description or
source line was reworded, so they are left out of the config hash too."""


def hashed_config(cfg: Config) -> dict:
    """The config as a dict without :data:`OPERATIONAL_KEYS` and :data:`DOCUMENTARY_KEYS`, normalized
    through the typed tree."""
    data = to_dict(config_from_dict(to_dict(cfg)))
    for key in DOCUMENTARY_KEYS:
        data.pop(key, None)
    for key in OPERATIONAL_KEYS:
        section, name = key.split(".")
        data[section].pop(name, None)
    return data


def config_mismatch(cfg: Config, checkpoint_config: dict, path) -> str | None:
    """None if a checkpoint written with ``checkpoint_config`` may be resumed under ``cfg``, else a
    message naming every key that differs (operational keys may differ)."""
    theirs, ours = hashed_config(config_from_dict(checkpoint_config)), hashed_config(cfg)
    if theirs == ours:
        return None
    diffs = [
        f"{sec}.{k}: checkpoint {theirs[sec].get(k)!r}, now {ours[sec][k]!r}"
        for sec in ours
        if isinstance(ours[sec], dict)
        for k in ours[sec]
        if theirs[sec].get(k) != ours[sec][k]
    ]
    diffs += [
        f"{sec}: checkpoint {theirs.get(sec)!r}, now {ours[sec]!r}"
        for sec in ours
        if not isinstance(ours[sec], dict) and theirs.get(sec) != ours[sec]
    ]
    return (
        f"checkpoint {path} was written with another config ({'; '.join(diffs)}); resume with the same "
        f"recipe and --set values, or start a new run directory"
    )


def config_hash(cfg: Config) -> str:
    """SHA-256 (hex, first 16 digits) of :func:`hashed_config`, stored in checkpoints. The config is
    first passed through the typed tree, so ``30`` and ``30.0`` in a float field hash alike."""
    blob = json.dumps(hashed_config(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require(cond: bool, key: str, value: Any, accepted: str) -> None:
    """Raise ConfigError('KEY=VALUE is invalid: ACCEPTED') unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: {accepted}")


NOISE_SCALE_SMALL_BATCHES = ("worker", "micro_batch")
"""Accepted ``train.noise_scale_small_batch`` values."""
MAX_SEED = 2**63 - 1
"""Largest ``train.seed``: torch's generators take 64-bit seeds, and derived seeds are 63-bit."""
MAX_EPOCHS = 10**6
"""Largest ``train.epochs``: a run lays out the steps of every epoch before it starts."""
THREADS_PER_CORE = 4
"""Most ``train.threads_per_worker`` per CPU core of the machine: a little oversubscription is legal,
thousands of threads per worker exhaust the process limit."""


def _check_finite(section: Any, prefix: str) -> None:
    """Refuse inf and nan in every float of the config tree (list items and batch stages included).

    Raises:
        ConfigError: naming the key and the value.
    """
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{prefix}{f.name}"
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            where = key if i is None else f"{key}[{i}]"
            if dataclasses.is_dataclass(item):
                _check_finite(item, where + ".")
            elif isinstance(item, float) and not math.isfinite(item):
                what = "a finite number" if i is None else f"finite numbers ({where} is {item!r})"
                raise ConfigError(f"{key}={value!r} is invalid: {what}, not inf or nan")


def validate(cfg: Config) -> None:
    """Check every key of ``cfg`` that does not depend on the number of processes: names, ranges,
    contradictions between keys, user factories that cannot be imported or called as their contract
    says (:func:`largebatch.registry.check_plugin`), bounds of the machine (threads per core). The
    batch split over processes is checked by :func:`largebatch.plan.resolve_stages`, which calls
    this first.

    Raises:
        ConfigError: naming the key, the value and what is accepted.
    """
    from largebatch.registry import DATASET_GROUP, MODEL_GROUP, check_plugin, is_plugin

    for name, group, key in ((cfg.data.name, DATASET_GROUP, "data.name"), (cfg.model.name, MODEL_GROUP, "model.name")):
        if name not in DATA_NAMES + MODEL_NAMES and is_plugin(name, group):
            check_plugin(name, group, key)  # a factory that cannot be imported or called as its contract says

    require(
        cfg.data.name in DATA_NAMES or is_plugin(cfg.data.name, DATASET_GROUP),
        "data.name",
        cfg.data.name,
        f"one of {', '.join(DATA_NAMES)}, or a user factory package.module:callable (docs/api.md)",
    )
    if cfg.model.name not in MODEL_NAMES and not is_plugin(cfg.model.name, MODEL_GROUP):
        from largebatch.nn.models import torchvision_classifiers

        require(
            cfg.model.name in torchvision_classifiers(),
            "model.name",
            cfg.model.name,
            "resnet_fmnist, a torchvision classification model (e.g. resnet18, resnet50, efficientnet_b0) or a "
            "user factory package.module:callable (docs/api.md)",
        )
    require(cfg.optim.name in OPTIM_NAMES, "optim.name", cfg.optim.name, f"one of {', '.join(OPTIM_NAMES)}")
    require(
        cfg.schedule.name in SCHEDULE_NAMES, "schedule.name", cfg.schedule.name, f"one of {', '.join(SCHEDULE_NAMES)}"
    )
    require(cfg.train.device in DEVICES, "train.device", cfg.train.device, f"one of {', '.join(DEVICES)}")
    require(
        cfg.optim.lr_scaling in LR_SCALINGS,
        "optim.lr_scaling",
        cfg.optim.lr_scaling,
        f"one of {', '.join(LR_SCALINGS)}",
    )
    require(
        cfg.train.precision in PRECISIONS, "train.precision", cfg.train.precision, f"one of {', '.join(PRECISIONS)}"
    )
    require(
        cfg.optim.rmsprop_warmup.variant in ALPHA_VARIANTS,
        "optim.rmsprop_warmup.variant",
        cfg.optim.rmsprop_warmup.variant,
        f"one of {', '.join(ALPHA_VARIANTS)}",
    )
    _check_finite(cfg, "")  # inf and nan are no hyperparameter (an inf weight decay passed the range checks below)
    require(
        isinstance(cfg.train.seed, int) and not isinstance(cfg.train.seed, bool) and 0 <= cfg.train.seed <= MAX_SEED,
        "train.seed",
        cfg.train.seed,
        f"an integer in [0, 2**63 - 1 = {MAX_SEED}] (torch's generators take 64-bit seeds, and rank r seeds seed + r)",
    )
    require(
        cfg.train.epochs <= MAX_EPOCHS,
        "train.epochs",
        cfg.train.epochs,
        f"a positive integer up to {MAX_EPOCHS:,} (the run lays out every epoch's steps before it starts; "
        f"ImageNet runs take 90)",
    )
    cores = os.cpu_count() or 1
    require(
        cfg.train.threads_per_worker <= THREADS_PER_CORE * cores,
        "train.threads_per_worker",
        cfg.train.threads_per_worker,
        f"an integer in [0, {THREADS_PER_CORE * cores}]: at most {THREADS_PER_CORE} threads per CPU core of this "
        f"machine ({cores} cores; more only slow the run down, and thousands exhaust the process limit); 0: the "
        f"cores divided among the local workers",
    )
    require(
        cfg.model.fc_init_std >= 0, "model.fc_init_std", cfg.model.fc_init_std, "a float >= 0 (0: torchvision's init)"
    )
    require(
        cfg.schedule.poly.power >= 0,
        "schedule.poly.power",
        cfg.schedule.poly.power,
        "a float >= 0 (2 in You et al. and MLPerf; 1: linear decay)",
    )
    require(
        cfg.schedule.decay_end_epochs is None or cfg.schedule.decay_end_epochs > 0,
        "schedule.decay_end_epochs",
        cfg.schedule.decay_end_epochs,
        "null (train.epochs) or a float > 0",
    )
    require(
        all(f >= 0 for f in cfg.schedule.slow_start.factors),
        "schedule.slow_start.factors",
        cfg.schedule.slow_start.factors,
        "floats >= 0 (multiples of the scaled LR)",
    )
    require(0 <= cfg.train.label_smoothing < 1, "train.label_smoothing", cfg.train.label_smoothing, "a float in [0, 1)")
    require(
        cfg.optim.lars.trust_coefficient > 0,
        "optim.lars.trust_coefficient",
        cfg.optim.lars.trust_coefficient,
        "a float > 0",
    )
    for key in ("optim.lamb.beta1", "optim.lamb.beta2", "optim.rmsprop_warmup.alpha"):
        value = get_key(cfg, key)
        require(0 <= value < 1, key, value, "a float in [0, 1)")
    for key in (
        "optim.lars.eps",
        "optim.lamb.eps",
        "optim.rmsprop_warmup.eps",
        "optim.rmsprop_warmup.lr",
        "schedule.end_lr",
    ):
        value = get_key(cfg, key)
        require(value >= 0, key, value, "a float >= 0")
    require(
        cfg.optim.rmsprop_warmup.period_epochs > 0,
        "optim.rmsprop_warmup.period_epochs",
        cfg.optim.rmsprop_warmup.period_epochs,
        "a float > 0",
    )
    slow = list(cfg.schedule.slow_start.epochs)
    require(
        slow == sorted(slow) and len(cfg.schedule.slow_start.factors) == len(slow) + 1,
        "schedule.slow_start.factors",
        cfg.schedule.slow_start.factors,
        f"one more factor than schedule.slow_start.epochs ({len(slow)} boundaries, increasing)",
    )
    if cfg.data.name == "imagefolder":
        require(
            bool(cfg.data.root),
            "data.root",
            cfg.data.root,
            "an ImageNet-layout folder with train/<class>/ and val/<class>/ is required for imagefolder",
        )
    for key in (
        "train.epochs",
        "train.global_batch_size",
        "train.max_micro_batch_size",
        "train.nproc",
        "train.eval_every_epochs",
        "train.eval_batch_size",
        "train.log_every_steps",
        "train.checkpoint_every_epochs",
        "train.keep_checkpoints",
        "optim.base_batch_size",
        "model.width",
        "model.blocks_per_stage",
        "data.image_size_px",
        "data.synthetic.train_samples",
        "data.synthetic.test_samples",
        "data.synthetic.channels",
    ):
        value = get_key(cfg, key)
        require(value >= 1, key, value, "a positive integer")
    require(cfg.model.stem_stride in (1, 2), "model.stem_stride", cfg.model.stem_stride, "1 or 2")
    require(cfg.data.synthetic.classes >= 2, "data.synthetic.classes", cfg.data.synthetic.classes, "an integer >= 2")
    for key in (
        "train.bn.batch_size",
        "train.accumulation_steps",
        "data.train_subset",
        "data.test_subset",
        "data.val_size",
        "data.crop_padding_px",
        "data.imagefolder.loader_workers",
        "train.threads_per_worker",
        "train.malloc_cache_mib",
    ):
        value = get_key(cfg, key)
        require(value >= 0, key, value, "an integer >= 0")
    require(
        cfg.train.noise_scale_small_batch in NOISE_SCALE_SMALL_BATCHES,
        "train.noise_scale_small_batch",
        cfg.train.noise_scale_small_batch,
        " or ".join(NOISE_SCALE_SMALL_BATCHES),
    )
    require(
        0 <= cfg.train.noise_scale_decay < 1,
        "train.noise_scale_decay",
        cfg.train.noise_scale_decay,
        "a number in [0, 1)",
    )
    require(
        cfg.optim.base_lr > 0 and math.isfinite(cfg.optim.base_lr),
        "optim.base_lr",
        cfg.optim.base_lr,
        "a positive finite float",
    )
    require(0 <= cfg.optim.momentum < 1, "optim.momentum", cfg.optim.momentum, "a float in [0, 1)")
    require(
        not (cfg.optim.nesterov and cfg.optim.momentum == 0),
        "optim.nesterov",
        cfg.optim.nesterov,
        "false when optim.momentum is 0 (Nesterov needs momentum)",
    )
    require(cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, "a float >= 0")
    require(cfg.schedule.warmup_epochs >= 0, "schedule.warmup_epochs", cfg.schedule.warmup_epochs, "a float >= 0")
    require(
        cfg.schedule.warmup_start_lr is None or cfg.schedule.warmup_start_lr >= 0,
        "schedule.warmup_start_lr",
        cfg.schedule.warmup_start_lr,
        "null (start at optim.base_lr) or a float >= 0",
    )
    require(0 < cfg.schedule.decay_factor <= 1, "schedule.decay_factor", cfg.schedule.decay_factor, "a float in (0, 1]")
    decays = list(cfg.schedule.decay_epochs)
    require(
        all(d > 0 for d in decays) and decays == sorted(decays),
        "schedule.decay_epochs",
        decays,
        "an increasing list of positive epochs, e.g. [30, 60, 80]",
    )
    require(0 <= cfg.train.target_top1 <= 100, "train.target_top1", cfg.train.target_top1, "a percentage in [0, 100]")
    require(
        math.isfinite(cfg.train.collective_timeout_s) and cfg.train.collective_timeout_s > 0,
        "train.collective_timeout_s",
        cfg.train.collective_timeout_s,
        "a finite number of seconds > 0",
    )
    for key in ("stop_at_val_top1", "val_target_top1"):
        value = getattr(cfg.train, key)
        require(0 <= value <= 100, f"train.{key}", value, "a percentage in [0, 100] (0: off)")
        require(
            value == 0 or cfg.data.val_size > 0,
            f"train.{key}",
            value,
            "0 unless data.val_size > 0 (the target is on the validation split; set data.val_size=5000)",
        )
    require(
        cfg.train.stop_after_images >= 0,
        "train.stop_after_images",
        cfg.train.stop_after_images,
        "an integer >= 0 (0: off)",
    )
    require(
        cfg.train.val_every_steps >= 0, "train.val_every_steps", cfg.train.val_every_steps, "an integer >= 0 (0: off)"
    )
    require(
        all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in cfg.train.val_at_steps),
        "train.val_at_steps",
        cfg.train.val_at_steps,
        "a list of optimizer steps, integers >= 1 (e.g. [1, 2, 4, 8])",
    )
    require(
        not cfg.train.val_at_steps or cfg.data.val_size > 0,
        "train.val_at_steps",
        cfg.train.val_at_steps,
        "[] unless data.val_size > 0 (set data.val_size=5000)",
    )
    require(
        cfg.train.val_every_steps == 0 or cfg.data.val_size > 0,
        "train.val_every_steps",
        cfg.train.val_every_steps,
        "0 unless data.val_size > 0 (set data.val_size=5000)",
    )
    require(
        not cfg.train.init_from or os.path.isfile(cfg.train.init_from),
        "train.init_from",
        cfg.train.init_from,
        "an existing checkpoint file (e.g. RUN/checkpoints/step_00001000.pt), or empty",
    )

    require(
        cfg.train.bn.statistics in BN_STATISTICS,
        "train.bn.statistics",
        cfg.train.bn.statistics,
        f"one of {', '.join(BN_STATISTICS)}",
    )
    require(
        cfg.train.bn.variance_averaging in VARIANCE_AVERAGINGS,
        "train.bn.variance_averaging",
        cfg.train.bn.variance_averaging,
        f"one of {', '.join(VARIANCE_AVERAGINGS)}",
    )
    require(
        cfg.train.bn.variance_averaging == "mean" or cfg.train.bn.statistics == "last_batch",
        "train.bn.variance_averaging",
        cfg.train.bn.variance_averaging,
        "'mean' unless train.bn.statistics=last_batch (pooling applies to last-batch statistics)",
    )
    require(
        cfg.data.imagefolder.decoder in DECODERS,
        "data.imagefolder.decoder",
        cfg.data.imagefolder.decoder,
        f"one of {', '.join(DECODERS)}",
    )
    require(
        cfg.data.imagefolder.decode_on in DECODE_ON,
        "data.imagefolder.decode_on",
        cfg.data.imagefolder.decode_on,
        f"one of {', '.join(DECODE_ON)}",
    )
    require(
        cfg.data.imagefolder.decode_on == "workers" or cfg.data.imagefolder.decoder == "torchvision",
        "data.imagefolder.decode_on",
        cfg.data.imagefolder.decode_on,
        "workers unless data.imagefolder.decoder=torchvision (dali always decodes on the device)",
    )
    require(
        cfg.data.imagefolder.bad_file_policy in BAD_FILE_POLICIES,
        "data.imagefolder.bad_file_policy",
        cfg.data.imagefolder.bad_file_policy,
        f"one of {', '.join(BAD_FILE_POLICIES)}",
    )
    require(
        not cfg.data.resize_stages or cfg.data.name != "imagefolder",
        "data.resize_stages",
        cfg.data.resize_stages,
        "empty for imagefolder (progressive resizing is built for in-memory data: fashion_mnist, "
        "synthetic, user data sets; set data.image_size_px per run instead)",
    )
    previous_start = -1
    for i, stage in enumerate(cfg.data.resize_stages):
        key = f"data.resize_stages[{i}]"
        require(
            previous_start < stage.start_epoch < cfg.train.epochs,
            f"{key}.start_epoch",
            stage.start_epoch,
            f"an epoch after the previous stage's and before train.epochs={cfg.train.epochs}",
        )
        require(stage.image_size_px >= 0, f"{key}.image_size_px", stage.image_size_px, "an integer >= 0")
        previous_start = stage.start_epoch
    require(
        cfg.data.val_size == 0 or cfg.data.name != "imagefolder",
        "data.val_size",
        cfg.data.val_size,
        "0 for imagefolder (a held-out split is built for fashion_mnist and synthetic; on "
        "ImageNet keep the official val/ as the test split and hold out a train/ subset by hand)",
    )
    require(
        cfg.train.nonfinite_check in NONFINITE_CHECKS,
        "train.nonfinite_check",
        cfg.train.nonfinite_check,
        f"one of {', '.join(NONFINITE_CHECKS)}",
    )
    require(
        cfg.train.nonfinite_policy in NONFINITE_POLICIES,
        "train.nonfinite_policy",
        cfg.train.nonfinite_policy,
        f"one of {', '.join(NONFINITE_POLICIES)}",
    )
    require(
        cfg.train.max_nonfinite_steps >= 1,
        "train.max_nonfinite_steps",
        cfg.train.max_nonfinite_steps,
        "a positive integer",
    )
    require(
        cfg.train.checkpoint_every_steps >= 0,
        "train.checkpoint_every_steps",
        cfg.train.checkpoint_every_steps,
        "an integer >= 0 (0: off)",
    )
    require(
        cfg.train.checkpoint_every_minutes >= 0 and math.isfinite(cfg.train.checkpoint_every_minutes),
        "train.checkpoint_every_minutes",
        cfg.train.checkpoint_every_minutes,
        "a float >= 0 (0: off)",
    )
    require(
        cfg.train.bn.precise_batches >= 1,
        "train.bn.precise_batches",
        cfg.train.bn.precise_batches,
        "a positive integer",
    )
    g = cfg.train.bn.sync_ranks
    require(g >= 1, "train.bn.sync_ranks", g, "a positive integer (1: no synchronization)")
    c = cfg.comm
    require(c.algorithm in COMM_ALGORITHMS, "comm.algorithm", c.algorithm, f"one of {', '.join(COMM_ALGORITHMS)}")
    require(
        c.compression in COMM_COMPRESSIONS, "comm.compression", c.compression, f"one of {', '.join(COMM_COMPRESSIONS)}"
    )
    require(
        c.hierarchical_mode in HIERARCHICAL_MODES,
        "comm.hierarchical_mode",
        c.hierarchical_mode,
        f"one of {', '.join(HIERARCHICAL_MODES)}",
    )
    require(c.bucket_cap_mb > 0, "comm.bucket_cap_mb", c.bucket_cap_mb, "a float > 0 (MiB)")
    require(
        c.workers_per_node >= 0 and c.torus_x >= 0,
        "comm.workers_per_node/torus_x",
        (c.workers_per_node, c.torus_x),
        "integers >= 0 (0: automatic)",
    )


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. a checkpoint or config.json)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(migrate(data))))
