"""The distributed boundary: process groups, devices, collectives, comm hooks, launchers."""

from largebatch.dist.env import DistEnv, all_reduce_sum, average_buffers, barrier, cleanup, consecutive_groups, setup
from largebatch.dist.hooks import HookState, register_comm_hook

__all__ = [
    "DistEnv",
    "HookState",
    "all_reduce_sum",
    "average_buffers",
    "barrier",
    "cleanup",
    "consecutive_groups",
    "register_comm_hook",
    "setup",
]
