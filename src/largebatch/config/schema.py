"""The config tree: typed, keyword-only dataclasses, one per section, each field with its default,
its docstring and, through :func:`~largebatch.config.fields.setting`, what it accepts (closed
choices, numeric range, unit; ``unit=EPOCHS`` marks the epoch-valued settings). The rules that
involve more than one field are written out in :mod:`largebatch.config.validation`.

The closed choices that the modules below the config in the layering (``largebatch.nn``,
``largebatch.dist``) check themselves are defined in :mod:`largebatch.choices`; every other set is
written on its field, and the module constants at the end (``OPTIM_NAMES``, ...) read it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from largebatch.choices import BN_STATISTICS, COMM_ALGORITHMS, COMM_COMPRESSIONS, VARIANCE_AVERAGINGS
from largebatch.config.fields import EPOCHS, choices_of, setting

MAX_SEED = 2**63 - 1
"""Largest ``train.seed``: torch's generators take 64-bit seeds, and derived seeds are 63-bit."""
SEED_ACCEPTED = (
    f"an integer in [0, 2**63 - 1 = {MAX_SEED}] (torch's generators take 64-bit seeds, and rank r seeds seed + r)"
)
OFF_INT = "an integer >= 0 (0: off)"
OFF_PERCENT = "a percentage in [0, 100] (0: off)"
LR_SCALINGS = ("linear", "sqrt", "none")
"""``optim.lr_scaling`` and a batch stage's ``lr_scaling``: how the LR follows the global batch."""


@dataclass(kw_only=True)
class ResizeStage:
    """One stage of progressive resizing: training images at a lower resolution in early epochs."""

    start_epoch: int = setting(0, unit=EPOCHS)
    """First epoch of the stage."""
    image_size_px: int = setting(0, ge=0, unit="px")
    """Side, in pixels, to which training batches are resized (bilinear, antialiased) from
    start_epoch on; 0: the data set's own size."""


@dataclass(kw_only=True)
class DataConfig:
    name: str = setting("fashion_mnist", choices=("fashion_mnist", "synthetic", "imagefolder"), plugins=True)
    """Data set: ``fashion_mnist`` (IDX files, held in memory), ``synthetic`` (random tensors, for
    benchmarks) or ``imagefolder`` (an ImageNet-layout folder ``root/train/<class>/*``,
    ``root/val/<class>/*`` read with torchvision)."""
    root: str = ""
    """Directory of the data set. Empty: ``/usr/share/datasets/fashion-mnist`` for fashion_mnist
    (Debian's ``dataset-fashion-mnist``); required for imagefolder."""
    train_subset: int = setting(0, ge=0, unit="samples")
    """Use only the first N training samples (0: all). For tests and short studies."""
    test_subset: int = setting(0, ge=0, unit="samples")
    """Evaluate on only the first N test samples (0: all)."""
    val_size: int = setting(0, ge=0, unit="samples")
    """Hold out N images of the training set (after ``train_subset``) as a validation split: a
    permutation seeded by ``train.seed`` picks them, they are never trained on, and the split is
    the same on any number of workers. Evaluated at every evaluation, like the test set, and logged
    as ``val_top1`` / ``val_loss``; choose hyperparameters on it, never on the test set (0: none).
    fashion_mnist and synthetic only."""
    augment: bool = True
    """Training augmentation: random crop with padding + horizontal flip (Fashion-MNIST, synthetic);
    random-resized crop + flip (imagefolder)."""
    crop_padding_px: int = setting(2, ge=0, unit="px")
    """Zero padding, in pixels, on each side before the random crop back to the input size."""
    image_size_px: int = setting(224, ge=1, unit="px")
    """Training crop side for imagefolder, and the side of synthetic images."""
    resize_stages: list[ResizeStage] = field(default_factory=list)
    """Progressive resizing (fast.ai's and FFCV's ImageNet runs; Howard 2018, Leclerc et al. 2023):
    stages of (start_epoch, image_size_px), each resizing the training batches from its start epoch
    on, after augmentation and normalization; evaluation always sees the data set's own size, so
    the model must be fully convolutional (global pooling). Empty: the own size throughout.
    fashion_mnist, synthetic and user data sets (in-memory tensors) only. Which sizes help is
    measured per recipe, not a published constant [U]."""
    synthetic: SyntheticConfig = setting(factory=lambda: SyntheticConfig(), read_by=("synthetic",))
    """``data.name=synthetic``: size, classes and channels of the random data set."""
    imagefolder: ImageFolderConfig = setting(factory=lambda: ImageFolderConfig(), read_by=("imagefolder",))
    """``data.name=imagefolder``: the loader, the decoder and the bad-file policy."""


@dataclass(kw_only=True)
class ModelConfig:
    name: str = setting("resnet_fmnist", choices=("resnet_fmnist", "resnet18", "resnet50"), plugins=True)
    """``resnet_fmnist`` (small ResNet for 28x28 inputs, see ``largebatch.nn.models``) or any
    torchvision classification model (``resnet18``, ``resnet50``, ``efficientnet_b0``, ...; ImageNet
    layout, untrained, every BatchNorm2d replaced by ghost BN)."""
    width: int = setting(16, ge=1, unit="channels")
    """resnet_fmnist: channels of the first stage (doubled at each of the three stages)."""
    blocks_per_stage: int = setting(1, ge=1)
    """resnet_fmnist: BasicBlocks per stage."""
    stem_stride: int = setting(1, choices=(1, 2), accepted="1 or 2")
    """resnet_fmnist: stride of the 3x3 stem, 1 or 2. 2 halves the side of every stage (14, 7 and 4
    px on 28x28 images instead of 28, 14 and 7): about a quarter of the FLOPs, the same parameters."""
    zero_init_residual: bool = True
    """Zero-init the last BN gamma of every residual block (Goyal et al. 2017, sec. 5.1)."""
    fc_init_std: float = setting(0.01, ge=0, accepted="a float >= 0 (0: torchvision's init)")
    """Std of the N(0, std^2) init of the final FC weight (Goyal et al. 2017, sec. 5.1); 0 keeps
    torchvision's default init."""
    channels_last: bool = True
    """Use the channels_last memory format (faster convolutions on CPU and on tensor cores)."""


@dataclass(kw_only=True)
class BatchStage:
    """One stage of a batch-size schedule (Mikami et al. 2018's batch-size control)."""

    start_epoch: int = setting(0, unit=EPOCHS)
    """First epoch of the stage (the first stage starts at 0)."""
    global_batch_size: int = setting(256, ge=1, unit="samples")
    """Global batch from start_epoch on."""
    lr_scaling: str = setting("linear", choices=LR_SCALINGS)
    """Peak LR of the stage from optim.base_lr per optim.base_batch_size: ``linear``, ``sqrt`` or
    ``none``; ignored when peak_lr is set."""
    peak_lr: float = setting(0.0, ge=0, accepted="0 (use lr_scaling) or a positive finite float")
    """Explicit peak LR of the stage (0: use lr_scaling)."""
    bn_batch_size: int = setting(0, ge=0, accepted="an integer >= 0 (0: keep train.bn.batch_size)", unit="samples")
    """BN batch of the stage (0: keep train.bn.batch_size); Mikami's per-GPU batch, and so its BN
    batch, doubles at the switch."""


@dataclass(kw_only=True)
class BNConfig:
    """Batch normalization over the global batch (docs/bn.md)."""

    batch_size: int = setting(32, ge=0, unit="samples")
    """Samples per BN group, the BN batch: the paper's per-worker n (Goyal et al. 2017 sec. 2.3). Each
    process splits its batch into groups of this size and normalizes each group on its own (ghost BN,
    Hoffer et al. 2017 sec. 4.1). 0: one group per forward pass. With sync_ranks = g > 1 it is the BN
    span: each of g processes holds batch_size / g of a group."""
    statistics: str = setting("moving_average", choices=BN_STATISTICS)
    """Where the evaluation statistics of BN come from: ``moving_average`` (momentum 0.1, averaged
    over workers before evaluation), ``last_batch`` (Akiba et al. 2017 sec. 3.3: the last step's batch
    statistics averaged over workers, no moving average) or ``precise`` (population statistics
    recomputed over precise_batches training batches before each evaluation, all-reduced)."""
    variance_averaging: str = setting("mean", choices=VARIANCE_AVERAGINGS)
    """``last_batch``: average the workers' variances (``mean``, the literal reading) or take the
    variance of their union (``pooled``) [U]."""
    precise_batches: int = setting(10, ge=1, unit="batches")
    """``precise``: number of global training batches whose statistics are accumulated."""
    sync_ranks: int = setting(1, ge=1, accepted="a positive integer (1: no synchronization)", unit="processes")
    """Group-synchronized BN: consecutive processes that share BN statistics (Ying et al. 2018's
    distributed BN; NVIDIA's MLPerf entry uses 2 GPUs x 16 = 32). 1: per-process BN."""


@dataclass(kw_only=True)
class TrainConfig:
    epochs: int = setting(90, ge=1, unit=EPOCHS)
    """Number of passes over the training set (at most 1,000,000)."""
    global_batch_size: int = setting(256, ge=1, unit="samples")
    """Samples per optimizer step summed over all workers (the paper's kn)."""
    bn: BNConfig = field(default_factory=lambda: BNConfig())
    """Batch normalization across workers: the BN batch, the evaluation statistics, synchronization."""
    batch_schedule: list[BatchStage] = field(default_factory=list)
    """Batch-size control (Mikami et al. 2018): stages of (start_epoch, global_batch_size, LR rule).
    Empty: train.global_batch_size throughout. The first stage starts at epoch 0 with
    train.global_batch_size."""
    accumulation_steps: int = setting(0, ge=0)
    """Forward/backward passes per optimizer step on each process (gradient accumulation). 0: the
    fewest that keep a forward pass within max_micro_batch_size samples."""
    max_micro_batch_size: int = setting(256, ge=1, unit="samples")
    """Most samples one forward pass may hold (memory bound); used when accumulation_steps is 0."""
    nproc: int = setting(1, ge=1, unit="processes")
    """Local worker processes that ``largebatch train`` starts when --nproc is not given (ignored
    under torchrun, which sets the world size itself)."""
    seed: int = setting(0, ge=0, le=MAX_SEED, integer=True, accepted=SEED_ACCEPTED)
    """Seed of model init, the per-epoch shuffle and augmentation; process r also seeds torch's
    global RNG with seed + r. An integer in [0, 2**63 - 1]."""
    eval_every_epochs: int = setting(1, ge=1, unit=EPOCHS)
    """Evaluate on the test split every N epochs (and always after the last)."""
    eval_batch_size: int = setting(1000, ge=1, unit="samples")
    """Samples per forward pass during evaluation, per process."""
    eval_flip: bool = False
    """Test-time augmentation: every evaluation (test and validation) averages the logits of each
    image and of its left-right mirror, at twice the evaluation cost [U]."""
    log_every_steps: int = setting(20, ge=1, unit="steps")
    """Steps between metric lines (loss is reduced across workers only at these points)."""
    checkpoint_every_epochs: int = setting(1, ge=1, unit=EPOCHS)
    """Write a checkpoint every N epochs (and always at the end)."""
    checkpoint_every_steps: int = setting(0, ge=0, accepted=OFF_INT, unit="steps")
    """Also write a checkpoint every N optimizer steps (0: only per epoch and at the end)."""
    checkpoint_every_minutes: float = setting(0.0, ge=0, accepted="a float >= 0 (0: off)", unit="minutes")
    """Also write a checkpoint when this many minutes of training passed since the last one
    (0: off); rank 0's clock decides, all ranks follow."""
    keep_checkpoints: int = setting(2, ge=1)
    """Number of newest checkpoints kept in ``checkpoints/``."""
    nonfinite_policy: str = setting("skip", choices=("skip", "stop"))
    """A NaN or Inf in the gradients of a step: ``skip`` the step (no update, counted) or ``stop`` the
    run with a message naming the step, the LR and the layers. fp16 runs leave this to the loss
    scaler, which skips such steps and lowers the scale."""
    nonfinite_check: str = setting("auto", choices=("auto", "host", "device"))
    """Where the gradients are checked: ``host`` (one sync per step: free on CPU), ``device`` (no
    sync: the step is applied, then undone on the device where a gradient was not finite; counted
    and reported at the next log interval, evaluation or checkpoint) or ``auto`` (device on CUDA,
    host elsewhere)."""
    max_nonfinite_steps: int = setting(20, ge=1, unit="steps")
    """``skip``: after this many skipped steps the run stops; its message names the newest usable
    checkpoint (finite weights), which the rotation never deletes."""
    target_top1: float = setting(0.0, ge=0, le=100, accepted="a percentage in [0, 100]", unit="percent")
    """Test top-1 (percent) whose first crossing is reported as time_to_target_s (0: none)."""
    val_every_steps: int = setting(0, ge=0, accepted=OFF_INT, unit="steps")
    """Also evaluate the validation split (data.val_size > 0) every N optimizer steps, logged as
    ``val_top1`` eval records: the resolution of steps to target (Shallue et al. 2018 sec. 3.2
    measure it at regular step intervals). 0: only with the per-epoch evaluations."""
    val_at_steps: list[int] = setting(
        factory=list,
        ge=1,
        integer=True,
        accepted="a list of optimizer steps, integers >= 1 (e.g. [1, 2, 4, 8])",
        unit="steps",
    )
    """Also evaluate the validation split at these optimizer steps (each >= 1; data.val_size > 0):
    unevenly spaced evaluations, such as the log-spaced ones of ``largebatch critical-batch``'s
    branches, which resolve a loss curve's fast start. []: none."""
    stop_at_val_top1: float = setting(0.0, ge=0, le=100, accepted=OFF_PERCENT, unit="percent")
    """Stop training at the first evaluation whose validation top-1 (percent) reaches this target,
    after a final test evaluation and checkpoint; summary.json records ``steps_to_val_target`` and
    ``images_to_val_target``. Needs data.val_size > 0. 0: train all epochs (a crossing is still
    recorded when this is 0 and val_target_top1 is set)."""
    val_target_top1: float = setting(0.0, ge=0, le=100, accepted=OFF_PERCENT, unit="percent")
    """Validation top-1 (percent) whose first crossing is recorded as steps_to_val_target without
    stopping (stop_at_val_top1 sets it too). 0: none."""
    stop_after_images: int = setting(0, ge=0, accepted=OFF_INT, unit="images")
    """End the run (final test evaluation and checkpoint) once this many training images have been
    seen, mid-epoch if need be; the schedule is still laid out over train.epochs. A fixed data budget
    for every batch size, as the branches of Merrill et al. 2025 use. 0: all epochs."""
    init_from: str = ""
    """A checkpoint (file) whose model weights and BN buffers start this run, with a fresh optimizer,
    schedule and step count: the branches of Merrill et al. 2025 ("Critical batch size revisited",
    sec. 3) start this way from checkpoints of one run. Empty: initialize from train.seed."""
    label_smoothing: float = setting(0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss (torch's built-in; 0.1 in MLPerf's reference)."""
    noise_scale: bool = True
    """Measure the gradient noise scale B_simple (McCandlish et al. 2018) from each worker's gradient
    and the all-reduced one (a DDP hook: two norms per bucket, no extra communication), logged as
    ``noise_scale`` in metrics and TensorBoard at every log interval. Needs 2 or more workers."""
    noise_scale_decay: float = setting(0.99, ge=0, lt=1, accepted="a number in [0, 1)")
    """Per-step decay of the moving averages behind the noise scale (0.99: about 100 steps)."""
    noise_scale_small_batch: str = setting(
        "worker", choices=("worker", "micro_batch"), accepted="worker or micro_batch"
    )
    """The small batch of the two-batch estimate (McCandlish et al. 2018, app. A.1): ``worker`` (one
    worker's gradient of its per-worker batch, from the DDP hook; needs 2 or more workers) or
    ``micro_batch`` (the gradient of each micro-batch of the accumulation, from differences of the
    accumulated gradients: small batches of one BN group, on one process or many; the automatic
    ``train.accumulation_steps`` then makes each micro-batch one BN group). ``micro_batch`` also logs
    every step's estimates of |G|^2 and tr(Sigma) (``noise_scale_steps`` in the train records), which
    ``largebatch advise`` reads in windows (docs/noise_scale.md)."""
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"))
    """``auto`` (bf16 where the device runs it natively: CUDA GPUs with bf16, CPUs with AVX-512 BF16
    or AMX; fp32 elsewhere; see ``largebatch.train.precision``), ``fp32``, ``bf16`` (autocast) or
    ``fp16`` (autocast + dynamic loss scaling; the optimizer sees the unscaled, all-reduced
    gradient, and a step with a non-finite gradient is skipped). docs/precision.md says what each
    changes."""
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    compile: bool = False
    """``torch.compile`` the model in place (``nn.Module.compile``: the same parameters, buffers and
    checkpoint keys) after DDP wraps it, so DDP's optimizer splits the graph at its buckets. The
    first steps pay the compilation (tens of seconds on ResNet-50)."""
    threads_per_worker: int = setting(0, ge=0, unit="threads")
    """torch intra-op threads per process, at most 4 per CPU core; 0: CPU cores divided by local workers."""
    malloc_cache_mib: int = setting(1024, ge=0, unit="MiB")
    """MiB of freed memory each worker process keeps for reuse instead of returning it to the kernel
    (glibc's ``M_TRIM_THRESHOLD``; tensors up to 32 MiB are then served from the heap instead of
    fresh ``mmap`` calls). Without it a CPU step of the main job's network page-faults its
    activations back in (7,600 faults, a quarter of the step) until glibc's own thresholds grow,
    in ``largebatch train`` after the first epoch (docs/performance.md). Same results either way.
    0 keeps the C library's defaults; no effect where the C library is not glibc."""
    collective_timeout_s: float = setting(900.0, gt=0, accepted="a finite number of seconds > 0", unit="s")
    """Seconds a collective (and the process group's store) waits for the other workers before it
    raises: a hung or stopped worker ends the run with a message naming this key instead of
    stalling it (torch's default is 1800 s)."""


@dataclass(kw_only=True)
class LarsConfig:
    trust_coefficient: float = setting(0.001, gt=0)
    """Trust coefficient eta (You et al. 2017: 0.001; apex LARC uses 0.02 with clipping)."""
    eps: float = setting(0.0, ge=0)
    """Epsilon in the trust-ratio denominator (MLPerf: 0; TF turns 0 into 1e-7)."""
    clip: bool = False
    """apex LARC clipping mode: effective LR min(lr, local LR)."""


@dataclass(kw_only=True)
class LambConfig:
    beta1: float = setting(0.9, ge=0, lt=1)
    """First-moment decay."""
    beta2: float = setting(0.999, ge=0, lt=1)
    """Second-moment decay."""
    eps: float = setting(1e-6, ge=0)
    """Epsilon (TF-Addons default)."""


@dataclass(kw_only=True)
class RMSpropWarmupConfig:
    lr: float = setting(3e-4, ge=0)
    """eta_RMSprop of alpha_RMSprop = (1 - alpha_SGD) * eta_RMSprop / lr [S]."""
    alpha: float = setting(0.99, ge=0, lt=1)
    """Second-moment decay mu2 [S]."""
    eps: float = setting(1e-8, ge=0)
    """Epsilon [S]."""
    center_epochs: float = setting(10.0, unit=EPOCHS)
    """beta_center of the alpha_SGD schedule, in epochs [S]."""
    period_epochs: float = setting(5.0, gt=0, unit=EPOCHS)
    """beta_period of the alpha_SGD schedule, in epochs [S]."""
    variant: str = setting("printed", choices=("printed", "smooth"))
    """alpha_SGD: ``printed`` (as published, discontinuous) or ``smooth`` (our C1 reading) [U]."""


@dataclass(kw_only=True)
class PolyConfig:
    power: float = setting(2.0, ge=0, accepted="a float >= 0 (2 in You et al. and MLPerf; 1: linear decay)")
    """The exponent (2 in You et al. and MLPerf)."""


@dataclass(kw_only=True)
class SlowStartConfig:
    epochs: list[float] = setting(factory=lambda: [40.0, 70.0, 85.0], unit=EPOCHS)
    """Epochs where the next factor begins (Akiba sec. 3.2: 40/70/85 of 90) [S]."""
    factors: list[float] = setting(
        factory=lambda: [0.5, 0.075, 0.01, 0.001], ge=0, accepted="floats >= 0 (multiples of the scaled LR)"
    )
    """Multiples of the scaled LR, one more than ``epochs`` [S]."""


@dataclass(kw_only=True)
class ImageFolderConfig:
    loader_workers: int = setting(4, ge=0, unit="processes")
    """DataLoader worker processes per training process."""
    decoder: str = setting("torchvision", choices=("torchvision", "pil", "dali"))
    """``torchvision`` (decode from bytes with torchvision.io, augment uint8 tensors,
    normalize batched on the device; the fast path) or ``pil`` (torchvision's plain ImageFolder +
    PIL pipeline) or ``dali`` (NVIDIA DALI, ``pip install 'largebatch[dali]'``: nvJPEG decoding
    and augmentation on the GPU, DALI's CPU operators on a CPU run; see docs/data.md)."""
    decode_on: str = setting("workers", choices=("workers", "device"))
    """With decoder=torchvision: ``workers`` (each image decoded and augmented in a
    DataLoader worker process on the CPU) or ``device`` (the workers' threads only read bytes; the
    training process decodes the whole batch on the training device: batched nvJPEG on CUDA)."""
    val_labels: str = ""
    """A labels file for a flat ``val/`` (``val/*.JPEG``): ImageNet's
    LOC_val_solution.csv or lines of ``<file> <wnid>``; empty: ``val/<wnid>/*`` folders."""
    bad_file_policy: str = setting("fail", choices=("fail", "skip"))
    """An image file that cannot be decoded (zero-byte, truncated, not an image)
    ``fail``s the run with a message naming it, or is ``skip``ped (replaced by the next readable
    sample, so batches keep their size) and listed in bad_files.txt and summary.json at the end."""


@dataclass(kw_only=True)
class SyntheticConfig:
    train_samples: int = setting(4096, ge=1, unit="samples")
    """Number of training samples."""
    test_samples: int = setting(1024, ge=1, unit="samples")
    """Number of test samples."""
    classes: int = setting(10, ge=2)
    """Number of classes."""
    channels: int = setting(1, ge=1)
    """Channels of the images."""


@dataclass(kw_only=True)
class OptimConfig:
    name: str = setting("sgd", choices=("sgd", "lars", "lamb", "rmsprop_warmup"))
    """``sgd`` (torch.optim.SGD, Goyal et al. form (9): no momentum correction needed), ``lars``
    (You et al. 2017), ``lamb`` (You et al. 2019) or ``rmsprop_warmup`` (Akiba et al. 2017)."""
    base_lr: float = setting(0.1, gt=0, accepted="a positive finite float")
    """Learning rate at ``base_batch_size``, scaled to the global batch by ``lr_scaling``."""
    base_batch_size: int = setting(256, ge=1, unit="samples")
    """The batch size at which base_lr is given (0.1 per 256 in Goyal et al.)."""
    lr_scaling: str = setting("linear", choices=LR_SCALINGS)
    """``linear`` (Goyal sec. 2.1: lr = base_lr * B / base_batch), ``sqrt`` (lr = base_lr *
    sqrt(B / base_batch), an option for adaptive optimizers) or ``none`` (lr = base_lr)."""
    momentum: float = setting(0.9, ge=0, lt=1)
    """Momentum coefficient m (sgd, lars; mu1 of rmsprop_warmup)."""
    nesterov: bool = True
    """Nesterov momentum (sgd, lars)."""
    weight_decay: float = setting(1e-4, ge=0)
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
    lars: LarsConfig = setting(factory=lambda: LarsConfig(), read_by=("lars",))
    """``optim.name=lars``: LARS's own settings."""
    lamb: LambConfig = setting(factory=lambda: LambConfig(), read_by=("lamb",))
    """``optim.name=lamb``: LAMB's own settings."""
    rmsprop_warmup: RMSpropWarmupConfig = setting(factory=lambda: RMSpropWarmupConfig(), read_by=("rmsprop_warmup",))
    """``optim.name=rmsprop_warmup``: the RMSprop blend and its alpha_SGD schedule."""


@dataclass(kw_only=True)
class ScheduleConfig:
    name: str = setting("step", choices=("step", "poly", "cosine", "slow_start"))
    """``step`` (Goyal), ``poly`` (MLPerf, You et al.), ``cosine`` or ``slow_start`` (Akiba);
    each after a linear warmup. See ``largebatch.schedules.lr``."""
    warmup_epochs: float = setting(5.0, ge=0, unit=EPOCHS)
    """Epochs of gradual (per-iteration linear) warmup to the scaled LR; 0 disables it."""
    warmup_start_lr: float | None = setting(None, ge=0, accepted="null (start at optim.base_lr) or a float >= 0")
    """LR at step 0 of the warmup. None: optim.base_lr, i.e. the small-batch LR (Goyal sec. 2.2);
    MLPerf starts at 0. A start above the scaled LR (global batch below base_batch_size) is lowered
    to it: no warmup."""
    decay_epochs: list[float] = setting(
        factory=lambda: [30.0, 60.0, 80.0],
        gt=0,
        increasing=True,
        accepted="an increasing list of positive epochs, e.g. [30, 60, 80]",
        unit=EPOCHS,
        read_by=("step",),
    )
    """``step``: epochs at which the LR is multiplied by decay_factor (30/60/80 of 90 in Goyal et al.)."""
    decay_factor: float = setting(0.1, gt=0, le=1, read_by=("step",))
    """``step``: the multiplier applied at each decay epoch."""
    end_lr: float = setting(1e-4, ge=0, read_by=("poly", "cosine"))
    """``poly`` and ``cosine``: the final LR (MLPerf: 1e-4)."""
    poly: PolyConfig = setting(factory=lambda: PolyConfig(), read_by=("poly",))
    """``schedule.name=poly``: its exponent."""
    decay_end_epochs: float | None = setting(
        None, gt=0, accepted="null (train.epochs) or a float > 0", unit=EPOCHS, read_by=("poly", "cosine")
    )
    """``poly`` and ``cosine``: epoch at which the decay reaches end_lr (None: train.epochs; NVIDIA's
    MLPerf 57k run decays over 78 epochs)."""
    slow_start: SlowStartConfig = setting(factory=lambda: SlowStartConfig(), read_by=("slow_start",))
    """``schedule.name=slow_start``: boundaries and factors (Akiba et al. 2017 sec. 3.2)."""


@dataclass(kw_only=True)
class CommConfig:
    algorithm: str = setting("allreduce", choices=COMM_ALGORITHMS)
    """Gradient all-reduce: ``allreduce`` (DDP's own), ``hierarchical`` (intra-node, inter-node,
    intra-node; Goyal et al. 2017 sec. 4, Jia et al. 2018) or ``torus2d`` (Mikami et al. 2018), as DDP
    communication hooks (largebatch.dist.hooks)."""
    compression: str = setting("none", choices=COMM_COMPRESSIONS)
    """Cast gradients to ``fp16`` or ``bf16`` for the communication (PyTorch's compression hooks and
    wrappers), or ``none``."""
    bucket_cap_mb: float = setting(25.0, gt=0, accepted="a float > 0 (MiB)", unit="MiB")
    """DDP bucket size in MiB (PyTorch's default 25)."""
    workers_per_node: int = setting(0, unit="processes")
    """Workers per node for the hierarchical and torus algorithms; 0: torchrun's LOCAL_WORLD_SIZE
    (with --nproc, all local workers are one node). Set it to simulate several nodes on one machine."""
    torus_x: int = 0
    """2D-torus row length X (X * Y = number of workers); 0: workers_per_node (a row is a node)."""
    hierarchical_mode: str = setting("scatter", choices=("scatter", "reduce"))
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


DATA_NAMES = choices_of(DataConfig, "name")
"""The built-in data sets (``data.name`` also takes user factories)."""
MODEL_NAMES = choices_of(ModelConfig, "name")
"""The models named without torchvision's list (``model.name`` also takes torchvision's and user factories)."""
OPTIM_NAMES = choices_of(OptimConfig, "name")
SCHEDULE_NAMES = choices_of(ScheduleConfig, "name")
PRECISIONS = choices_of(TrainConfig, "precision")
ALPHA_VARIANTS = choices_of(RMSpropWarmupConfig, "variant")
DEVICES = choices_of(TrainConfig, "device")
HIERARCHICAL_MODES = choices_of(CommConfig, "hierarchical_mode")
DECODERS = choices_of(ImageFolderConfig, "decoder")
DECODE_ON = choices_of(ImageFolderConfig, "decode_on")
BAD_FILE_POLICIES = choices_of(ImageFolderConfig, "bad_file_policy")
NONFINITE_CHECKS = choices_of(TrainConfig, "nonfinite_check")
NONFINITE_POLICIES = choices_of(TrainConfig, "nonfinite_policy")
NOISE_SCALE_SMALL_BATCHES = choices_of(TrainConfig, "noise_scale_small_batch")
"""Accepted ``train.noise_scale_small_batch`` values."""
