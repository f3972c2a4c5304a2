"""Large-batch studies over ``largebatch train`` runs: ``largebatch sweep`` (accuracy against global
batch size per method, or each (method, batch) tuned with Optuna), ``study-report``,
``critical-batch`` (the critical batch measured by branching) and ``advise`` (critical batch size
from the gradient noise scale, GPUs and time from the cost model). The methods are records in
:mod:`.methods`; every run starts through :mod:`.launch`; Optuna storages are handled in
:mod:`.storage` (docs/architecture.md, "The study package")."""
