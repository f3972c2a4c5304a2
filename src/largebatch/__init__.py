"""largebatch: large-minibatch data-parallel training of image classifiers on torch.distributed."""

__version__ = "0.1.0"
