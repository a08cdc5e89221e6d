"""``mnist-exp train``: one model, one tracked MLflow run (the seed baseline by default)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mnist_exp import tracking
from mnist_exp.model import resume, training
from mnist_exp.model.data import Dataset
from mnist_exp.runtime import faults, signals, terminal
from mnist_exp.spec.experiment import Experiment
from mnist_exp.spec.space import SearchSpace
from mnist_exp.tracking import checkpoints, keys


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
    a refit's (refit.py).

    An earlier run of the same fit (same kind and name, same parent) that was killed after some epochs is
    reopened and continues from its last completed epoch (model/resume.py); otherwise a new run starts.
    """
    training.set_seed_and_threads(exp)
    hp = space.to_hyperparameters(fixed=exp.hp)
    hypermodel = training.hypermodel_for(exp, len(ds.y_train))
    model = hypermodel.build(hp)

    experiment_id = tracking.configure(uri, exp.mlflow_experiment)
    name, echo = run_name or f"train-{exp.name}", f"[{run_name or 'train ' + exp.name}]"
    tags = {keys.TAG_KIND: "train", **tracking.environment_tags(), **(tags or {})}
    if exp.path:
        tags[keys.TAG_EXPERIMENT_FILE] = exp.path
    fit_id = resume.identity(hp.values, ds.fingerprint + ds.test_fingerprint, exp.seed, exp.training.epochs,
                             {"experiment": resume.fit_settings(exp)})
    t0 = time.perf_counter()
    with signals.handled(), signals.deferred():  # Ctrl-C / SIGTERM: the run ends KILLED, not mid-write
        found = resume.find(_earlier_attempts(experiment_id, tags[keys.TAG_KIND], name, parent_run_id), fit_id, echo)
        run_id = _open_run(experiment_id, name, tags, parent_run_id, fit_id, found, echo)
        try:
            signals.check()
            if found is None:
                tracking.log_params({**hp.values, **exp.as_params(), **_data_params(ds),
                                     "trainable_params": training.model_size(model)})
                tracking.log_dataset(ds)
            x, y, val = training.fit_arrays(ds)
            fit_verbose = terminal.fit_verbose(verbose)
            ckpt = resume.EpochCheckpoint(run_id, fit_id, training.new_data_seed(), resume=found)
            history = hypermodel.fit(
                hp, model, x, y, validation_data=val, epochs=exp.training.epochs, verbose=fit_verbose,
                callbacks=training.callbacks_for(exp, run_id, echo=echo, fit_verbose=fit_verbose, checkpoint=ckpt),
            )
            signals.check()  # after this the run is evaluated and finished; a late signal is ignored
            checkpoints.remove(run_id)  # the fit is done: a kill from here on trains again (nothing half-logged
            faults.point("checkpoint_removed")  # is ever resumed into)
            hist = training.merged_history(history)
            train_s = time.perf_counter() - t0
            summary = training.history_summary(hist, exp.objective.name, exp.objective.direction)
            tracking.log_metrics({**summary, "train_time_s": train_s})
            test = training.evaluate_and_log(model, ds, hist, keep_probabilities=exp.tuner.ensemble > 0)
            tracking.end_run(keys.FINISHED)
        except BaseException as e:
            status = keys.FAILED if isinstance(e, Exception) else keys.KILLED
            tracking.set_tags({keys.TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            tracking.end_run(status)
            if status == keys.FAILED:  # never resumed: only a KILLED run is
                checkpoints.remove(run_id)
            raise
    return TrainResult(run_id, test["test_accuracy"], test["test_loss"], time.perf_counter() - t0)


def _earlier_attempts(experiment_id: str, kind: str, name: str, parent_run_id: str | None) -> list:
    """Runs of this fit that a killed process left unfinished (the reaper marked them KILLED) with a checkpoint."""
    where = (f"tags.`{keys.TAG_KIND}` = '{kind}' and tags.`{keys.TAG_RUN_NAME}` = '{name}' "
             f"and attributes.status = '{keys.KILLED}'")
    if parent_run_id:
        where += f" and tags.`{keys.TAG_PARENT_RUN}` = '{parent_run_id}'"
    return [r for r in tracking.find_runs([experiment_id], where) if keys.TAG_CHECKPOINT in r.data.tags]


def _open_run(experiment_id: str, name: str, tags: dict, parent_run_id: str | None, fit_id: str,
              found: resume.Resume | None, echo: str) -> str:
    """A new run, or the killed one ``found`` reopened (its missing epochs logged, the resume tagged)."""
    if found is None:
        return tracking.start_run(experiment_id, name, {**tags, keys.TAG_FIT_IDENTITY: fit_id}, parent_run_id)
    tracking.reopen_run(found.run_id, {keys.TAG_RESUMED_FROM_EPOCH: str(found.epoch)})
    resume.backfill(found.run_id, found)
    print(f"{echo} run {found.run_id} resumed after epoch {found.epoch}", flush=True)
    return found.run_id


def _data_params(ds: Dataset) -> dict:
    return {
        "data.source": ds.source,
        "data.n_train": len(ds.y_train),
        "data.n_val": len(ds.y_val),
        "data.n_test": len(ds.y_test),
        "data.fingerprint": ds.fingerprint[:16],
    }
