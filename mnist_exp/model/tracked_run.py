"""``mnist-exp train``: one model, one tracked MLflow run (the seed baseline by default)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mnist_exp import tracking
from mnist_exp.model import training
from mnist_exp.model.data import Dataset
from mnist_exp.runtime import signals, terminal
from mnist_exp.spec.experiment import Experiment
from mnist_exp.spec.space import SearchSpace
from mnist_exp.tracking import keys


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    test_accuracy: float
    test_loss: float
    wall_s: float


def run_train(exp: Experiment, space: SearchSpace, ds: Dataset, uri: str, verbose: bool = False,
              tags: dict | None = None, parent_run_id: str | None = None, run_name: str | None = None) -> TrainResult:
    """Train with the space's defaults (never a sample) and the experiment's fixed hp values. Prints one line
    per epoch; ``verbose`` adds Keras's progress bar (terminal.py). ``tags``, ``parent_run_id``, ``run_name``:
    a refit's (refit.py)."""
    training.set_seed_and_threads(exp)
    hp = space.to_hyperparameters(fixed=exp.hp)
    hypermodel = training.hypermodel_for(exp, len(ds.y_train))
    model = hypermodel.build(hp)

    experiment_id = tracking.configure(uri, exp.mlflow_experiment)
    tags = {keys.TAG_KIND: "train", **tracking.environment_tags(), **(tags or {})}
    if exp.path:
        tags[keys.TAG_EXPERIMENT_FILE] = exp.path
    t0 = time.perf_counter()
    with signals.handled(), signals.deferred():  # Ctrl-C / SIGTERM: the run ends KILLED, not mid-write
        run_id = tracking.start_run(experiment_id, run_name or f"train-{exp.name}", tags, parent_run_id)
        try:
            signals.check()
            tracking.log_params({**hp.values, **exp.as_params(), **_data_params(ds),
                                 "trainable_params": training.model_size(model)})
            tracking.log_dataset(ds)
            x, y, val = training.fit_arrays(ds)
            fit_verbose = terminal.fit_verbose(verbose)
            history = hypermodel.fit(
                hp, model, x, y, validation_data=val, epochs=exp.training.epochs, verbose=fit_verbose,
                callbacks=training.callbacks_for(exp, run_id, echo=f"[{run_name or 'train ' + exp.name}]",
                                                 fit_verbose=fit_verbose),
            )
            signals.check()  # after this the run is evaluated and finished; a late signal is ignored
            hist = training.merged_history(history)
            train_s = time.perf_counter() - t0
            summary = training.history_summary(hist, exp.objective.name, exp.objective.direction)
            tracking.log_metrics({**summary, "train_time_s": train_s})
            test = training.evaluate_and_log(model, ds, hist)
            tracking.end_run(keys.FINISHED)
        except BaseException as e:
            status = keys.FAILED if isinstance(e, Exception) else keys.KILLED
            tracking.set_tags({keys.TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            tracking.end_run(status)
            raise
    return TrainResult(run_id, test["test_accuracy"], test["test_loss"], time.perf_counter() - t0)


def _data_params(ds: Dataset) -> dict:
    return {
        "data.source": ds.source,
        "data.n_train": len(ds.y_train),
        "data.n_val": len(ds.y_val),
        "data.n_test": len(ds.y_test),
        "data.fingerprint": ds.fingerprint[:16],
    }
