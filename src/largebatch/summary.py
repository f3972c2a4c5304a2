"""The schema of a run's ``summary.json``: :class:`RunSummary`, written by rank 0 when a
``largebatch train`` run ends and read by everything that looks at a finished run (the study's
launcher, ``critical-batch``, ``simulate --measured``, ``advise --measured-throughput``).

The file is plain JSON so that other tools can read it. Reading tolerates files written by earlier
versions (a field they lack reads as its default) and by later ones (unknown keys are kept in
``extra`` and written back unchanged). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

FILE_NAME = "summary.json"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped-at-a-target) training run reports, one object per run directory.

    Units: accuracies in percent (0-100), times in seconds (``startup_s``: seconds by start-up phase), rates in images per second over the
    training steps of all workers, batch sizes in images, learning rates as the optimizer's value.
    ``diverged`` is set (with ``log``) by the study's launcher for a run whose loss became non-finite;
    such a summary carries no metrics.
    """

    recipe: str = ""
    top1: float | None = None
    best_top1: float | None = None
    epochs: float | None = None
    steps: int | None = None
    global_batch_size: int | None = None
    bn_batch_size: int | None = None
    simulated_workers: int | None = None
    world_size: int | None = None
    peak_lr: float | None = None
    bn_statistics: str | None = None
    batch_stages: list[dict] = dataclasses.field(default_factory=list)
    images_per_s: float | None = None
    wall_s: float | None = None
    eval_s: float | None = None
    checkpoint_s: float | None = None
    target_top1: float | None = None
    time_to_target_s: float | None = None
    val_top1: float | None = None
    best_val_top1: float | None = None
    val_size: int | None = None
    val_target_top1: float | None = None
    steps_to_val_target: int | None = None
    images_to_val_target: int | None = None
    stopped_at_target: bool | None = None
    stopped_at_budget: bool | None = None
    init_from: str | None = None
    precision_requested: str | None = None
    precision: str | None = None
    precision_reason: str | None = None
    startup_s: dict[str, float] | None = None
    train_started_unix_s: float | None = None
    skipped_steps: int | None = None
    bad_files: int | None = None
    run_dir: str | None = None
    diverged: bool = False
    log: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON object, in field order; ``diverged``/``log`` only when set, ``extra`` merged in."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("diverged", "log", "extra")
        }
        if self.diverged:
            out = {"diverged": True, "log": self.log}
        return {**out, **self.extra}

    def write(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/summary.json`` and return its path. Raises OSError if it cannot be written."""
        path = Path(run_dir) / FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> RunSummary:
        """A summary from its JSON object; unknown keys go to ``extra``.

        Raises:
            TypeError: ``data`` is not a JSON object (dict).
        """
        if not isinstance(data, dict):
            raise TypeError(f"a run summary is a JSON object, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def read(cls, run_dir: str | Path) -> RunSummary:
        """``run_dir/summary.json`` as a summary.

        Raises:
            FileNotFoundError: the run has no summary (it has not finished).
            ValueError: the file is not valid JSON (json.JSONDecodeError) or not an object.
        """
        path = Path(run_dir) / FILE_NAME
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a JSON object")
        return cls.from_dict(data)


def read_summary(run_dir: str | Path) -> RunSummary | None:
    """The run's summary, or None where ``run_dir`` has none yet (unfinished or never started)."""
    try:
        return RunSummary.read(run_dir)
    except FileNotFoundError:
        return None
