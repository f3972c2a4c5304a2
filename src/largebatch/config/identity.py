"""The identity of a config: what a checkpoint records and compares on resume.

The hash and the comparison leave out the keys that do not change what is computed
(:data:`OPERATIONAL_KEYS`) and the recipe's prose (:data:`DOCUMENTARY_KEYS`), and see every value
typed as its field declares, so ``30`` and ``30.0`` in a float field are the same config. The hash
of a config must never change between versions: checkpoints and Optuna storages store it.
"""

from __future__ import annotations

import hashlib
import json

from largebatch.config.convert import config_from_dict, typed_dict
from largebatch.config.schema import Config

OPERATIONAL_KEYS = (
    "train.nproc",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.nonfinite_check",
    "train.checkpoint_every_minutes",
    "train.keep_checkpoints",
    "train.max_nonfinite_steps",
    "train.threads_per_worker",
    "train.malloc_cache_mib",
    "train.noise_scale",
    "train.noise_scale_decay",
    "train.noise_scale_small_batch",
)
"""Keys that do not change what is computed: a run may resume with other values (e.g. on another
number of workers, or with another checkpoint interval), so they are left out of the config hash."""

DOCUMENTARY_KEYS = ("description", "source")
"""Top-level keys that only describe a recipe: a checkpoint resumes after a recipe's description or
source line was reworded, so they are left out of the config hash too."""


def hashed_config(cfg: Config) -> dict:
    """The config as a dict without :data:`OPERATIONAL_KEYS` and :data:`DOCUMENTARY_KEYS`, normalized
    through the typed tree (:func:`~largebatch.config.convert.typed_dict`).

    Raises:
        omegaconf.errors.OmegaConfBaseException: a value that cannot be typed as its field declares.
    """
    data = typed_dict(cfg)
    for key in DOCUMENTARY_KEYS:
        data.pop(key, None)
    for key in OPERATIONAL_KEYS:
        section, name = key.split(".")
        data[section].pop(name, None)
    return data


def config_mismatch(cfg: Config, checkpoint_config: dict, path) -> str | None:
    """None if a checkpoint written with ``checkpoint_config`` may be resumed under ``cfg``, else a
    message naming every key that differs (operational keys may differ).

    Raises:
        omegaconf.errors.OmegaConfBaseException: ``checkpoint_config`` is not a config dict.
    """
    theirs, ours = hashed_config(config_from_dict(checkpoint_config)), hashed_config(cfg)
    if theirs == ours:
        return None
    diffs = [
        f"{sec}.{k}: checkpoint {theirs[sec].get(k)!r}, now {ours[sec][k]!r}"
        for sec in ours
        if isinstance(ours[sec], dict)
        for k in ours[sec]
        if theirs[sec].get(k) != ours[sec][k]
    ]
    diffs += [
        f"{sec}: checkpoint {theirs.get(sec)!r}, now {ours[sec]!r}"
        for sec in ours
        if not isinstance(ours[sec], dict) and theirs.get(sec) != ours[sec]
    ]
    return (
        f"checkpoint {path} was written with another config ({'; '.join(diffs)}); resume with the same "
        f"recipe and --set values, or start a new run directory"
    )


def config_hash(cfg: Config) -> str:
    """SHA-256 (hex, first 16 digits) of :func:`hashed_config`, stored in checkpoints. The config is
    first passed through the typed tree, so ``30`` and ``30.0`` in a float field hash alike.

    Raises:
        omegaconf.errors.OmegaConfBaseException: as :func:`hashed_config`.
    """
    blob = json.dumps(hashed_config(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
