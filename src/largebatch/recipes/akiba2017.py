"""Akiba, Suzuki, Fukuda 2017, "Extremely Large Minibatch SGD: Training ResNet-50 on ImageNet in 15
Minutes" (arXiv 1711.04325). Equations from secondary sources [S] (Akiba et al. 2017)."""

from __future__ import annotations

from largebatch.config import (
    BNConfig,
    Config,
    DataConfig,
    ImageFolderConfig,
    ModelConfig,
    OptimConfig,
    RMSpropWarmupConfig,
    ScheduleConfig,
    SlowStartConfig,
    TrainConfig,
)
from largebatch.recipes import register


@register
def akiba2017_resnet50_imagenet_32k() -> Config:
    """32,768 = 1024 GPUs x 32, 90 epochs: RMSprop warm-up and the slow-start schedule."""
    return Config(
        recipe="akiba2017_resnet50_imagenet_32k",
        description="ResNet-50 on ImageNet, global batch 32768 (1024 x 32), RMSprop warm-up + slow-start LR, 90 epochs; paper: 74.9% in 15 min on 1024 P100",
        source="Akiba et al. 2017, sec. 3 (arXiv 1711.04325); equations via [S]",
        data=DataConfig(
            name="imagefolder", root="", image_size_px=224, imagefolder=ImageFolderConfig(loader_workers=8)
        ),
        model=ModelConfig(name="resnet50"),
        # BN without moving averages: the last batch's statistics averaged over workers before each
        # evaluation (sec. 3.3 [S]); the naive mean of the workers' variances [U: `pooled` is the option].
        train=TrainConfig(
            epochs=90,
            global_batch_size=32768,
            max_micro_batch_size=256,
            nproc=8,
            eval_batch_size=256,
            target_top1=74.9,
            bn=BNConfig(batch_size=32, statistics="last_batch", variance_averaging="mean"),
        ),
        # eta_base = 0.1 per 256 scaled linearly (12.8 at 32k); the blend of RMSprop (eta_RMSprop 3e-4,
        # mu2 0.99) into momentum SGD (mu1 0.9) over alpha_SGD(center 10, period 5 epochs) [S].
        # Weight decay 1e-4 and plain (non-Nesterov) momentum are assumptions [U].
        optim=OptimConfig(
            name="rmsprop_warmup",
            base_lr=0.1,
            base_batch_size=256,
            momentum=0.9,
            nesterov=False,
            weight_decay=1e-4,
            rmsprop_warmup=RMSpropWarmupConfig(
                lr=3e-4, alpha=0.99, eps=1e-8, center_epochs=10, period_epochs=5, variant="printed"
            ),
        ),
        # No separate ramp: the RMSprop blend is the warm-up. 0.5/0.075/0.01/0.001 x eta_base at 0/40/70/85 [S].
        schedule=ScheduleConfig(
            name="slow_start",
            warmup_epochs=0,
            slow_start=SlowStartConfig(epochs=[40, 70, 85], factors=[0.5, 0.075, 0.01, 0.001]),
        ),
    )
