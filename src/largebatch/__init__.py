"""largebatch: large-minibatch data-parallel training of image classifiers on torch.distributed.

``largebatch.train(...)`` runs a training from Python and ``largebatch.evaluate(...)`` scores a run's
weights (:mod:`largebatch.api`); the optimizers are in :mod:`largebatch.optim`, the LR schedules in
:mod:`largebatch.schedules`, ghost BN and the model converter in :mod:`largebatch.nn`, the comm hooks
in :mod:`largebatch.dist`. See docs/api.md.
"""

from largebatch._version import __version__

__all__ = ["__version__", "evaluate", "load_config", "train"]


def __getattr__(name: str):
    # Lazy: ``import largebatch`` (and the CLI's start) does not import torch.
    if name in ("train", "evaluate", "load_config"):
        from largebatch import api

        return getattr(api, name)
    raise AttributeError(f"module 'largebatch' has no attribute {name!r}")
