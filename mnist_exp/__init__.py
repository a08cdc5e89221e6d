"""mnist-exp: hyperparameter experiment tracking for CNNs on MNIST-format data."""

from mnist_exp._version import __version__

__all__ = ["__version__"]
