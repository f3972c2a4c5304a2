"""The closed choices of the config that modules below it in the layering check themselves
(``largebatch.nn.norm``, ``largebatch.dist.hooks``; torch-free, the bottom layer). Every other set of
choices is written on its field in :mod:`largebatch.config.schema`, which uses these tuples too."""

BN_STATISTICS = ("moving_average", "last_batch", "precise")
VARIANCE_AVERAGINGS = ("mean", "pooled")
COMM_ALGORITHMS = ("allreduce", "hierarchical", "torus2d")
COMM_COMPRESSIONS = ("none", "fp16", "bf16")
