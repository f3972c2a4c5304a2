"""DDP communication hooks built on :mod:`largebatch.dist.collectives`, with fp16/bf16 compression.

A hook follows PyTorch's contract (``hook(state, bucket) -> Future[Tensor]``, registered with
``DistributedDataParallel.register_comm_hook``): it receives a bucket of flattened gradients and
returns a future holding their average over all ranks. Ours divide by the world size first (as
PyTorch's ``allreduce_hook`` does, which keeps fp16 from overflowing), run the three phases of the
chosen algorithm, and return an already completed future: the phases run one after the other in the
autograd thread, so a bucket's communication does not overlap the next bucket's backward the way
the default asynchronous all-reduce does. Compression reuses PyTorch's own ``fp16_compress_wrapper``
and ``bf16_compress_wrapper`` (cast the bucket to half precision for the communication, back after).

``comm.algorithm=allreduce`` with ``comm.compression=none`` registers nothing (DDP's built-in
all-reduce); with compression it registers PyTorch's ``fp16_compress_hook`` / ``bf16_compress_hook``.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from largebatch.choices import COMM_ALGORITHMS, COMM_COMPRESSIONS
from largebatch.dist.collectives import hierarchical_all_reduce, torus2d_all_reduce
from largebatch.dist.topology import TopologyGroups, build_groups, make_topology

log = logging.getLogger(__name__)

ALGORITHMS, COMPRESSIONS = COMM_ALGORITHMS, COMM_COMPRESSIONS


@dataclass
class HookState:
    """What a hook needs: this rank's topology groups and the hierarchical mode. (This module does
    not use postponed annotations: DDP checks a hook's annotations at registration.)"""

    groups: TopologyGroups
    hierarchical_mode: str = "scatter"


def _finished(tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(tensor)
    return fut


def hierarchical_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average a gradient bucket over all ranks with :func:`hierarchical_all_reduce`."""
    buffer = bucket.buffer()
    buffer.div_(state.groups.topology.world_size)
    hierarchical_all_reduce(buffer, state.groups, mode=state.hierarchical_mode)
    return _finished(buffer)


def torus2d_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average a gradient bucket over all ranks with :func:`torus2d_all_reduce`."""
    buffer = bucket.buffer()
    buffer.div_(state.groups.topology.world_size)
    torus2d_all_reduce(buffer, state.groups)
    return _finished(buffer)


def make_comm_hook(algorithm: str, compression: str, state: HookState | None) -> tuple[object, Callable] | None:
    """The (state, hook) pair to register for ``comm.algorithm`` and ``comm.compression``, or None
    for DDP's built-in all-reduce.

    Raises:
        ValueError: for an unknown algorithm or compression, or a missing state.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"comm.algorithm={algorithm!r} is unknown; accepted: {', '.join(ALGORITHMS)}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"comm.compression={compression!r} is unknown; accepted: {', '.join(COMPRESSIONS)}")
    if algorithm == "allreduce":
        if compression == "none":
            return None
        hook = default_hooks.fp16_compress_hook if compression == "fp16" else default_hooks.bf16_compress_hook
        return None, hook  # state None: the default process group
    if state is None:
        raise ValueError(f"comm.algorithm={algorithm} needs the topology groups")
    hook = hierarchical_hook if algorithm == "hierarchical" else torus2d_hook
    if compression == "fp16":
        hook = default_hooks.fp16_compress_wrapper(hook)
    elif compression == "bf16":
        hook = default_hooks.bf16_compress_wrapper(hook)
    return state, hook


def register_comm_hook(
    ddp_model,
    algorithm: str = "hierarchical",
    *,
    workers_per_node: int | None = None,
    torus_x: int = 0,
    compression: str = "none",
    hierarchical_mode: str = "scatter",
) -> HookState | None:
    """Register a topology-aware gradient all-reduce on a ``DistributedDataParallel`` model, in one call.

    ``algorithm``: ``hierarchical`` (reduce within each node, all-reduce across nodes, broadcast
    back; Goyal et al. 2017 sec. 4 and Jia et al. 2018), ``torus2d`` (Mikami et al. 2018 sec. 3.2:
    reduce-scatter along one axis of a ``torus_x`` x (world / torus_x) grid, all-reduce along the
    other, all-gather back) or ``allreduce`` (DDP's own, only worth registering with compression).
    ``workers_per_node`` defaults to ``LOCAL_WORLD_SIZE`` (torchrun sets it). Every rank must call it,
    after ``torch.distributed.init_process_group``: it creates the topology's process groups.

    Returns:
        the hook's state (its process groups), or None when DDP's own all-reduce stays.

    Raises:
        ValueError: an unknown algorithm or compression, or a world that the topology cannot tile.
    """

    state = None
    if algorithm != "allreduce":
        world = dist.get_world_size()
        per_node = workers_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", world))
        topology = make_topology(world, workers_per_node=per_node, torus_x=torus_x)
        state = HookState(groups=build_groups(topology), hierarchical_mode=hierarchical_mode)
    pair = make_comm_hook(algorithm, compression, state)
    if pair is not None:
        ddp_model.register_comm_hook(*pair)
    return state
