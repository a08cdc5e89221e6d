"""The Python API: what the ``mnist-exp`` commands do, as functions that return data.

A notebook drives a sweep and gets run ids and data frames back instead of parsing terminal output::

    import mnist_exp
    result = mnist_exp.sweep("experiments/quick.yaml", overrides=["tuner.max_trials=4"])
    trials = mnist_exp.compare([result.name])          # a pandas DataFrame, one row per trial run
    champion = mnist_exp.promote(result.name)         # registers it and moves the alias `champion`
    answers = mnist_exp.predict(["digit.png"])        # a DataFrame: file, label, probability, ...

The CLI (``cli.py``) is a thin layer over these functions: it turns flags into arguments, prints, and maps
errors to exit codes. Bad input raises ``ConfigError`` / ``DataError`` (exit 2 on the command line) before
anything is written. The stores, the exactly-once guarantees and the locks are the commands'.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from mnist_exp.runtime import terminal
from mnist_exp.runtime.errors import ConfigError, MnistExpError
from mnist_exp.spec import names
from mnist_exp.spec.experiment import Experiment, Override, load_experiment
from mnist_exp.spec.space import SearchSpace, load_space
from mnist_exp.tracking import keys, liveness, store, sweep_lock

# The modules behind each command load inside its function (pandas, TensorFlow, Keras Tuner, MLflow come with
# them): `mnist-exp compare` reads a local store without any of those, and `--help` loads nothing.
if TYPE_CHECKING:
    from mnist_exp.model.data import Dataset
    from mnist_exp.model.tracked_run import TrainResult
    from mnist_exp.search.sweep import SweepResult

__all__ = ["Promotion", "SweepResult", "TrainResult", "compare", "load", "open_store", "predict", "promote", "sweep",
           "train"]


@dataclass(frozen=True)
class Promotion:
    """What ``promote`` chose and where the alias points now (``version`` is the dry run's verdict text when
    ``dry_run``)."""

    sweep: str
    trial_id: str
    run_id: str
    objective: str
    objective_value: float
    test_accuracy: float
    refit: bool  # the trial's refit on all training digits, not the trial's own model
    model_uri: str  # models:/<name>@<alias>
    version: str
    members: tuple[str, ...] = ()  # an ensemble's member runs (empty for a single model)


def load(experiment: str | Path | None = None, overrides: Sequence[str] = (),
         name: str | None = None) -> tuple[Experiment, SearchSpace, Dataset]:
    """Experiment, search space and data, all validated before anything is written.

    Args:
        experiment: an experiments/*.yaml file; None is the seed baseline on the embedded digits.
        overrides: ``KEY=VALUE`` items, as ``--set`` takes them (``data.source=mnist``, ``tuner.max_trials=4``).
        name: the sweep's name, checked by the one name rule (default: the experiment's).
    """
    if name is not None:
        names.check(name, "--name", key=None)
    from mnist_exp.model.data import load_data  # numpy

    exp = load_experiment(experiment, list(overrides))
    space = load_space(exp.search_space)
    space.check_conditions(exp.hp)
    return exp, space, load_data(exp.data, exp.seed)


def open_store(tracking_uri: str | None = None, write: bool = False, experiment: str = "mnist-exp",
               command: str | None = None) -> str:
    """The tracking URI (given, else $MLFLOW_TRACKING_URI, else the project's ``mlruns/``), checked before any
    MLflow client opens it: a server answers; a local store is created atomically, or is usable (and writable
    when ``write``). With ``command``, runs left RUNNING by a process that is gone end KILLED first."""
    uri = store.resolve_tracking_uri(tracking_uri)
    store.prepare(uri, write=write, experiment=experiment)
    if command:
        _reap(uri, command)
    return uri


def _reap(uri: str, command: str) -> None:
    """A store this cannot read or write is the command's own checks' business: a warning, not a failure."""
    try:
        liveness.reap(uri, f"mnist-exp {command}")
    except MnistExpError:
        raise
    except Exception as e:
        print(f"mnist-exp {command}: warning: runs of dead processes not checked: {type(e).__name__}: {e}"[:400],
              file=sys.stderr)


def relocate(tracking_uri: str | None = None):
    """Make a local store that was moved or copied to another folder record that folder (tracking/relocation.py):
    database backed up, locations rewritten in one transaction, registered models' files checked. Returns what
    was done (``Relocation``); a store that was not moved is left as it is."""
    return store.relocate(store.resolve_tracking_uri(tracking_uri))


def train(experiment: str | Path | None = None, overrides: Sequence[str] = (), tracking_uri: str | None = None,
          verbose: bool = False) -> TrainResult:
    """Train one model (the seed baseline by default) as one MLflow run; returns its run id and test metrics."""
    exp, space, ds = load(experiment, overrides)
    uri = open_store(tracking_uri, write=True, experiment=exp.mlflow_experiment, command="train")
    terminal.import_tensorflow()  # without its C++ start-up notices; after the store answered (seconds saved)
    from mnist_exp.model.tracked_run import run_train  # Keras, after the quiet import above

    print(f"train {exp.name}: {ds.sizes['train']} train / {ds.sizes['val']} val / {ds.sizes['test']} test digits "
          f"from {ds.source}; {exp.training.epochs} epoch(s); store {uri}", flush=True)
    res = run_train(exp, space, ds, uri, verbose=verbose)
    print(f"run {res.run_id}: test accuracy {res.test_accuracy:.4f}, test loss {res.test_loss:.4f}, "
          f"{res.wall_s:.0f} s. See it: {store.ui_command(uri)}")
    return res


def sweep(experiment: str | Path | None = None, overrides: Sequence[str] = (), name: str | None = None,
          tracking_uri: str | None = None, overwrite: bool = False, verbose: bool = False, serve: str | None = None,
          local_workers: int | None = None, lease_s: float = 30.0, tls_cert: str | None = None,
          tls_key: str | None = None) -> SweepResult:
    """Run (or resume: the same call again) a Keras Tuner sweep; every trial is a nested MLflow run.

    Args:
        experiment: the experiment file, as ``load`` takes it.
        overrides: ``--set`` items, as ``load`` takes them.
        name: renames the sweep (``--name``).
        overwrite: discard an existing sweep of that name and start afresh.
        serve: ``HOST:PORT`` to be the chief that workers on other machines join (needs $MNIST_EXP_TOKEN).
        local_workers: with ``serve``, worker processes on this machine (default ``tuner.parallel_trials``).
        lease_s: a worker silent this long loses its trial to another.
        tls_cert: with ``serve``, the chief's certificate (PEM file): workers connect over TLS.
        tls_key: the private key of ``tls_cert`` (PEM file).

    Returns:
        The sweep's name, parent run id, trials completed and failed, and its best trial.
    """
    if name is not None:  # a string as given, even "2024" (checked by names.check)
        overrides = [*overrides, Override(f"name={json.dumps(name)}", "--name")]
    from mnist_exp.search.distributed import wire  # ssl and sockets, not gRPC

    tls = wire.server_tls(tls_cert, tls_key)
    if tls is not None and serve is None:
        raise ConfigError("--tls-cert: only with --serve (this machine's own workers need no TLS)")
    exp, space, ds = load(experiment, overrides, name)
    uri = open_store(tracking_uri, write=True, experiment=exp.mlflow_experiment)  # created once, atomically
    terminal.import_tensorflow()  # without its C++ start-up notices; after the store answered (seconds saved)
    from mnist_exp.search.sweep import run_sweep  # Keras Tuner and Keras, after the quiet import above

    with sweep_lock.acquire(uri, exp.name):  # one sweep of a name at a time; nothing of it is written before
        _reap(uri, "sweep")
        return run_sweep(exp, space, ds, uri, overwrite=overwrite, verbose=verbose, serve=serve,
                         local_workers=local_workers, lease_s=lease_s, tls=tls)


def compare(sweeps: Sequence[str] | None = None, tracking_uri: str | None = None,
            experiment: str = "mnist-exp"):
    """Every trial run of ``sweeps`` (default: all sweeps) as a pandas DataFrame: one row per run, with its
    sweep, trial id, status, objective, test metrics, duration and hyperparameters. Raises ConfigError for a
    sweep the store does not have."""
    from mnist_exp.results import compare as compare_mod  # pandas, not MLflow (a local store is read directly)

    uri = open_store(tracking_uri, write=False, experiment=experiment, command="compare")
    found = compare_mod.load_trials(uri, experiment, list(sweeps or []))
    if found.missing:
        raise ConfigError(f"no sweep named {', '.join(names.shorten(m) for m in found.missing)} in {uri}")
    return found.df


def promote(sweep: str | None = None, model_name: str = "mnist-cnn", alias: str = "champion", force: bool = False,
            dry_run: bool = False, tracking_uri: str | None = None, experiment: str = "mnist-exp",
            ensemble: int | None = None) -> Promotion:
    """Register the sweep's best trial (or its refit) and move ``alias`` to it, guarded: never to a model that
    tests worse than the current champion on the same digits unless ``force``. Raises PromotionRefused (and
    changes nothing) when refused; ``dry_run`` judges without writing. ``ensemble``: average up to that many
    trials, chosen on validation, as one model (None: the sweep's ``tuner.ensemble``; 0 or 1: none)."""
    from mnist_exp.results import promote as promote_mod  # MLflow

    promote_mod.check_names(model_name, alias)
    uri = open_store(tracking_uri, write=not dry_run, experiment=experiment,
                     command=None if dry_run else "promote")  # --dry-run changes nothing
    experiment_id = promote_mod.experiment_id(uri, experiment)
    if ensemble is not None and ensemble < 0:
        raise ConfigError(f"--ensemble {ensemble}: must be 0 or more")
    cand, version = promote_mod.promote(uri, experiment_id, sweep, model_name, alias, dry_run=dry_run, force=force,
                                        ensemble_of=ensemble)
    members = tuple(m for m in cand.tags.get(keys.TAG_ENSEMBLE_OF, "").split(",") if m)
    return Promotion(cand.sweep, cand.trial_id, cand.run_id, cand.objective, cand.objective_value, cand.test_accuracy,
                     bool(cand.tags.get(keys.TAG_REFIT_OF)), f"models:/{model_name}@{alias}", str(version), members)


def gc(sweep: str, keep_top: int, dry_run: bool = False, tracking_uri: str | None = None,
       experiment: str = "mnist-exp"):
    """Delete the models and plots of ``sweep``'s trials but the ``keep_top`` best, registered ones and ensemble
    members (results/gc.py); params, metrics and tags stay. Returns (the Collection, bytes freed: 0 on a dry run).
    Holds the sweep's lock: SweepLocked (exit 2) while the sweep runs."""
    from mnist_exp.results import gc as gc_mod
    from mnist_exp.results import promote as promote_mod
    from mnist_exp.tracking import sweep_lock

    uri = open_store(tracking_uri, write=not dry_run, experiment=experiment, command=None if dry_run else "gc")
    experiment_id = promote_mod.experiment_id(uri, experiment)
    if dry_run:
        return gc_mod.plan(experiment_id, sweep, keep_top), 0
    with sweep_lock.acquire(uri, sweep):
        c = gc_mod.plan(experiment_id, sweep, keep_top)
        return c, gc_mod.collect(c)


def predict(images: Sequence[str | Path], model: str = "models:/mnist-cnn@champion",
            tracking_uri: str | None = None):
    """Classify image files (PNG, JPEG, … or .npz arrays; brought to MNIST form first) with a registered model.
    Returns a pandas DataFrame: file, digit_found, reason, label, probability, probabilities."""
    import pandas as pd

    from mnist_exp.model import predict as predict_mod  # numpy and Pillow; the model loads with TensorFlow

    loaded = predict_mod.load_all([str(i) for i in images])  # every file read and checked before the store
    needs_model = any(reason is None for *_, reason in loaded)
    uri = open_store(tracking_uri, write=False) if needs_model else ""
    return pd.DataFrame(predict_mod.classify(uri, model, loaded),
                        columns=["file", "digit_found", "reason", "label", "probability", "probabilities"])
