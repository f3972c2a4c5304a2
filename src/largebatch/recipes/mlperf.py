"""MLPerf Training ResNet-50 (closed division): the reference and NVIDIA's 3,584-GPU entry (the MLPerf Training ResNet-50 reference)."""

from __future__ import annotations

from largebatch.config import (
    BNConfig,
    Config,
    DataConfig,
    ImageFolderConfig,
    LarsConfig,
    ModelConfig,
    OptimConfig,
    PolyConfig,
    ScheduleConfig,
    TrainConfig,
)
from largebatch.recipes import register


@register
def mlperf_lars_resnet50_imagenet_4k() -> Config:
    """The MLPerf reference command for B = 4096: LARS, LR 10.0, warmup 5 from 0, poly 2 to 1e-4, 42 epochs."""
    return Config(
        recipe="mlperf_lars_resnet50_imagenet_4k",
        description="MLPerf reference: ResNet-50 v1.5, global batch 4096, LARS, LR 10, 5 warmup epochs, poly 2, label smoothing 0.1, 42 epochs; target 75.9%",
        source="mlcommons/training image_classification README and lars_util.py (the MLPerf Training ResNet-50 reference) [V]",
        data=DataConfig(
            name="imagefolder", root="", image_size_px=224, imagefolder=ImageFolderConfig(loader_workers=8)
        ),
        model=ModelConfig(name="resnet50"),
        train=TrainConfig(
            epochs=42,
            global_batch_size=4096,
            bn=BNConfig(batch_size=32),
            max_micro_batch_size=256,
            nproc=8,
            eval_every_epochs=4,
            eval_batch_size=256,
            target_top1=75.9,
            label_smoothing=0.1,
        ),
        # LR 10.0 at 4096 (0.625 per 256), momentum 0.9, wd 2e-4, LARS eta 0.001 and eps 0; BN and biases get
        # neither LARS nor weight decay (skip_list).
        optim=OptimConfig(
            name="lars",
            base_lr=10.0,
            base_batch_size=4096,
            momentum=0.9,
            nesterov=False,
            weight_decay=2e-4,
            lars=LarsConfig(trust_coefficient=0.001, eps=0.0),
        ),
        schedule=ScheduleConfig(
            name="poly", warmup_epochs=5, warmup_start_lr=0.0, poly=PolyConfig(power=2.0), end_lr=1e-4
        ),
    )


@register
def mlperf_lars_resnet50_imagenet_57k() -> Config:
    """NVIDIA + CoreWeave, MLPerf v3.0, 3,584 H100 (448 x 8) x 16 images = 57,344, 0.183 min."""
    return Config(
        recipe="mlperf_lars_resnet50_imagenet_57k",
        description="MLPerf v3.0 NVIDIA: global batch 57344 (3584 x 16), LARS, LR 23, 32 warmup epochs, poly 2 over 78 epochs, BN over 32; 0.183 min",
        source="mlcommons/training_results_v3.1 NVIDIA config_DGXH100_multi_448x8x16 and result log (the MLPerf Training ResNet-50 reference) [V]",
        data=DataConfig(
            name="imagefolder", root="", image_size_px=224, imagefolder=ImageFolderConfig(loader_workers=8)
        ),
        model=ModelConfig(name="resnet50"),
        # 16 images per GPU with BN synchronized over 2 GPUs (BN span 32): each BN group is 32 samples
        # spread over 2 processes (group-synchronized BN, train.bn.sync_ranks=2).
        train=TrainConfig(
            epochs=78,
            global_batch_size=57344,
            bn=BNConfig(batch_size=32, sync_ranks=2),
            max_micro_batch_size=256,
            nproc=8,
            eval_every_epochs=4,
            eval_batch_size=256,
            target_top1=75.9,
            label_smoothing=0.1,
        ),
        # LR 23.0 at 57,344, momentum 0.95, wd 2.5e-5 with the FC-bias exception, LARS eta 0.001, eps 0.
        optim=OptimConfig(
            name="lars",
            base_lr=23.0,
            base_batch_size=57344,
            momentum=0.95,
            nesterov=False,
            weight_decay=2.5e-5,
            fc_bias_weight_decay=True,
            lars=LarsConfig(trust_coefficient=0.001, eps=0.0),
        ),
        schedule=ScheduleConfig(
            name="poly",
            warmup_epochs=32,
            warmup_start_lr=0.0,
            poly=PolyConfig(power=2.0),
            end_lr=1e-4,
            decay_end_epochs=78,
        ),
    )
