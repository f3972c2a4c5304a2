"""What a run leaves in its directory besides checkpoints and metrics: ``config.json`` and
``env.json`` (written as it starts), and, when it ends, the final weights with their model card
(``model_final.pt``, ``model_final.json``), ``bad_files.txt`` and ``summary.json``
(:class:`~largebatch.summary.RunSummary`). Rank 0 writes them."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import sys
from pathlib import Path

import torch

from largebatch._version import __version__
from largebatch.config import Config, to_dict
from largebatch.summary import RunSummary
from largebatch.train import checkpoint as ckpt_io


def model_card(cfg: Config, data) -> dict:
    """What ``model_final.pt`` needs to be used outside largebatch (written as ``model_final.json``):
    the architecture and how to build it, the input (channels, size in pixels, the evaluation
    transform, whether the reported top-1 used test-time flips, and the normalization
    ``x = (pixels / 255 - mean) / std`` per channel) and the classes."""
    spec = data.input_spec()
    m = cfg.model
    if m.name == "resnet_fmnist":
        build = (
            f"largebatch.nn.build_model('resnet_fmnist', num_classes={spec['num_classes']}, "
            f"in_channels={spec['in_channels']}, width={m.width}, blocks_per_stage={m.blocks_per_stage}, "
            f"stem_stride={m.stem_stride})"
        )
    elif ":" in m.name:
        build = f"{m.name}(num_classes={spec['num_classes']}, in_channels={spec['in_channels']})"
    else:
        build = f"torchvision.models.get_model({m.name!r}, num_classes={spec['num_classes']})"
    return {
        "format": "largebatch model card 1",
        "weights": "model_final.pt (a state_dict: torch.load(path, weights_only=True))",
        "architecture": {
            "name": m.name,
            "width": m.width,
            "blocks_per_stage": m.blocks_per_stage,
            "stem_stride": m.stem_stride,
            "build": build,
        },
        "input": {
            "channels": spec["in_channels"],
            "size_px": spec["image_size_px"],
            "memory_format": "channels_last" if m.channels_last else "contiguous",
            "eval_transform": spec["eval_transform"],
            "test_time_flip": cfg.train.eval_flip,
            "test_time_flip_means": "the run's top-1 averages the logits of each image and of its left-right "
            "mirror (train.eval_flip)"
            if cfg.train.eval_flip
            else "the run's top-1 is of the image alone",
            "normalization": {
                "mean": spec["mean"],
                "std": spec["std"],
                "formula": "x = (pixels / 255 - mean) / std, per channel",
            },
        },
        "num_classes": spec["num_classes"],
        "classes": spec["classes"],
        "recipe": cfg.recipe,
        "data": cfg.data.name,
    }


def environment_info(env) -> dict:
    """Versions, world size and hardware, for env.json."""
    import torchvision

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "largebatch": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads_per_worker": torch.get_num_threads(),
        "world_size": env.world_size,
        "local_world_size": env.local_world_size,
        "backend": env.backend,
        "device": str(env.device),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "argv": sys.argv,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return info


def write_run_record(run_dir: Path, cfg: Config, info: dict, *, resumed: bool) -> None:
    """``config.json`` (the run's config) and ``env.json`` (``info``: :func:`environment_info` and the
    precision). A resumed run keeps the first segment's ``env.json`` and adds its own environment
    under ``resumes``.

    Raises:
        OSError: a file cannot be written.
        json.JSONDecodeError: an existing ``env.json`` is not JSON.
    """
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    env_path = run_dir / "env.json"
    if resumed and env_path.is_file():
        # Keep the first segment's record; each resume adds its own environment.
        first = json.loads(env_path.read_text())
        first.setdefault("resumes", []).append(info)
        info = first
    env_path.write_text(json.dumps(info, indent=2) + "\n")


def gather_bad_files(mine: list[str], env) -> list[str]:
    """Every rank's skipped files, merged and sorted (on every rank). Collective on several processes."""
    if not env.distributed:
        return sorted(set(mine))
    lists: list = [None] * env.world_size
    torch.distributed.all_gather_object(lists, list(mine))
    return sorted({b for lst in lists for b in lst})


def write_final_weights(run_dir: Path, cfg: Config, trainer) -> None:
    """``model_final.pt`` (a plain state_dict) and its model card ``model_final.json``.

    Raises:
        OSError: a file cannot be written.
    """
    ckpt_io.export_weights(run_dir / "model_final.pt", trainer.model.state_dict(), model_card(cfg, trainer.data))


def run_summary(cfg: Config, trainer, env, precision, startup: dict, bad_files: int, run_dir: Path) -> RunSummary:
    """The summary of a finished run from the trainer's counters (units: :class:`RunSummary`).
    ``startup``: seconds of rank 0 before its first training step (this segment of the run), by phase.
    A batch-size schedule (Mikami et al. 2018) is named by its final, largest stage, as the paper does."""
    state, last = trainer.state, trainer.stages[-1].plan
    t = cfg.train
    return RunSummary(
        recipe=cfg.recipe,
        top1=state.top1,
        best_top1=state.best_top1,
        epochs=t.epochs,
        steps=state.step,
        global_batch_size=last.global_batch_size,
        bn_batch_size=last.bn_batch_size,
        simulated_workers=last.simulated_workers,
        world_size=env.world_size,
        peak_lr=last.peak_lr,
        bn_statistics=t.bn.statistics,
        batch_stages=[
            {
                "start_epoch": st.start_epoch,
                "global_batch_size": st.plan.global_batch_size,
                "bn_batch_size": st.plan.bn_batch_size,
                "accumulation_steps": st.plan.accumulation_steps,
                "peak_lr": st.plan.peak_lr,
            }
            for st in trainer.stages
        ],
        images_per_s=state.images_seen / state.step_time_s if state.step_time_s else None,
        wall_s=state.train_wall_s,
        eval_s=state.eval_s,
        checkpoint_s=state.checkpoint_s,
        target_top1=t.target_top1 or None,
        time_to_target_s=state.time_to_target_s,
        val_top1=state.val_top1,
        best_val_top1=state.best_val_top1,
        val_size=cfg.data.val_size,
        val_target_top1=(t.stop_at_val_top1 or t.val_target_top1) or None,
        steps_to_val_target=state.steps_to_val_target,
        images_to_val_target=state.images_to_val_target,
        stopped_at_target=state.stopped_at_target,
        stopped_at_budget=state.stopped_at_budget,
        init_from=t.init_from or None,
        precision_requested=precision.requested,
        precision=precision.precision,
        precision_reason=precision.reason,
        startup_s=startup,
        # when this segment's training loop started (Unix time): with the command's own start it
        # gives the time to target from the start of the command, the MLPerf way
        train_started_unix_s=trainer.fit_started_unix_s,
        skipped_steps=state.skipped_steps,
        bad_files=bad_files,
        run_dir=str(run_dir),
    )
