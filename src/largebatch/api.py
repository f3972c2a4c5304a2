"""The Python entry to a training run: ``largebatch.train(...)``, the same run as ``largebatch train``, and
to its evaluation: ``largebatch.evaluate(...)``, the same as ``largebatch eval``.

::

    import largebatch

    summary = largebatch.train("goyal2017_fashion_mnist", overrides=["train.epochs=2"], nproc=2,
                               out="runs/two_epochs")
    print(summary["top1"], summary["run_dir"])

The command line is a thin layer over :func:`load_config`, :func:`prepare_run`, :func:`launch` and
:func:`evaluate`: each error it reports with exit status 2 is a :class:`~largebatch.config.ConfigError`
here (or a ``FileNotFoundError`` for missing data), raised before any worker starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from largebatch.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    merge_overrides,
    to_dict,
    validate,
    with_reference_lr,
)
from largebatch.plan import resolve
from largebatch.registry import refuse_plugins_named_by_file, set_keys

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def read_config_file(path: str | os.PathLike) -> Config:
    """A :class:`Config` from a YAML or JSON file: the output of ``largebatch recipes NAME`` or a run's
    ``config.json``; a run directory stands for its ``config.json``.

    Raises:
        ConfigError: the file is missing, is not YAML/JSON, holds a recursive alias or is nested too
            deeply, or holds an unknown key or a wrong type.
    """
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    from largebatch.config import check_yaml_tree

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(
            f"--config {str(path)!r}: no such file (give the YAML printed by `largebatch recipes NAME` "
            f"or a run's config.json)"
        )
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(
            f"--config {str(p)!r} is not readable {'JSON' if p.suffix == '.json' else 'YAML'}: "
            f"{str(err).splitlines()[0]}"
        ) from None
    except RecursionError:  # thousands of nested [ or {: the parser recursed before any check could run
        raise ConfigError(f"--config {str(p)!r} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {str(p)!r} holds a {type(data).__name__}, not a mapping of config sections")
    check_yaml_tree(data, f"--config {str(p)!r}")  # a recursive alias or deep nesting: refused before omegaconf
    try:
        return config_from_dict(data)
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"--config {str(p)!r}: {str(err).splitlines()[0]}; `largebatch recipes NAME` prints a valid file"
        ) from None


def load_config(config: str | os.PathLike | Config | dict = "", overrides: Iterable[str] = ()) -> Config:
    """The config of a run, with ``KEY=VALUE`` overrides applied on top.

    Args:
        config: a recipe name (``largebatch recipes`` lists them; empty: the default recipe), a YAML or
            JSON file (``*.yaml``, ``*.yml``, ``*.json``) or a run directory, a :class:`Config`, or a
            dict as :func:`largebatch.config.to_dict` writes it.
        overrides: ``KEY=VALUE`` strings, as ``--set`` takes them (values are YAML).

    Raises:
        ConfigError: an unknown recipe, file, key or value (one line, naming it).
    """
    from largebatch.recipes import DEFAULT_RECIPE, get_recipe

    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = config_from_dict(config)
    else:
        text = os.fspath(config) if config else DEFAULT_RECIPE
        if text.endswith(CONFIG_SUFFIXES) or Path(text).is_dir() or os.sep in text:
            cfg = read_config_file(text)
        else:
            try:
                cfg = get_recipe(text)
            except KeyError as err:
                raise ConfigError(err.args[0]) from None
    overrides = list(overrides)
    # Loading a recipe with overrides: merge them, then, where they switched the optimizer without
    # giving an LR, take the new optimizer's reference LR (docs/optimizers.md).
    return with_reference_lr(cfg, merge_overrides(cfg, overrides), overrides)


@dataclass(frozen=True)
class PreparedRun:
    """What :func:`prepare_run` decided, once, before any worker starts."""

    config: Config
    nproc: int
    plan: Any  # largebatch.plan.Plan of the first batch stage
    run_dir: Path
    resume_path: Path | None
    resume: str | None  # what the workers are told: "auto", a checkpoint path, or None

    def worker_args(self) -> tuple:
        return (to_dict(self.config), str(self.run_dir), self.resume)


def check_devices(cfg: Config, nproc: int) -> None:
    """Refuse a device the machine does not have before any worker starts.

    Raises:
        ConfigError: ``train.device=cuda`` without a visible CUDA GPU, or more local workers than
            visible GPUs on CUDA.
    """
    import torch

    device = cfg.train.device
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"train.device=cuda, but no CUDA GPU is visible (torch {torch.__version__}, {build}); "
            f"use train.device=auto or train.device=cpu"
        )
    if nproc > torch.cuda.device_count():
        raise ConfigError(
            f"{nproc} local workers on CUDA, but {torch.cuda.device_count()} GPU(s) are visible; give --nproc "
            f"at most {torch.cuda.device_count()} (one worker per GPU)"
        )


def prepare_run(
    cfg: Config, *, nproc: int | None = None, out: str | os.PathLike | None = None, resume: str | None = None
) -> PreparedRun:
    """Validate ``cfg`` for ``nproc`` workers (default ``train.nproc``), check the data, and choose the
    run directory and the checkpoint to resume from (``resume``: None, ``"auto"`` or a path) by the
    rules of :mod:`largebatch.train.rundir`, which rank 0 of the workers applies again.

    Raises:
        ConfigError: a contradiction, an ``out`` that holds another run's checkpoints without
            ``resume``, an unwritable ``out`` or one another live run holds, ``--resume auto`` over
            checkpoints none of which can be read, or a checkpoint written with another config.
        FileNotFoundError: the data set's files are missing (the message says how to get them).
    """
    from largebatch.data import check_data
    from largebatch.train.rundir import decide_run_dir

    nproc = nproc or cfg.train.nproc
    if nproc < 1:
        raise ConfigError(f"nproc={nproc}: give at least 1 worker process")
    check_devices(cfg, nproc)
    plan = resolve(cfg, nproc)
    check_data(cfg)
    out = os.fspath(out) if out is not None else None
    decision = decide_run_dir(cfg, out, resume, before_launch=True)  # the rules: largebatch.train.rundir
    told = "auto" if resume == "auto" else (str(decision.resume_path) if decision.resume_path else None)
    return PreparedRun(cfg, nproc, plan, decision.run_dir, decision.resume_path, told)


def launch(run: PreparedRun, *, max_restarts: int = 0) -> dict:
    """Train the prepared run on ``run.nproc`` local worker processes (in this process when it is one
    and no restart is asked for) and return rank 0's summary (the run's ``summary.json``), or
    ``{"preempted": True, "step": ..., "run_dir": ...}`` when SIGTERM stopped it after a checkpoint.

    The launching process holds the run directory's lock for the whole run (``.lock``: a second run
    on the same directory is refused); the elastic agent's per-attempt folders go to ``<run
    dir>/elastic`` (removed when they hold no file), not to the system's temporary folder. A worker's
    traceback goes to ``<run dir>/train.log``; the error raised here is one line.

    Raises:
        ConfigError: a contradiction a worker found (e.g. against the devices it sees), or another
            live run holds the run directory.
        largebatch.dist.launch.WorkerFailed: a worker failed (its rank, exit code and message; ``kind``
            says whether it raised, died, was preempted or interrupted). Deaths are restarted up to
            ``max_restarts`` times first.
    """
    from largebatch.dist.launch import WorkerFailed, default_start_method, launch_local
    from largebatch.train.run import run_in_process, run_worker
    from largebatch.train.runlock import run_dir_lock

    cfg, out, resume = run.worker_args()
    with run_dir_lock(run.run_dir):
        try:
            if run.nproc == 1 and not max_restarts:
                return run_in_process(cfg, out, resume)
            results = launch_local(
                run_worker,
                lambda attempt: (cfg, out, "auto" if attempt else resume, attempt),
                nproc=run.nproc,
                max_restarts=max_restarts,
                start_method=default_start_method(run.config.train.device),
                preload=("largebatch.train.trainer",),
                log_dir=run.run_dir / "elastic",
                log_file=run.run_dir / "train.log",
            )
        except WorkerFailed as err:
            if err.error_type == "ConfigError":  # found by a worker (e.g. against what it sees)
                raise ConfigError(str(err).split("ConfigError: ", 1)[-1]) from None
            if err.kind == "error":
                err.args = (f"{err}; traceback in {run.run_dir / 'train.log'}",)
            raise
    preempted = [r for r in results.values() if isinstance(r, dict) and r.get("preempted")]
    return preempted[0] if preempted else results[min(results)]


def train(
    config: str | os.PathLike | Config | dict = "",
    overrides: Iterable[str] = (),
    *,
    nproc: int | None = None,
    out: str | os.PathLike | None = None,
    resume: str | None = None,
    max_restarts: int = 0,
) -> dict:
    """Train a recipe, a config file or a :class:`Config` on local worker processes, like
    ``largebatch train``; returns the run's summary (``top1``, ``val_top1``, ``steps``,
    ``images_per_s``, ``run_dir``, ...; ``{"preempted": True, ...}`` after a SIGTERM).

    Args:
        config: see :func:`load_config`.
        overrides: ``KEY=VALUE`` strings applied on top (``["train.epochs=2"]``).
        nproc: local worker processes (default ``train.nproc``).
        out: the run directory (default ``runs/<recipe>-<timestamp>``).
        resume: None (a new run; refused if ``out`` holds checkpoints), ``"auto"`` (the newest valid
            checkpoint of ``out``) or a checkpoint path.
        max_restarts: restart the worker group up to this many times when a worker dies, each time
            from the newest valid checkpoint (torch.distributed.elastic).

    Raises:
        ConfigError: bad input, found before any worker starts.
        FileNotFoundError: missing data files.
        largebatch.dist.launch.WorkerFailed: a worker failed while training.
    """
    cfg = load_config(config, overrides)
    return launch(prepare_run(cfg, nproc=nproc, out=out, resume=resume), max_restarts=max_restarts)


def _evaluation_source(path_text: str) -> tuple[dict, dict, int | None, str, str]:
    """(config dict, model state_dict, step, weights file, config file) for :func:`evaluate`: a
    checkpoint, a run directory (its ``model_final.pt``, else its newest valid checkpoint) or a
    ``model_final.pt`` (with the ``config.json`` beside it). The step is None for exported weights.

    Raises:
        ConfigError: nothing usable at ``path_text`` (one line, naming it).
    """
    import torch

    from largebatch.train.checkpoint import CheckpointError, latest_valid_checkpoint, load_checkpoint

    path = Path(path_text)
    if path.is_dir():
        if (path / "model_final.pt").is_file():
            path = path / "model_final.pt"
        else:
            found = latest_valid_checkpoint(path)
            if found is None:
                raise ConfigError(
                    f"{path_text!r} holds neither model_final.pt nor a valid checkpoint; give a run "
                    f"directory, a checkpoint or a model_final.pt"
                )
            path = found[0]
    if not path.is_file():
        raise ConfigError(f"{path_text!r}: no such file or run directory")
    if path.name.startswith("ckpt_step") or not (path.parent / "config.json").is_file():
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
        if "config" not in ckpt or "model" not in ckpt:
            raise ConfigError(f"{path} has no config or model state: not a training checkpoint")
        return ckpt["config"], ckpt["model"], ckpt.get("train_state", {}).get("step"), str(path), str(path)
    try:  # exported weights: a plain state_dict, the run's config beside it
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = json.loads((path.parent / "config.json").read_text())
    except Exception as err:  # unreadable weights or config: one line
        raise ConfigError(
            f"cannot read {path} with {path.parent / 'config.json'}: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} is not a state_dict of tensors")
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path.parent / 'config.json'} holds a {type(cfg).__name__}, not a run's config mapping")
    return cfg, state, None, str(path), str(path.parent / "config.json")


def _evaluation_config(cfg_dict: dict, config_source: str, overrides: list[str], trust_plugins: bool) -> Config:
    """The stored config with ``overrides`` on top, validated, its plugins vetted and its data checked.

    Raises:
        ConfigError: not a run's config, an unknown key or value, a plugin named only by the file
            without ``trust_plugins``, damaged data files.
        FileNotFoundError: the data set's files are missing.
    """
    from largebatch.data import check_data

    try:
        stored = config_from_dict(cfg_dict)
    except Exception as err:  # whatever the file holds (a list, unknown keys, wrong types): one line
        raise ConfigError(
            f"{config_source}: not a largebatch run's config ({(str(err).splitlines() or [type(err).__name__])[0]})"
        ) from None
    try:
        cfg = apply_overrides(stored, overrides)
        # The stored config is data: a plugin it alone names is never imported (registry docstring).
        refuse_plugins_named_by_file(
            cfg, config_source, named_on_command_line=set_keys(overrides), trusted=trust_plugins
        )
        validate(cfg)
        check_data(cfg)
    except ConfigError:
        raise
    except ValueError as err:  # a check that raised a plain ValueError: bad input all the same, one line
        raise ConfigError(str(err)) from None
    return cfg


def evaluate(
    checkpoint: str | os.PathLike,
    overrides: Iterable[str] = (),
    *,
    split: str = "test",
    trust_plugins: bool = False,
) -> dict:
    """Evaluate a run's weights on its data set, like ``largebatch eval``: the model is built from the
    config stored with the weights (``overrides`` on top), the weights loaded into it, and the split
    scored in the precision that config resolves to on this machine's device (``train.device``), with
    the run's ``train.eval_batch_size``, channels-last and ``train.eval_flip``.

    Under torchrun every process scores its share of the split and the sums are all-reduced: each
    returns the same result.

    Args:
        checkpoint: a run directory (its ``model_final.pt``, else its newest valid checkpoint), a
            checkpoint file (``RUN/checkpoints/ckpt_step*.pt``) or a ``model_final.pt`` with its run's
            ``config.json`` beside it.
        overrides: ``KEY=VALUE`` strings, as ``--set`` takes them, applied to the stored config. A plugin
            model or data set named here is trusted.
        split: ``"test"`` or ``"val"`` (the ``data.val_size`` images held out of the training set).
        trust_plugins: import a plugin model or data set that only the stored config names (its code
            runs); without it such a file is refused.

    Returns:
        ``{"loss", "count", "top1"[, "top5"], "checkpoint", "step", "recipe", "precision"}``: the mean
        cross-entropy in nats per image, the number of images scored, top-1 (and, above 10 classes,
        top-5) in percent, the weights file read, the training step of a checkpoint (None for a
        ``model_final.pt``), the recipe and the precision evaluated in (``fp32``, ``bf16``, ...).

    Raises:
        ConfigError: bad input, found before the model is built: nothing usable at ``checkpoint``, a
            stored config that is not a run's, an unknown key or value, a plugin named only by the
            stored config without ``trust_plugins``, damaged data files; or weights that do not fit
            the model the config builds.
        FileNotFoundError: the data set's files are missing.
    """
    if split not in ("test", "val"):
        raise ConfigError(f"split={split!r} is unknown; give test or val")
    overrides = list(overrides)
    cfg_dict, state, step, source, config_source = _evaluation_source(os.fspath(checkpoint))
    cfg = _evaluation_config(cfg_dict, config_source, overrides, trust_plugins)
    result, precision = _score(cfg, state, source, split)
    result.update(checkpoint=source, step=step, recipe=cfg.recipe, precision=precision)
    return result


def _score(cfg: Config, state: dict, source: str, split: str) -> tuple[dict, str]:
    """(the metrics of :func:`largebatch.train.evaluation.evaluate`, the precision evaluated in) of the
    model ``cfg`` builds with the weights ``state`` (read from ``source``), on this process's device.

    Raises:
        ConfigError: the weights do not fit the model.
    """
    import torch

    from largebatch.data import build_data
    from largebatch.dist import cleanup, setup
    from largebatch.train.build import model_of
    from largebatch.train.checkpoint import CheckpointError, load_model_state
    from largebatch.train.evaluation import evaluate as evaluate_model
    from largebatch.train.precision import choose_precision

    env = setup(
        cfg.train.device, threads_per_worker=cfg.train.threads_per_worker, malloc_cache_mib=cfg.train.malloc_cache_mib
    )
    try:
        data = build_data(cfg, device=env.device)
        model = model_of(cfg, data).to(env.device)
        try:
            load_model_state(model, state, source)
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        precision = choose_precision(cfg.train.precision, env.device)  # as the training's evaluations
        result = evaluate_model(
            model,
            data,
            env,
            channels_last=cfg.model.channels_last,
            split=split,
            batch_size=cfg.train.eval_batch_size,
            autocast_dtype=precision.autocast_dtype,
            flip=cfg.train.eval_flip,
        )
    finally:
        cleanup()
    return result, precision.precision
