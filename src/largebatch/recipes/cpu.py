"""Recipes sized for CPUs: the Goyal method on Fashion-MNIST with the small ResNet."""

from __future__ import annotations

from largebatch.config import (Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig)
from largebatch.recipes import register

GOYAL_EPOCHS = 90
GOYAL_WARMUP_EPOCHS = 5


def goyal_scaled_warmup_epochs(epochs: int) -> float:
    """Goyal's warmup share (5 of 90 epochs, sec. 2.2) of a run of ``epochs``."""
    return GOYAL_WARMUP_EPOCHS * epochs / GOYAL_EPOCHS


@register
def goyal2017_fashion_mnist() -> Config:
    """The default recipe and the README's main job: Goyal et al.'s method, unchanged, on
    Fashion-MNIST with a ResNet-8 on 2 CPU workers; global batch 512 = 16 BN groups of 32."""
    epochs = 9
    # Goyal's warmup share (5 of 90 epochs) and per-iteration warmup from base_lr, unchanged. The
    # decays come later than Goyal's 30/60/80 of 90 scaled (3/6/8 of 9 reached 89.4% at epoch 6):
    # a run this short needs half of it at the peak LR. See docs/recipes.md for the measurements.
    warmup_epochs = goyal_scaled_warmup_epochs(epochs)
    decay_epochs = [epochs / 2, epochs * 7 / 9, epochs * 8.5 / 9]  # 4.5, 7, 8.5
    return Config(
        recipe="goyal2017_fashion_mnist",
        description="Goyal's large-minibatch SGD on Fashion-MNIST: ResNet-8, global batch 512 (16 BN groups x 32), 2 CPU workers",
        source="Goyal et al. 2017, sec. 2 and 5.1, 9 epochs, warmup 5/90 of the run, /10 at 4.5, 7 and 8.5",
        # Flips only: the 77k-parameter model underfits in 9 epochs, and random crops slowed it down.
        data=DataConfig(name="fashion_mnist", root="", augment=True, crop_padding_px=0),
        model=ModelConfig(name="resnet_fmnist", width=16, blocks_per_stage=1, zero_init_residual=True,
                          fc_init_std=0.01),
        train=TrainConfig(
            epochs=epochs,
            global_batch_size=512,
            bn_batch_size=32,  # the paper's per-worker n
            nproc=2,
            eval_every_epochs=1,
            log_every_steps=20,
            target_top1=91.0,
        ),
        # 0.4 per 256 (peak 0.8 at 512): the reference LR is tuned per data set and model; with
        # ImageNet's 0.1 per 256 this run was 3.5 points behind after 3 epochs (docs/recipes.md).
        optim=OptimConfig(name="sgd", base_lr=0.4, base_batch_size=256, momentum=0.9, nesterov=True,
                          weight_decay=1e-4),
        schedule=ScheduleConfig(name="step", warmup_epochs=warmup_epochs, warmup_start_lr=None,
                                decay_epochs=decay_epochs, decay_factor=0.1),
    )
