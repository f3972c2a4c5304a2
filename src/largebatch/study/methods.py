"""The large-batch methods the study compares, one record each: the recipe and overrides that make
the method (``largebatch sweep``), what its trials search (``largebatch sweep --tune``), whether it is
tuned at every batch or carries Goyal's tuned LR by a rule, and the paper and section it follows.

``METHODS`` is the one table; ``SPACES`` (the search spaces, by method) and ``FIXED_METHODS`` (the
methods tuned only at the base batch) are read from it. **A new method** is one :class:`Method` in
``METHODS``: a recipe (``largebatch.recipes``) and the overrides that make it that method, a label
for the tables and figures, its source, and either a :class:`SearchSpace` (tuned at every batch) or
``rule=True`` (it takes the base batch's tuned reference LR, :func:`largebatch.study.tune.fixed_params`).
Existing study names and trial parameters are read back from storages, so a space's parameter names,
ranges and the order it draws them in never change for a method that has been tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from largebatch.config import REFERENCE_LRS


@dataclass(frozen=True)
class LogUniform:
    """A parameter drawn on a log scale in [low, high], setting ``key`` to the value drawn."""

    name: str
    key: str
    low: float
    high: float

    def setting(self, trial, epochs: int, batch: int) -> str:
        return f"{self.key}={trial.suggest_float(self.name, self.low, self.high, log=True)}"


@dataclass(frozen=True)
class Warmup:
    """The warmup in epochs, drawn uniformly in [0, max(0.5, epochs / 4)]."""

    def setting(self, trial, epochs: int, batch: int) -> str:
        return f"schedule.warmup_epochs={trial.suggest_float('warmup_epochs', 0.0, max(0.5, 0.25 * epochs))}"


@dataclass(frozen=True)
class Momentum:
    """Momentum searched as 1 - momentum on a log scale in [0.01, 0.2] (Shallue et al. sec. 3.3)."""

    def setting(self, trial, epochs: int, batch: int) -> str:
        return f"optim.momentum={1.0 - trial.suggest_float('one_minus_momentum', 0.01, 0.2, log=True)}"


@dataclass(frozen=True)
class Fixed:
    """A setting every trial of the space takes; ``{batch}`` in it is the cell's global batch."""

    text: str

    def setting(self, trial, epochs: int, batch: int) -> str:
        return self.text.format(batch=batch)


PER_256 = (Fixed("optim.base_batch_size=256"), Fixed("optim.lr_scaling=linear"))
"""The LR searched per 256 images and carried to the cell's batch by the linear rule (Goyal et al.)."""


@dataclass(frozen=True)
class SearchSpace:
    """What a method's trials draw, in order: called as ``space(trial, epochs, batch)`` it draws each
    parameter from ``trial`` (Optuna's ``suggest_float``) and returns the trial's ``--set`` items."""

    items: tuple

    def __call__(self, trial, epochs: int, batch: int) -> list[str]:
        return [item.setting(trial, epochs, batch) for item in self.items]


SGD_SPACE = SearchSpace((LogUniform("base_lr", "optim.base_lr", 0.01, 3.0), *PER_256, Warmup(), Momentum()))
LARS_SPACE = SearchSpace((LogUniform("base_lr", "optim.base_lr", 0.1, 30.0), *PER_256, Warmup(), Momentum()))
LAMB_SPACE = SearchSpace(
    (  # the LR at this batch itself (no rule: it is retuned at every batch)
        LogUniform("lr", "optim.base_lr", 1e-3, 0.2),
        Fixed("optim.base_batch_size={batch}"),
        Fixed("optim.lr_scaling=linear"),
        Warmup(),
    )
)
AKIBA_SPACE = SearchSpace(  # eta_base of the SGD phase and momentum; the transition and slow start as the recipe
    (LogUniform("base_lr", "optim.base_lr", 0.02, 3.0), *PER_256, Momentum())
)
GOYAL_BASE_SPACE = SearchSpace(  # Goyal et al. sec. 2.1: the reference LR is the one hyperparameter tuned
    (LogUniform("base_lr", "optim.base_lr", 0.01, 3.0), *PER_256)
)


@dataclass(frozen=True)
class Method:
    """One large-batch method: ``recipe`` with ``overrides`` (the sweep's runs), its ``label`` in
    tables and figures, its ``source``; ``space``, what ``sweep --tune`` searches at every batch
    (None: Goyal's reference LR, tuned at the base batch); ``rule``, tuned only at the base batch and
    carried to every other batch by its rule (:data:`FIXED_METHODS`)."""

    recipe: str
    label: str
    overrides: tuple[str, ...] = ()
    source: str = ""
    space: SearchSpace | None = field(default=None, compare=False, repr=False)
    rule: bool = field(default=False, compare=False, repr=False)


GOYAL_RECIPE = "goyal2017_fashion_mnist_28px"

METHODS: dict[str, Method] = {
    "no_scaling": Method(
        GOYAL_RECIPE,
        "SGD, no LR scaling",
        ("optim.lr_scaling=none",),
        f"base LR {REFERENCE_LRS['sgd'].base_lr:g} at every batch (Goyal et al. 2017 sec. 2.1 without the rule)",
        rule=True,
    ),
    "linear_no_warmup": Method(
        GOYAL_RECIPE,
        "SGD, linear scaling, no warmup",
        ("schedule.warmup_epochs=0",),
        "Goyal et al. 2017 Table 1 'no warmup'",
        rule=True,
    ),
    "goyal": Method(
        GOYAL_RECIPE,
        "SGD, linear scaling + gradual warmup (Goyal)",
        (),
        "Goyal et al. 2017 sec. 2.1-2.2",
        space=GOYAL_BASE_SPACE,
        rule=True,
    ),
    "nesterov": Method(
        GOYAL_RECIPE,
        "Nesterov momentum, retuned per batch (Nado)",
        (),
        "Nado et al. 2021 sec. 3: Nesterov momentum with LR, momentum and warmup tuned at every batch",
        space=SGD_SPACE,
    ),
    "lars": Method("you2018_lars_fashion_mnist", "LARS (You)", (), "You et al. 2017, Algorithm 1", space=LARS_SPACE),
    "lamb": Method("lamb_fashion_mnist", "LAMB", (), "You et al. 2019", space=LAMB_SPACE),
    "akiba": Method(
        "akiba2017_fashion_mnist", "RMSprop warm-up + slow start (Akiba)", (), "Akiba et al. 2017", space=AKIBA_SPACE
    ),
    "mikami": Method(
        "mikami2018_fashion_mnist",
        "batch-size control, B/4 then B (Mikami)",
        (),
        "Mikami et al. 2018 sec. 3.1: the batch grows 4x after the first third of the epochs",
        space=LARS_SPACE,
    ),
}
"""Every method of ``largebatch sweep``, in the order of its tables."""

SPACES: dict = {name: m.space for name, m in METHODS.items() if m.space is not None}
"""What each method searches: names, ranges and scales. Keys of ``METHODS`` not here use ``goyal``'s
tuned reference LR. ``--search-range NAME=LOW,HIGH`` replaces a range
(:class:`largebatch.study.search.RangedTrial`)."""

FIXED_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.rule)
"""Methods whose hyperparameters are tuned only at the base batch (Goyal's reference LR) and carried
to every other batch by their rule."""


def space_of(method: str) -> SearchSpace:
    """The search space a trial of ``method`` draws from (``SPACES``; goyal's for a method without one)."""
    return SPACES.get(method, GOYAL_BASE_SPACE)
