"""Run a function on W spawned CPU processes joined in a gloo process group; collect results."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Ranks are forked from one server process that imported torch, torchvision and the trainer once
# (and never ran an op, so no thread pool is forked): a rank starts in well under a second instead of
# the 4-5 s a fresh interpreter needs to import them on this 2-core machine.
mp.set_forkserver_preload(["torch", "torch.distributed", "torchvision", "largebatch.train.trainer", "gloo"])


def _entry(rank: int, fn, world_size: int, init_file: str, out_dir: str, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world_size: int, *args) -> list:
    """``fn(rank, world_size, *args)`` on each rank; returns the list of per-rank results.
    ``fn`` must be importable (defined at module level)."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        mp.start_processes(
            _entry, args=(fn, world_size, init_file, tmp, args), nprocs=world_size, join=True, start_method="forkserver"
        )
        return [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False) for r in range(world_size)]
