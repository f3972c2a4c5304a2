"""You, Gitman, Ginsburg 2017 "Large Batch Training of Convolutional Networks" (LARS, arXiv 1708.03888)
and You et al. 2018 "ImageNet Training in Minutes" (ICPP'18, arXiv 1709.05011)."""

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
def you2018_lars_resnet50_imagenet_32k() -> Config:
    """ResNet-50, 32K, 90 epochs, LARS (eta 0.001) with poly-2 decay after a linear warmup."""
    return Config(
        recipe="you2018_lars_resnet50_imagenet_32k",
        description="ResNet-50 on ImageNet, global batch 32768, LARS (trust coefficient 0.001), warmup + poly 2, 90 epochs; paper: 74.9-75.4% in 20 min on 2048 KNL",
        source="You et al. 2017 Algorithm 1; You et al. 2018 (ICPP) sec. 4; values marked [U] are options",
        data=DataConfig(
            name="imagefolder", root="", image_size_px=224, imagefolder=ImageFolderConfig(loader_workers=8)
        ),
        model=ModelConfig(name="resnet50"),
        train=TrainConfig(
            epochs=90,
            global_batch_size=32768,
            bn=BNConfig(batch_size=32),
            max_micro_batch_size=256,
            nproc=8,
            eval_batch_size=256,
            target_top1=74.9,
        ),
        # You et al.'s Intel Caffe applies LARS and weight decay to every tensor (no exclusion list) [V code].
        # Peak LR: 0.2 per 256 scaled linearly (their Goyal reproduction used 0.2 per 256 with poly) [U];
        # momentum 0.9 and weight decay 1e-4 [U].
        optim=OptimConfig(
            name="lars",
            base_lr=0.2,
            base_batch_size=256,
            momentum=0.9,
            nesterov=False,
            weight_decay=1e-4,
            lars=LarsConfig(trust_coefficient=0.001, eps=0.0),
            norm_weight_decay=True,
            bias_weight_decay=True,
            norm_adaptation=True,
            bias_adaptation=True,
        ),
        # Warmup 5 epochs from 0 and poly power 2 to 0 [U].
        schedule=ScheduleConfig(
            name="poly", warmup_epochs=5, warmup_start_lr=0.0, poly=PolyConfig(power=2.0), end_lr=0.0
        ),
    )
