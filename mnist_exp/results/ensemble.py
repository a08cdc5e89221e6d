"""``promote --ensemble K``: a sweep's finished trials averaged as one registered model.

Members are chosen among the sweep's best finished trials (``LIBRARY``, ranked by its objective) on their
validation probabilities only (``ensemble_select.greedy``), which every trial of a sweep with
``tuner.ensemble`` keeps (``tracking/probabilities.py``). A chosen trial that the sweep refitted on all its
training digits contributes the refit's model (its validation score is the trial's: the refit trained on those
digits). The ensemble is scored on the members' test probabilities, then built as a run of its own under the
sweep's parent (``mnist_exp.kind=ensemble``) holding one MLflow pyfunc model that copies the members' Keras
models and averages their class probabilities (``model/ensemble_pyfunc.py``): the same input and output as a
single model, so ``predict`` and ``mlflow models serve`` treat it as one.

The run is built inside the promotion lock. Its identity (members and weights) finds it again: a second
promotion of the same ensemble reuses the FINISHED run, and an unfinished one (a promotion killed while building
it) is deleted and built again. Fault points: ``ensemble_run_started``, ``ensemble_logged``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_exp import tracking
from mnist_exp.results import ensemble_select
from mnist_exp.runtime import faults
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.runtime.terminal import import_tensorflow
from mnist_exp.tracking import keys, probabilities

LIBRARY = 30  # the best trials by the sweep's objective that members are chosen from
STEPS_PER_MEMBER = 4  # selection steps per allowed member: repeats give finer weights
PYFUNC_FILE = Path(__file__).resolve().parents[1] / "model" / "ensemble_pyfunc.py"


@dataclass(frozen=True)
class Member:
    trial_id: str
    trial_run_id: str  # whose validation probabilities chose it
    run_id: str  # whose model and test probabilities it contributes: the trial's refit when it has one
    model_uri: str
    weight: float
    val_accuracy: float
    val_loss: float
    test_accuracy: float

    @property
    def refit(self) -> bool:
        return self.run_id != self.trial_run_id


@dataclass(frozen=True)
class Plan:
    """The chosen members and the ensemble's scores, read from the store without writing to it."""

    sweep: str
    parent_run_id: str
    members: tuple[Member, ...]
    library: int  # trials it was chosen from
    max_members: int
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    test_loss: float

    def identity(self) -> str:
        chosen = sorted((m.run_id, round(m.weight, 6)) for m in self.members)
        return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()


@dataclass(frozen=True)
class Built:
    run_id: str
    model_uri: str
    metrics: dict  # size_bytes, latency_ms_* and the best member's, as logged to the ensemble run


def plan(experiment_id: str, parent, max_members: int, objective: str, maximize: bool) -> Plan:
    """Choose up to ``max_members`` members of the sweep whose parent run is ``parent``; ConfigError (exit 2)
    when its trials kept no validation probabilities or saw different digits."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    name = parent.data.tags[keys.TAG_SWEEP]
    library = _library(experiment_id, parent.info.run_id, maximize)
    if not library:
        raise ConfigError(f"sweep {name}: no finished trial kept validation probabilities to choose ensemble members "
                          "by; run it with tuner.ensemble set (e.g. --set tuner.ensemble=5)")
    val = [_load(r, "validation") for r in library]
    substitutes = _refits(experiment_id, parent)
    chosen_runs = [substitutes.get(r.info.run_id, r) for r in library]
    test = [_load(r, "test") for r in chosen_runs]
    _same_digits(name, library, val, "validation")
    _same_digits(name, chosen_runs, test, "test")
    y_val, y_test = val[0][1], test[0][1]
    sel = ensemble_select.greedy([p for p, _ in val], y_val, max_members, STEPS_PER_MEMBER * max_members)
    weights = sel.weights()
    members = tuple(
        Member(trial.data.tags[keys.TAG_TRIAL], trial.info.run_id, run.info.run_id, run.data.tags[keys.TAG_MODEL_URI],
               float(weights[i]), ensemble_select.accuracy(val[i][0], y_val), ensemble_select.log_loss(val[i][0], y_val),
               ensemble_select.accuracy(test[i][0], y_test))
        for i, (trial, run) in enumerate(zip(library, chosen_runs)) if sel.counts[i])
    mean_test = ensemble_select.mean_of([p for p, _ in test], sel.counts)
    return Plan(name, parent.info.run_id, members, len(library), max_members, sel.val_accuracy, sel.val_loss,
                ensemble_select.accuracy(mean_test, y_test), ensemble_select.log_loss(mean_test, y_test))


def _library(experiment_id: str, parent_run_id: str, maximize: bool) -> list:
    """The best LIBRARY finished trials (one run per trial) that kept validation and test probabilities."""
    sign = 1 if maximize else -1
    finished = [r for r in tracking.trial_runs(experiment_id, parent_run_id)
                if r.info.status == keys.FINISHED and keys.METRIC_OBJECTIVE in r.data.metrics
                and keys.TAG_MODEL_URI in r.data.tags and keys.TAG_GC not in r.data.tags]
    finished.sort(key=lambda r: (keys.TAG_PRUNED not in r.data.tags, sign * r.data.metrics[keys.METRIC_OBJECTIVE],
                                 -r.info.start_time), reverse=True)
    out, seen = [], set()
    for r in finished:
        trial = r.data.tags.get(keys.TAG_TRIAL)
        if trial in seen:
            continue
        if set(probabilities.SPLITS) <= probabilities.kept(r.info.run_id):
            out.append(r)
            seen.add(trial)
        if len(out) == LIBRARY:
            break
    return out


def _refits(experiment_id: str, parent) -> dict:
    """trial run id -> its FINISHED refit run that kept test probabilities (the sweep's one refit, if any)."""
    refit_id = parent.data.tags.get(keys.TAG_REFIT_RUN_ID)
    out = {}
    for r in tracking.refit_runs(experiment_id, parent.info.run_id):
        if (r.info.run_id == refit_id and r.info.status == keys.FINISHED and keys.TAG_MODEL_URI in r.data.tags
                and "test" in probabilities.kept(r.info.run_id)):
            out[r.data.tags[keys.TAG_REFIT_OF]] = r
    return out


def _load(run, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return probabilities.load(run.info.run_id, split)
    except Exception as e:
        raise ConfigError(f"run {run.info.run_id}: its {split} probabilities cannot be read "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None


def _same_digits(sweep: str, runs: list, loaded: list, split: str) -> None:
    first = loaded[0][1]
    for run, (probs, labels) in zip(runs, loaded):
        if labels.shape != first.shape or probs.shape != (len(first), probs.shape[1]) or not np.array_equal(labels, first):
            raise ConfigError(f"sweep {sweep}: runs {runs[0].info.run_id} and {run.info.run_id} kept {split} "
                              "probabilities of different digits; an ensemble needs one split")


# --- the ensemble run and its model (inside the promotion lock) -------------------------------------------


def finished(p: Plan, experiment_id: str, runs: list | None = None) -> Built | None:
    """The FINISHED ensemble run of ``p`` an earlier promotion built, or None (reads only)."""
    runs = tracking.ensemble_runs(experiment_id, p.parent_run_id, p.identity()) if runs is None else runs
    done = [r for r in runs if r.info.status == keys.FINISHED and keys.TAG_MODEL_URI in r.data.tags]
    if not done:
        return None
    r = min(done, key=lambda r: r.info.start_time)
    return Built(r.info.run_id, r.data.tags[keys.TAG_MODEL_URI], dict(r.data.metrics))


def build(p: Plan, experiment_id: str, best_single_uri: str) -> Built:
    """The FINISHED ensemble run of ``p``: found again, or built (an unfinished one left by a killed promotion
    is deleted first). ConfigError, nothing written, when a member's model cannot be read."""
    runs = tracking.ensemble_runs(experiment_id, p.parent_run_id, p.identity())
    found = finished(p, experiment_id, runs)
    if found:
        return found
    for r in runs:  # killed while it was being built: this promotion holds the lock, so nobody else builds it
        tracking.client().delete_run(r.info.run_id)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output, not a bar per file
    import_tensorflow()  # before MLflow's Keras flavor imports it: without TensorFlow's start-up notices
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # "Validating input example …" is routine
    with tempfile.TemporaryDirectory() as tmp:
        local = [_download(m, Path(tmp) / f"member-{i}") for i, m in enumerate(p.members)]
        return _log(p, experiment_id, local, best_single_uri)


def _download(m: Member, dst: Path) -> str:
    import mlflow

    dst.mkdir()
    logging.getLogger("mlflow.store.artifact.artifact_repo").setLevel(logging.WARNING)  # "No artifacts found" is ours to say
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=m.model_uri, dst_path=str(dst))
        if not (Path(local) / "MLmodel").is_file():
            raise FileNotFoundError("no MLmodel file: the model's artifacts are gone")
    except Exception as e:
        raise ConfigError(f"ensemble member trial {m.trial_id} (run {m.run_id}): its model {m.model_uri} cannot be "
                          f"read ({(str(e).splitlines() or ['?'])[0][:200]}); nothing registered") from None
    return local


def _log(p: Plan, experiment_id: str, local: list[str], best_single_uri: str) -> Built:
    import mlflow
    from mlflow.models import Model

    first = Model.load(local[0])
    tags = {keys.TAG_KIND: "ensemble", keys.TAG_SWEEP: p.sweep, keys.TAG_ENSEMBLE_IDENTITY: p.identity(),
            keys.TAG_ENSEMBLE_OF: ",".join(m.run_id for m in p.members), **tracking.environment_tags()}
    run_id = tracking.start_run(experiment_id, f"{p.sweep}-ensemble", tags, p.parent_run_id)
    try:
        faults.point("ensemble_run_started")
        tracking.log_params({"ensemble.max_members": p.max_members, "ensemble.members": len(p.members),
                             "ensemble.library": p.library,
                             **{f"ensemble.member_{i}": f"{m.run_id}:{m.weight:.6f}" for i, m in enumerate(p.members)}})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={f"member-{i}": d for i, d in enumerate(local)},
            model_config={"weights": [m.weight for m in p.members]}, signature=first.signature,
            input_example=first.load_input_example(local[0]), pip_requirements=_requirements(local[0]),
        )
        metrics = {"val_accuracy": p.val_accuracy, "val_loss": p.val_loss, "test_accuracy": p.test_accuracy,
                   "test_loss": p.test_loss, **_costs(info.model_uri, best_single_uri, local)}
        tracking.log_metrics(metrics)
        tracking.set_tags({keys.TAG_MODEL_URI: info.model_uri})
        faults.point("ensemble_logged")
        tracking.end_run(keys.FINISHED)
    except BaseException as e:
        tracking.set_tags({keys.TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]})
        tracking.end_run(keys.FAILED if isinstance(e, Exception) else keys.KILLED)
        raise
    return Built(run_id, info.model_uri, metrics)


def _requirements(member_dir: str) -> list[str]:
    req = Path(member_dir) / "requirements.txt"
    return [ln.strip() for ln in req.read_text().splitlines() if ln.strip()] if req.is_file() else []


def _costs(ensemble_uri: str, single_uri: str, local: list[str]) -> dict:
    """Size on disk and latency per image (batch 1 and 256; median of repeats) of the ensemble and of the best
    single model (what promote without --ensemble registers)."""
    import keras
    import mlflow

    keras.utils.disable_interactive_logging()  # the single model's predict would draw Keras's progress bar
    out = {"size_bytes": float(sum(f.stat().st_size for d in local for f in Path(d).rglob("*") if f.is_file()))}
    with tempfile.TemporaryDirectory() as tmp:
        single_dir = mlflow.artifacts.download_artifacts(artifact_uri=single_uri, dst_path=tmp)
        out["single_size_bytes"] = float(sum(f.stat().st_size for f in Path(single_dir).rglob("*") if f.is_file()))
        for prefix, uri in (("", ensemble_uri), ("single_", single_dir)):
            model = mlflow.pyfunc.load_model(uri)
            for batch, repeats in ((1, 20), (256, 5)):
                out[f"{prefix}latency_ms_per_image_batch{batch}"] = 1000 * _median_s(model, batch, repeats) / batch
    return out


def _median_s(model, batch: int, repeats: int) -> float:
    x = np.zeros((batch, 28, 28, 1), np.float32)
    model.predict(x)  # traced and warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def note_on_parent(p: Plan, built: Built) -> None:
    """The sweep's parent run names its ensemble and the ensemble's score (the UI's run page and table)."""
    tracking.set_tags({keys.TAG_ENSEMBLE_RUN_ID: built.run_id}, run_id=p.parent_run_id)
    tracking.log_metrics({keys.METRIC_ENSEMBLE_TEST_ACCURACY: p.test_accuracy}, run_id=p.parent_run_id)
