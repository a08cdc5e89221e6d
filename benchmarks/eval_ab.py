"""A trial's test evaluation (10,000 test predictions, four figures, the model), two ways, alternating:
the test predictions in a thread beside the model and learning-curve logging (``training.evaluate_and_log``,
0.8.0) and one after the other (0.7.0's order). Prints the seconds of each round and the medians of the last 3.

    python benchmarks/eval_ab.py ../shared/data/mnist.npz
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from mnist_exp import tracking  # noqa: E402
from mnist_exp.model import plots, training  # noqa: E402
from mnist_exp.model.cnn import build_model  # noqa: E402
from mnist_exp.model.data import to_model_inputs  # noqa: E402

HISTORY = {"loss": [1, 0.5], "val_loss": [1, 0.6], "accuracy": [0.5, 0.9], "val_accuracy": [0.5, 0.8]}


def sequential(model, ds, history):
    """0.7.0's order: predict, then metrics, figures and the model."""
    x_test = to_model_inputs(ds.x_test)
    probs = model.predict(x_test, batch_size=training.EVAL_BATCH, verbose=0)
    pred = probs.argmax(axis=1)
    tracking.log_metrics(training.metrics_from_probs(probs, ds.y_test))
    tracking.log_figure(plots.learning_curves(history, 1), "plots/learning_curves.png")
    tracking.log_figure(plots.prediction_grid(ds.x_test, ds.y_test, pred), "plots/predictions.png")
    tracking.log_figure(plots.confusion_matrix(ds.y_test, pred), "plots/confusion_matrix.png")
    tracking.log_figure(plots.mistakes(ds.x_test, ds.y_test, pred, probs.max(axis=1)), "plots/mistakes.png")
    tracking.log_keras_model(model, x_test[:5], probs[:5])


def main() -> None:
    d = np.load(sys.argv[1])
    ds = SimpleNamespace(x_test=d["x_test"], y_test=d["y_test"], x_val=d["x_train"][:0], y_val=d["y_train"][:0])
    mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/m.db")
    model = build_model()
    model.fit(to_model_inputs(d["x_train"][:2000]), keras.utils.to_categorical(d["y_train"][:2000], 10),
              batch_size=16, epochs=1, verbose=0)
    res: dict[str, list[float]] = {"sequential": [], "threaded": []}
    for rep in range(4):
        for name in ("sequential", "threaded") if rep % 2 == 0 else ("threaded", "sequential"):
            model.predict_function = None  # traced again each round, as for a new trial's model
            with mlflow.start_run():
                t = time.perf_counter()
                if name == "sequential":
                    sequential(model, ds, HISTORY)
                else:
                    training.evaluate_and_log(model, ds, HISTORY)
                res[name].append(time.perf_counter() - t)
    print({k: [round(x, 3) for x in v] for k, v in res.items()},
          {k: round(statistics.median(v[1:]), 3) for k, v in res.items()})


if __name__ == "__main__":
    main()
