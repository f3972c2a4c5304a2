"""Topology-aware all-reduce as plain functions of a flat tensor (testable without DDP).

* :func:`hierarchical_all_reduce` (Goyal et al. 2017 sec. 4; Jia et al. 2018): reduce inside each
  node, all-reduce across nodes, spread the result inside each node. ``mode="scatter"``: intra-node
  reduce-scatter, inter-node all-reduce of each rank's shard (one ring per local rank, all in
  parallel), intra-node all-gather. ``mode="reduce"``: intra-node reduce to local rank 0, all-reduce
  among the nodes' rank 0, intra-node broadcast (Goyal's three phases).
* :func:`torus2d_all_reduce` (Mikami et al. 2018): reduce-scatter along the torus
  row (X ranks), all-reduce along the column (Y ranks) of the D/X shard, all-gather along the row.

Both sum in place over all ranks (the result equals ``dist.all_reduce``'s, to floating-point
reordering) and handle lengths that do not divide evenly by zero-padding to a multiple of the
group size. Reduce-scatter and all-gather are the backend's own single-tensor collectives (gloo
and NCCL both have them); on gloo the log says once that gloo emulates reduce-scatter with an
all-reduce (correct, twice the traffic; pytorch#118911).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from largebatch.dist.topology import TopologyGroups

log = logging.getLogger(__name__)

_NOTED: set[str] = set()


def _note_once(key: str, message: str) -> None:
    if key not in _NOTED:
        _NOTED.add(key)
        log.info(message)


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, group) -> torch.Tensor:
    """Sum ``input`` (length k * len(output), k the group size) over ``group`` and keep this rank's
    k-th part in ``output``. On NCCL a real reduce-scatter; on gloo torch's emulation (an all-reduce
    of the whole input, then the chunk), which is logged once. A communication error propagates."""
    if dist.get_backend(group) == "gloo":
        _note_once(
            "gloo-rs",
            "gloo: reduce-scatter is emulated as all-reduce + chunk (correct, 2x the bytes of a "
            "real reduce-scatter); hierarchical and torus phases are exact but not bandwidth-optimal "
            "on gloo; NCCL runs them natively",
        )
    dist.reduce_scatter_single(output, input, group=group)
    return output


def all_gather(output: torch.Tensor, input: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's ``input`` of ``group`` into ``output`` (group-rank order)."""
    dist.all_gather_single(output, input, group=group)
    return output


def _padded(flat: torch.Tensor, parts: int) -> torch.Tensor:
    """``flat`` zero-padded to a multiple of ``parts`` (a copy only when padding is needed)."""
    extra = (-flat.numel()) % parts
    if extra == 0:
        return flat
    return torch.cat([flat, flat.new_zeros(extra)])


def _scatter_reduce_gather(tensor: torch.Tensor, *, row_group, row_size: int, column_group) -> torch.Tensor:
    """Reduce-scatter over ``row_group``, all-reduce the shard over ``column_group``, all-gather."""
    flat = tensor.view(-1)
    if row_size == 1:
        dist.all_reduce(flat, group=column_group)
        return tensor
    padded = _padded(flat, row_size)
    shard = padded.new_empty(padded.numel() // row_size)
    reduce_scatter(shard, padded, row_group)
    dist.all_reduce(shard, group=column_group)
    all_gather(padded, shard, row_group)
    if padded.data_ptr() != flat.data_ptr():
        flat.copy_(padded[: flat.numel()])
    return tensor


def hierarchical_all_reduce(tensor: torch.Tensor, groups: TopologyGroups, *, mode: str = "scatter") -> torch.Tensor:
    """Sum ``tensor`` (contiguous, any shape) in place over all ranks in three phases: intra-node,
    inter-node, intra-node. Returns ``tensor``.

    Args:
        mode: ``scatter`` (reduce-scatter / all-reduce of shards / all-gather) or ``reduce`` (reduce
            to local rank 0 / all-reduce among node leaders / broadcast).

    Raises:
        ValueError: for an unknown mode or a non-contiguous tensor.
    """
    if not tensor.is_contiguous():
        raise ValueError("hierarchical_all_reduce needs a contiguous tensor")
    t = groups.topology
    if mode == "scatter":
        return _scatter_reduce_gather(
            tensor, row_group=groups.intra, row_size=t.workers_per_node, column_group=groups.inter
        )
    if mode != "reduce":
        raise ValueError(f"comm.hierarchical_mode={mode!r} is unknown; accepted: scatter, reduce")
    leader = groups.node_leader
    if t.workers_per_node > 1:
        dist.reduce(tensor, dst=leader, group=groups.intra)
    if groups.local_rank == 0 and t.nodes > 1:
        dist.all_reduce(tensor, group=groups.inter)  # the inter-node group of local rank 0: the leaders
    if t.workers_per_node > 1:
        dist.broadcast(tensor, src=leader, group=groups.intra)
    return tensor


def torus2d_all_reduce(tensor: torch.Tensor, groups: TopologyGroups) -> torch.Tensor:
    """Sum ``tensor`` (contiguous) in place over all ranks with Mikami's 2D-torus all-reduce: row
    reduce-scatter (X ranks), column all-reduce on the D/X shard (Y ranks; the X columns run in
    parallel), row all-gather. Returns ``tensor``.

    Raises:
        ValueError: for a non-contiguous tensor.
    """
    if not tensor.is_contiguous():
        raise ValueError("torus2d_all_reduce needs a contiguous tensor")
    return _scatter_reduce_gather(
        tensor, row_group=groups.row, row_size=groups.topology.torus_x, column_group=groups.column
    )
