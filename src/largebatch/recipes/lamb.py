"""You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes" (LAMB,
arXiv 1904.00962); the ResNet-50 settings are not verified (You et al. 2019 (LAMB) [U])."""

from __future__ import annotations

from largebatch.config import (
    BNConfig,
    Config,
    DataConfig,
    ImageFolderConfig,
    LambConfig,
    ModelConfig,
    OptimConfig,
    PolyConfig,
    ScheduleConfig,
    TrainConfig,
)
from largebatch.recipes import register


@register
def lamb_resnet50_imagenet_16k() -> Config:
    """ResNet-50 with LAMB at 16K, 90 epochs; every hyperparameter here is an option [U]."""
    return Config(
        recipe="lamb_resnet50_imagenet_16k",
        description="ResNet-50 on ImageNet, global batch 16384, LAMB, sqrt-scaled LR, warmup + poly 2, 90 epochs (paper reports ~77% at 16K [U])",
        source="You et al. 2019 Algorithm 2 (LAMB); ResNet-50 hyperparameters are assumptions [U]",
        data=DataConfig(
            name="imagefolder", root="", image_size_px=224, imagefolder=ImageFolderConfig(loader_workers=8)
        ),
        model=ModelConfig(name="resnet50"),
        train=TrainConfig(
            epochs=90,
            global_batch_size=16384,
            bn=BNConfig(batch_size=32),
            max_micro_batch_size=256,
            nproc=8,
            eval_batch_size=256,
            target_top1=76.0,
            label_smoothing=0.1,
        ),
        # Square-root scaling (an option for adaptive optimizers): 0.00125 per 256 -> 0.01 at 16K [U];
        # decoupled weight decay 0.01 excluded from BN and biases, which are also excluded from adaptation [U].
        optim=OptimConfig(
            name="lamb",
            base_lr=0.00125,
            base_batch_size=256,
            lr_scaling="sqrt",
            weight_decay=0.01,
            lamb=LambConfig(beta1=0.9, beta2=0.999, eps=1e-6),
        ),
        schedule=ScheduleConfig(
            name="poly", warmup_epochs=5, warmup_start_lr=0.0, poly=PolyConfig(power=2.0), end_lr=0.0
        ),
    )
