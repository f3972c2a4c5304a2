"""Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (arXiv 1706.02677)."""

from __future__ import annotations

from largebatch.config import (
    BNConfig,
    Config,
    DataConfig,
    ImageFolderConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from largebatch.recipes import register


@register
def goyal2017_resnet50_imagenet_8k() -> Config:
    """The paper's 8k run as published: ResNet-50, 8192 = 256 workers x 32, 90 epochs (Goyal sec. 5, Table 1)."""
    return Config(
        recipe="goyal2017_resnet50_imagenet_8k",
        description="ResNet-50 on ImageNet, global batch 8192 (256 workers x 32), 90 epochs; paper: 76.26% top-1 in ~1 h on 256 P100",
        source="Goyal et al. 2017, sec. 2-5 and Table 1 (arXiv 1706.02677)",
        data=DataConfig(
            name="imagefolder", root="", image_size_px=224, imagefolder=ImageFolderConfig(loader_workers=8)
        ),
        model=ModelConfig(name="resnet50", zero_init_residual=True, fc_init_std=0.01),
        train=TrainConfig(
            epochs=90,
            global_batch_size=8192,  # k = 256 workers x n = 32 (sec. 5.1)
            bn=BNConfig(batch_size=32),  # per-worker BN over n = 32, never synchronized (sec. 2.3)
            max_micro_batch_size=256,  # a V100/A100-sized forward pass; more processes -> fewer accumulation steps
            nproc=8,  # one 8-GPU server per `largebatch train`; use torchrun for several
            eval_every_epochs=1,
            eval_batch_size=256,
            target_top1=76.0,
        ),
        # 0.1 per 256 images, scaled linearly to 3.2 at 8192 (sec. 2.1); Nesterov 0.9, wd 1e-4 (sec. 5.1).
        optim=OptimConfig(name="sgd", base_lr=0.1, base_batch_size=256, momentum=0.9, nesterov=True, weight_decay=1e-4),
        # Gradual warmup from 0.1 over 5 epochs, then /10 at epochs 30, 60, 80 (sec. 2.2, 5.1).
        schedule=ScheduleConfig(
            name="step", warmup_epochs=5, warmup_start_lr=None, decay_epochs=[30, 60, 80], decay_factor=0.1
        ),
    )
