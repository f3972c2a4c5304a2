"""Models and normalization layers."""

from largebatch.nn.models import SmallResNet, build_model, count_macs, goyal_init
from largebatch.nn.norm import GhostBatchNorm2d, set_bn_batch_size

__all__ = ["GhostBatchNorm2d", "SmallResNet", "build_model", "count_macs", "goyal_init", "set_bn_batch_size"]
