"""The distributed boundary: process groups, devices, collectives, launchers."""

from largebatch.dist.env import (DistEnv, all_reduce_sum, average_buffers, barrier, cleanup, consecutive_groups,
                                 setup)

__all__ = ["DistEnv", "all_reduce_sum", "average_buffers", "barrier", "cleanup", "consecutive_groups", "setup"]
