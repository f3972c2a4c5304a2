"""The training engine: the trainer loop (:mod:`largebatch.train.trainer`), the worker entry
(:mod:`largebatch.train.run`), the run directory (:mod:`largebatch.train.rundir`), checkpoints
(:mod:`largebatch.train.checkpoint_manager`, files in :mod:`largebatch.train.checkpoint`), metrics,
precision and the gradient noise scale. From Python, start a run with :func:`largebatch.train`."""
