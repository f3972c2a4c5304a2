"""The training engine: the trainer loop (:mod:`largebatch.train.trainer`), the worker entry and the
run directory (:mod:`largebatch.train.run`), checkpoints, metrics, precision and the gradient noise
scale. From Python, start a run with :func:`largebatch.train`."""
