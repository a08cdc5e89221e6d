"""mnist-exp: hyperparameter experiment tracking for CNNs on MNIST-format data."""

__version__ = "0.4.0"
