"""mnist-exp: hyperparameter experiment tracking for CNNs on MNIST-format data.

The package, by layer (import-linter keeps each importing only those below it; ``.importlinter``):
``cli`` (the command line) over ``api`` (the same as functions) and ``server`` (a team tracking server);
``search`` (sweeps, Keras Tuner glue, budget, refit; ``search.distributed``: chief and workers);
``results`` (compare, promote); ``model`` (the CNN, data, training, predict); ``tracking`` (the one MLflow
layer); ``spec`` (experiment and space files, levers, names, limits); ``runtime`` (errors, signals, fault
points, terminal output).

The API's functions are exported here and load on first use, so ``import mnist_exp`` (and ``mnist-exp
--help``) stays instant: ``mnist_exp.sweep``, ``train``, ``compare``, ``promote``, ``predict``, ``load``,
``open_store`` (see ``mnist_exp.api``).
"""

from mnist_exp._version import __version__

_API = ("Promotion", "SweepResult", "TrainResult", "compare", "load", "open_store", "predict", "promote", "sweep",
        "train")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from mnist_exp import api  # on first use: TensorFlow, Keras Tuner and MLflow load with it

        return getattr(api, name)
    raise AttributeError(f"module 'mnist_exp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
