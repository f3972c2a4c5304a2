"""What a tuned cell's trials draw: a method's search space (:mod:`largebatch.study.methods`) as a
trial sees it, with the ranges ``--search-range`` replaces and, with ``--search-budget``, the warmup
drawn as a fraction of the trial's length; the check that a stored study drew from the same ranges,
and the seed of the cell's sampler.

``spec`` below is a :class:`largebatch.study.tune_spec.TuneSpec`.
"""

from __future__ import annotations

import math
import zlib

from largebatch.study.methods import FIXED_METHODS, space_of
from largebatch.study.storage import load_study_or_none
from largebatch.study.sweep import SweepError


class RangedTrial:
    """An Optuna trial whose ``suggest_float`` draws the parameters named in ``ranges`` from those
    ranges instead of the ones the search space gives (``--search-range``)."""

    def __init__(self, trial, ranges: dict[str, tuple[float, float]]):
        self._trial, self._ranges = trial, ranges

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        low, high = self._ranges.get(name, (low, high))
        return self._trial.suggest_float(name, low, high, log=log)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


class Recorder:
    """Stands in for a trial to read a search space: records each ``suggest_float``'s range."""

    def __init__(self):
        self.space: dict[str, tuple[float, float, bool]] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.space[name] = (low, high, log)
        return math.sqrt(low * high) if log else (low + high) / 2


class BudgetTrial:
    """The trial as a method's search space sees it when the run's length is searched: the warmup is
    drawn as a fraction of the trial's budget (``warmup_fraction`` in [0, 0.25]) so that its range
    stays one distribution for the sampler whatever the budget; everything else is the trial's."""

    def __init__(self, trial, budget_epochs: int):
        self._trial, self._budget = trial, budget_epochs

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        if name == "warmup_epochs":
            return self._budget * self._trial.suggest_float("warmup_fraction", 0.0, 0.25)
        return self._trial.suggest_float(name, low, high, log=log)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


def is_fixed_cell(spec, method: str, batch: int) -> bool:
    """Whether the cell carries a rule instead of searching: Goyal's rule above the base batch and
    its ablations (:data:`largebatch.study.methods.FIXED_METHODS`)."""
    return method in FIXED_METHODS and not (method == "goyal" and batch == spec.base_batch)


def budget_range(spec, batch: int) -> tuple[int, int]:
    """The range of ``budget_epochs`` (``--search-budget``): 1/8 of the cell's epochs to all of them."""
    epochs = spec.epochs_for(batch)
    return max(1, epochs // 8), epochs


def draw(trial, spec, method: str, batch: int, budget: int | None = None) -> list[str]:
    """The ``--set`` items of one trial of ``method`` at ``batch``: its search space drawn from
    ``trial`` with ``spec``'s ranges, at the trial's ``budget`` epochs (None: the cell's epochs)."""
    ranged = RangedTrial(trial, spec.range_overrides)
    return space_of(method)(BudgetTrial(ranged, budget) if budget else ranged, budget or spec.epochs_for(batch), batch)


def search_space(method: str, spec, batch: int) -> dict[str, tuple[float, float, bool]]:
    """What a trial of ``method`` at ``batch`` draws under ``spec``: ``{name: (low, high, log)}``, the
    method's space (``SPACES``) with ``spec.search_ranges`` applied; empty for a cell that carries a
    rule instead of searching (Goyal's rule above the base batch and its ablations)."""
    if is_fixed_cell(spec, method, batch):
        return {}
    recorder = Recorder()
    if spec.search_budget:
        recorder.space["budget_epochs"] = (*budget_range(spec, batch), True)
        draw(recorder, spec, method, batch, spec.epochs_for(batch))
    else:
        draw(recorder, spec, method, batch)
    return recorder.space


def check_search_space(study, method: str, batch: int, spec, *, storage_url: str) -> None:
    """Raises SweepError when ``study`` holds trials that drew a parameter from another range than
    ``spec`` would: two ranges in one study mix two distributions in its sampler and edge checks."""
    space = search_space(method, spec, batch)
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            if name not in space or not hasattr(dist, "low"):
                continue
            low, high, _ = space[name]
            if math.isclose(dist.low, low) and math.isclose(dist.high, high):
                continue
            raise SweepError(
                f"study {study.study_name} in {storage_url} drew {name} from [{dist.low:g}, {dist.high:g}], "
                f"this command from [{low:g}, {high:g}]: give --search-range {name}={dist.low:g},{dist.high:g}, "
                "or a new --storage for the new range (largebatch study-report merges storages)"
            )


def sampler_seed(name: str, storage, search_ranges: dict[str, tuple[float, float]] | None = None) -> int:
    """The TPE sampler's seed for study ``name``: a function of the name, of how many trials the
    storage already holds, so a resumed study does not draw its first trials' parameters again (a
    sampler seeded by the name alone restarts its random stream on every resume), and of the ranges
    that replace the defaults (``TuneSpec.range_overrides``), so the same cell searched again over
    wider ranges in a new storage does not repeat the first draws of the parameters it kept."""
    study = load_study_or_none(name, storage)
    existing = 0 if study is None else len(study.get_trials(deepcopy=False))
    key = name + "".join(f";{k}={lo:g},{hi:g}" for k, (lo, hi) in sorted((search_ranges or {}).items()))
    return zlib.crc32(key.encode() if existing == 0 else f"{key}#{existing}".encode())
