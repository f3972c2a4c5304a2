"""Models and normalization layers."""

from largebatch.nn.models import (
    SmallResNet,
    build_model,
    channels_last_unsafe_convs,
    convert_to_ghost_bn,
    count_macs,
    goyal_init,
)
from largebatch.nn.norm import (
    BN_STATISTICS,
    VARIANCE_AVERAGING,
    GhostBatchNorm2d,
    average_bn_statistics,
    configure_bn,
    recompute_bn_statistics,
    set_bn_batch_size,
    start_bn_step,
)

__all__ = [
    "BN_STATISTICS",
    "VARIANCE_AVERAGING",
    "GhostBatchNorm2d",
    "SmallResNet",
    "channels_last_unsafe_convs",
    "average_bn_statistics",
    "build_model",
    "configure_bn",
    "convert_to_ghost_bn",
    "count_macs",
    "goyal_init",
    "recompute_bn_statistics",
    "set_bn_batch_size",
    "start_bn_step",
]
