"""TODO"""

from mnist_exp.tracking.mlflow_io import *  # noqa: F403
