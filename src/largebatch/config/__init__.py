"""The config tree: typed, keyword-only dataclasses, overrides, validation and hashing.

A recipe (``largebatch.recipes``) returns a complete :class:`Config`. Users edit it with
``--set KEY=VALUE`` overrides, which OmegaConf merges into the typed tree, so an unknown key or a
value of the wrong type is rejected by the library rather than by hand-written parsing.
:func:`validate` checks every key that does not depend on the number of workers; the batch planner
(:mod:`largebatch.plan`) checks the rest and computes the derived values (per-worker batch, BN
groups, accumulation, peak LR) once, into a ``Plan``. Derived values are never written back into
the config.

Every error is a :class:`ConfigError` (a ``ValueError``) whose message names the key, the value and
what is accepted; the CLI turns it into exit status 2 before any worker starts.

The modules, each owning one thing (imports go down this list, never up):

``fields``
    :func:`setting`, the field helper whose metadata carries a field's choices, range, unit and
    message text, and the walk over a tree's settings;
``schema``
    the dataclasses, every field documented, with what it accepts;
``keys``
    dotted keys: every key, the value of one, its declared type;
``reference_lr``
    each optimizer's reference LR and :func:`with_reference_lr`, the step of loading a recipe that
    applies it when ``--set optim.name`` switches the optimizer;
``overrides``
    ``--set`` parsing and merging (:func:`merge_overrides`, :func:`apply_overrides`) and the legacy
    flat keys (:data:`LEGACY_KEYS`, :func:`migrate`);
``convert``
    dict forms: :func:`to_dict`, :func:`config_from_dict`, :func:`typed_dict`, :func:`active_dict`;
``identity``
    the hash and the resume comparison, and the keys they leave out;
``validation``
    :func:`validate`: the generic check of every field's metadata and the rules between keys;
``scaling``
    :func:`scale_epochs`, driven by the fields marked epoch-valued.

Everything other modules import is re-exported here: import from ``largebatch.config``.
"""

from largebatch.choices import BN_STATISTICS, COMM_ALGORITHMS, COMM_COMPRESSIONS, VARIANCE_AVERAGINGS
from largebatch.config.convert import CHOICE_KEYS, active_dict, config_from_dict, to_dict, typed_dict
from largebatch.config.fields import EPOCHS, choices_of, setting
from largebatch.config.identity import (
    DOCUMENTARY_KEYS,
    OPERATIONAL_KEYS,
    config_hash,
    config_mismatch,
    hashed_config,
)
from largebatch.config.keys import _field_type_name as _field_type_name
from largebatch.config.keys import all_keys, get_key
from largebatch.config.overrides import (
    LEGACY_KEYS,
    MAX_NESTING,
    MAX_NODES,
    apply_overrides,
    check_yaml_tree,
    merge_overrides,
    migrate,
    migrate_key,
)
from largebatch.config.reference_lr import LR_KEYS, REFERENCE_LRS, ReferenceLR, with_reference_lr
from largebatch.config.scaling import epoch_keys, scale_epochs
from largebatch.config.schema import (
    ALPHA_VARIANTS,
    BAD_FILE_POLICIES,
    DATA_NAMES,
    DECODE_ON,
    DECODERS,
    DEVICES,
    HIERARCHICAL_MODES,
    LR_SCALINGS,
    MAX_SEED,
    MODEL_NAMES,
    NOISE_SCALE_SMALL_BATCHES,
    NONFINITE_CHECKS,
    NONFINITE_POLICIES,
    OPTIM_NAMES,
    PRECISIONS,
    SCHEDULE_NAMES,
    BatchStage,
    BNConfig,
    CommConfig,
    Config,
    DataConfig,
    ImageFolderConfig,
    LambConfig,
    LarsConfig,
    ModelConfig,
    OptimConfig,
    PolyConfig,
    ResizeStage,
    RMSpropWarmupConfig,
    ScheduleConfig,
    SlowStartConfig,
    SyntheticConfig,
    TrainConfig,
)
from largebatch.config.validation import (
    MAX_EPOCHS,
    THREADS_PER_CORE,
    check_batch_schedule,
    check_fields,
    require,
    schedule_warnings,
    validate,
)
from largebatch.errors import ConfigError

__all__ = [
    "ALPHA_VARIANTS",
    "BAD_FILE_POLICIES",
    "BN_STATISTICS",
    "CHOICE_KEYS",
    "COMM_ALGORITHMS",
    "COMM_COMPRESSIONS",
    "DATA_NAMES",
    "DECODERS",
    "DECODE_ON",
    "DEVICES",
    "DOCUMENTARY_KEYS",
    "EPOCHS",
    "HIERARCHICAL_MODES",
    "LEGACY_KEYS",
    "LR_KEYS",
    "LR_SCALINGS",
    "MAX_EPOCHS",
    "MAX_NESTING",
    "MAX_NODES",
    "MAX_SEED",
    "MODEL_NAMES",
    "NOISE_SCALE_SMALL_BATCHES",
    "NONFINITE_CHECKS",
    "NONFINITE_POLICIES",
    "OPERATIONAL_KEYS",
    "OPTIM_NAMES",
    "PRECISIONS",
    "REFERENCE_LRS",
    "SCHEDULE_NAMES",
    "THREADS_PER_CORE",
    "VARIANCE_AVERAGINGS",
    "BNConfig",
    "BatchStage",
    "CommConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ImageFolderConfig",
    "LambConfig",
    "LarsConfig",
    "ModelConfig",
    "OptimConfig",
    "PolyConfig",
    "RMSpropWarmupConfig",
    "ReferenceLR",
    "ResizeStage",
    "ScheduleConfig",
    "SlowStartConfig",
    "SyntheticConfig",
    "TrainConfig",
    "active_dict",
    "all_keys",
    "apply_overrides",
    "check_batch_schedule",
    "check_fields",
    "check_yaml_tree",
    "choices_of",
    "config_from_dict",
    "config_hash",
    "config_mismatch",
    "epoch_keys",
    "get_key",
    "hashed_config",
    "merge_overrides",
    "migrate",
    "migrate_key",
    "require",
    "scale_epochs",
    "schedule_warnings",
    "setting",
    "to_dict",
    "typed_dict",
    "validate",
    "with_reference_lr",
]
