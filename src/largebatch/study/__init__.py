"""Large-batch studies: ``largebatch sweep`` (accuracy against global batch size per method) and
``largebatch advise`` (critical batch size from the gradient noise scale, GPUs and time from the
cost model)."""
