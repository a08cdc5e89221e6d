"""Keras Tuner's own tuners, with every trial tracked as a nested MLflow run, exactly once.

``make_tuner`` builds a Tuner whose ``run_trial`` opens a child run under the sweep's parent, trains through
Keras Tuner's own ``run_trial`` (so Hyperband's epochs and checkpoints, executions per trial and the oracle
all work as the library intends), then evaluates Keras Tuner's best-epoch checkpoint on the test set and
logs it. Tuner and oracle state are written atomically (temp file + rename), so a process killed at any
instant leaves a loadable project.

Exactly once: a trial's MLflow run turning FINISHED is the commit point. A process killed after that but
before Keras Tuner recorded the trial leaves the oracle with the trial ongoing; when the trial comes back
(resume, or another worker), ``run_trial`` finds the FINISHED run and hands its recorded objective to the
oracle instead of training again. A run killed before FINISHED is marked KILLED on resume and its trial
runs again. The ``faults.point`` calls name each boundary; tests/search/test_faults.py kills the process at each.
"""

from __future__ import annotations

import contextlib
import io
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import keras_tuner as kt
from keras_tuner.src import config as kt_config
from keras_tuner.src.engine import tuner_utils

from mnist_exp import tracking
from mnist_exp.model import fidelity, resume, training
from mnist_exp.model.data import Dataset
from mnist_exp.runtime import faults, heap, signals
from mnist_exp.search import trial_resume
from mnist_exp.search.oracle import KINDS, make_oracle
from mnist_exp.search.sweep_state import atomic_write_json
from mnist_exp.search.trial_failures import (
    ChiefGone,
    DiskFullStop,
    LeaseLost,
    Superseded,
    as_store_unavailable,
    first_line,
    is_disk_full,
    is_store_unavailable,
)
from mnist_exp.spec.experiment import Experiment
from mnist_exp.spec.levers import HP_DEFAULTS, TUNER_BOOKKEEPING_PREFIX, hp_value
from mnist_exp.tracking import checkpoints, keys


@dataclass
class SweepContext:
    """Everything a trial needs, all derivable from the experiment file and the parent run id."""

    exp: Experiment
    ds: Dataset
    experiment_id: str
    parent_run_id: str
    arrays: tuple = ()  # (x, y, validation_data) in model form; shared, never copied
    started: float = field(default_factory=time.time)
    ended_here: int = 0  # trials ended since this process started (for the ETA)
    first_error: str | None = None
    worker: str | None = None  # a parallel worker's tuner id, shown in its epoch lines

    def trial_ended_here(self) -> None:
        self.ended_here += 1

    def trial_failed(self, error: str) -> None:
        """Keep the sweep's first trial error: the sweep reports it if every trial fails."""
        self.first_error = self.first_error or error


class TrackedTunerMixin:
    def __init__(self, sweep: SweepContext, oracle, **kwargs):
        self.sweep = sweep
        self._reported: set[str] = set()  # trials that reported every epoch so far to the oracle (this attempt)
        self._pruned: dict[str, int] = {}  # trial id -> epoch (1-based) after which the oracle stopped it
        self._gaps: set[str] = set()  # trials with an epoch the oracle did not hear of
        self._models: dict[str, object] = {}  # trial id -> the model its fit trains (evaluated after, not rebuilt)
        # Called on kt.Tuner directly: the concrete tuners' __init__ only build their oracle,
        # which we build ourselves (atomic saves). Their run_trial etc. still apply by MRO.
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)

    def search(self, *args, **kwargs):
        heap.freeze()  # before the trials: Keras Tuner collects garbage twice per trial (runtime/heap.py)
        return super().search(*args, **kwargs)

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        atomic_write_json(self._get_tuner_fname(), self.get_state())

    # From here to on_trial_end a Ctrl-C / SIGTERM is taken at safe points only (runtime/signals.py): before
    # the trial's model is evaluated it ends the trial KILLED (retried on resume); after, the trial
    # finishes and Keras Tuner records it before the sweep stops, so no trial is run twice.
    def on_trial_begin(self, trial):
        signals.defer(True)
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # Keras Tuner records the trial (COMPLETED or FAILED) here
        faults.point("after_trial_recorded")
        signals.defer(False)
        signals.check()

    def on_epoch_begin(self, trial, model, epoch, logs=None):
        self._models[trial.trial_id] = model

    def on_epoch_end(self, trial, model, epoch, logs=None):
        """With a pruner, report the epoch's objective to the oracle (Keras Tuner 1.4.8 never does); if it answers
        STOPPED, the fit ends after this epoch. Without one nothing would read the reports: none is made."""
        name = self.oracle.objective.name
        if self.sweep.exp.tuner.pruner == "none" or not logs or name not in logs:
            return
        try:
            answer = self.oracle.update_trial(trial.trial_id, {name: float(logs[name])}, step=epoch)
        except ChiefGone:  # a worker cut off from its chief trains on: its lease decides whether the trial is
            self._reported.discard(trial.trial_id)  # still its own; the trial's result is then reported whole
            self._gaps.add(trial.trial_id)
            return
        if trial.trial_id not in self._gaps:
            self._reported.add(trial.trial_id)
        if answer is not None and answer.status == kt.engine.trial.TrialStatus.STOPPED:
            model.stop_training = True
            self._pruned[trial.trial_id] = epoch + 1

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        """Keras Tuner 1.4.8's, except that an attempt given to another worker (Superseded) is one line, not the
        traceback Keras Tuner prints for every trial that raises (its config.DEBUG is on): nothing failed. The
        trial's status is what Keras Tuner would send either way (INVALID; the chief refuses it, not being ours)."""
        status = kt.engine.trial.TrialStatus
        try:
            self._run_and_update_trial(trial, *fit_args, **fit_kwargs)
            trial.status = status.COMPLETED
        except Superseded as e:
            print(f"[sweep {self.sweep.exp.name}{' ' + self.sweep.worker if self.sweep.worker else ''}] {e}", flush=True)
            trial.status, trial.message = status.INVALID, str(e)
        except Exception as e:
            if isinstance(e, kt.errors.FatalError):
                raise
            if kt_config.DEBUG:
                traceback.print_exc()
            trial.status = status.FAILED if isinstance(e, kt.errors.FailedTrialError) else status.INVALID
            trial.message = traceback.format_exc()

    def _run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        """Keras Tuner's, without its final report when every epoch was reported already (its history is the
        trial's; a final report would be added to the best epoch's observations). With a gap (a report the chief
        did not answer) the final report is made: the best epoch may be the one it missed."""
        self._reported.discard(trial.trial_id)
        self._gaps.discard(trial.trial_id)
        try:
            results = self.run_trial(trial, *fit_args, **fit_kwargs)
            if trial.trial_id in self._reported:
                return
            objective = self.oracle.objective
            tuner_utils.validate_trial_results(results, objective, "Tuner.run_trial()")
            self.oracle.update_trial(trial.trial_id, tuner_utils.convert_to_metrics_dict(results, objective),
                                     step=tuner_utils.get_best_step(results, objective))
        finally:
            self._reported.discard(trial.trial_id)
            self._gaps.discard(trial.trial_id)
            self._pruned.pop(trial.trial_id, None)
            self._models.pop(trial.trial_id, None)

    def claim(self, trial_id: str) -> None:
        """Raise Superseded if this process may no longer commit the trial (a worker asks its chief)."""

    def extra_callbacks(self) -> list:
        return []

    def run_trial(self, trial, *args, **kwargs):
        for name in HP_DEFAULTS:  # pin what the space leaves out to the baseline, so params are complete
            hp_value(trial.hyperparameters, name)
        adopted = adopt_finished_run(self.sweep, trial.trial_id)
        if adopted is not None:
            return adopted
        found = self._open_run(trial)
        try:
            return self._train_and_commit(trial, time.perf_counter(), found, *args, **kwargs)
        except BaseException as e:
            instead = self._end_after(trial, e)
            if instead is None:
                raise
            raise instead from e

    def _open_run(self, trial):
        """Reopen the trial's interrupted attempt that left a checkpoint (returned), or start a new run (None)."""
        sw, exp = self.sweep, self.sweep.exp
        try:
            found = trial_resume.resumable(sw, trial)
            if found is not None:
                tracking.reopen_run(found.run_id, {keys.TAG_RESUMED_FROM_EPOCH: str(found.epoch),
                                                   keys.TAG_TUNER_ID: self.tuner_id})
                resume.backfill(found.run_id, found)
                self._gaps.add(trial.trial_id)  # the epochs before the resume: reported with the trial's result
                print(f"[sweep {exp.name}{' ' + sw.worker if sw.worker else ''}] trial {trial.trial_id}: run "
                      f"{found.run_id} resumed after epoch {found.epoch}", flush=True)
                faults.point("trial_resumed")
                return found
            tags = {keys.TAG_KIND: "trial", keys.TAG_SWEEP: exp.name, keys.TAG_TRIAL: trial.trial_id,
                    keys.TAG_TUNER_ID: self.tuner_id, **tracking.environment_tags(),
                    keys.TAG_FIT_IDENTITY: trial_resume.fit_identity(sw, trial.hyperparameters.values)}
            tracking.start_run(sw.experiment_id, f"{exp.name}-{trial.trial_id}", tags, sw.parent_run_id)
        except Exception as e:
            raise as_store_unavailable(e) from e
        faults.point("trial_started")
        return None

    def _train_and_commit(self, trial, t0: float, found, *args, **kwargs):
        """Train through Keras Tuner (from ``found``, a checkpoint, when resumed), evaluate its best epoch on the
        test set, log, commit (run FINISHED)."""
        sw, exp, hp = self.sweep, self.sweep.exp, trial.hyperparameters
        signals.check()
        if found is None:
            tracking.log_params({**hp.values, **exp.as_params(), **fidelity.logged(hp.values, exp.training.epochs)})
            tracking.log_dataset(sw.ds)
        echo = f"[sweep {exp.name}{' ' + sw.worker if sw.worker else ''}] trial {trial.trial_id}"
        run_id, objective = tracking.active_run_id(), self.oracle.objective
        ckpt = None if exp.tuner.executions_per_trial != 1 else resume.EpochCheckpoint(
            run_id, trial_resume.fit_identity(sw, hp.values), training.new_data_seed(),
            (objective.name, objective.direction), found, self._stopped_before(trial, found))
        # kwargs are search()'s fit arguments: its verbose is the fit's (sweep.py, terminal.fit_verbose)
        callbacks = list(kwargs.pop("callbacks", [])) + training.callbacks_for(
            exp, run_id, echo, kwargs.get("verbose", 0), ckpt) + self.extra_callbacks()
        histories = super().run_trial(trial, *args, callbacks=callbacks, **kwargs)
        signals.check()
        tracking.check_held(run_id)  # a worker whose trial another has reopened writes no result into it
        try:  # a trial given away while it trained: the run, its checkpoint with it, goes to the trial's new worker
            self.claim(trial.trial_id)
        except Superseded as e:
            raise LeaseLost(str(e)) from None
        checkpoints.remove(run_id)  # the fit is done: from here a kill leaves the trial to run again (no half-logged
        faults.point("checkpoint_removed")  # test records are ever resumed into)
        hist = training.merged_history(histories)
        summary = training.history_summary(hist, exp.objective.name, exp.objective.direction)
        tracking.log_metrics({**summary, "train_time_s": time.perf_counter() - t0})
        trial_resume.restore_best(found, hist, objective, self._get_checkpoint_fname(trial.trial_id))
        model = self._best_epoch_model(trial)
        signals.check()  # the last point where an interrupt still ends the trial KILLED
        first_epoch = int(hp.values.get(f"{TUNER_BOOKKEEPING_PREFIX}initial_epoch", 0)) + 1
        training.evaluate_and_log(model, sw.ds, hist, first_epoch, keep_probabilities=exp.tuner.ensemble > 0)
        tracking.log_metrics({keys.METRIC_TRIAL_TIME: time.perf_counter() - t0})
        if trial.trial_id in self._pruned:
            tracking.set_tags({keys.TAG_PRUNED: str(self._pruned[trial.trial_id])})
        faults.point("after_trial_logged")
        self.claim(trial.trial_id)
        tracking.end_run(keys.FINISHED)  # the commit point (see the module docstring)
        faults.point("after_run_finished")
        return histories

    def _stopped_before(self, trial, found) -> int | None:
        """For a resumed trial of a pruned search: its last completed epoch if the oracle had already stopped it
        there (a decision the killed process saved but never acted on), asked by reporting that epoch again."""
        name = self.oracle.objective.name
        if found is None or self.sweep.exp.tuner.pruner == "none" or not found.history.get(name):
            return None
        try:
            answer = self.oracle.update_trial(trial.trial_id, {name: found.history[name][-1]}, step=found.epoch - 1)
        except ChiefGone:  # the trial trains on; its lease decides whether it is still this worker's
            return None
        if answer is None or answer.status != kt.engine.trial.TrialStatus.STOPPED:
            return None
        self._pruned[trial.trial_id] = found.epoch
        return found.epoch

    def _best_epoch_model(self, trial):
        """The trained model with Keras Tuner's best-epoch checkpoint loaded (what get_best_models returns): its
        weights loaded into the model the fit trained, rather than a model built again (load_model's clear_session,
        gc and build cost more than the training of a small trial's last seconds)."""
        model = self._models.pop(trial.trial_id, None)
        if model is None:
            return self.load_model(trial)
        model.load_weights(self._get_checkpoint_fname(trial.trial_id))
        return model

    def _end_after(self, trial, e: BaseException) -> BaseException | None:
        """End the trial's run after ``e``; return what to raise instead of ``e`` (None: ``e`` itself)."""
        if isinstance(e, (tracking.RunTakenOver, LeaseLost)):  # the trial is another worker's now: nothing more is
            tracking.let_go(tracking.active_run_id())  # written to its run, which that worker continues
            return Superseded(f"trial {trial.trial_id}: the lease expired and the trial was given to another worker")
        if isinstance(e, Superseded):  # its result is kept as a superseded attempt, never as the trial's
            _end_quietly(keys.KILLED, f"superseded: {e}", superseded=str(e))
            return None
        if isinstance(e, ChiefGone):
            _end_quietly(keys.KILLED, "the chief stopped answering; the trial runs again")
            return None
        if not isinstance(e, Exception):  # Ctrl-C, SIGTERM: the retry on resume is a new child run
            _end_quietly(keys.KILLED, "interrupted")
            return None
        if is_store_unavailable(e):
            # Not the trial's fault: it stays ongoing in the oracle and runs again on resume; its run,
            # which cannot be updated now, is marked KILLED then.
            return as_store_unavailable(e)
        if is_disk_full(e):  # not the trial's fault either: stop the sweep, the trial runs again on resume
            _end_quietly(keys.KILLED, "no space left on device")
            return DiskFullStop(f"no space left on device ({first_line(e)})")
        self.sweep.trial_failed(f"trial {trial.trial_id}: {type(e).__name__}: {e}")
        try:
            run_id = tracking.active_run_id()
            tracking.set_tags({keys.TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            tracking.log_text("".join(traceback.format_exception(e)), "error.txt")
            tracking.end_run(keys.FAILED)
        except Exception as e2:
            return as_store_unavailable(e2)
        checkpoints.remove(run_id)  # a failed trial is never resumed
        return kt.errors.FailedTrialError(f"{type(e).__name__}: {e}")


def _end_quietly(status: str, why: str, superseded: str | None = None) -> None:
    """End the active run if the store still lets us; if not, the next command marks it KILLED."""
    try:
        tags = {keys.TAG_ERROR: why[:5000]}
        if superseded:
            tags[keys.TAG_SUPERSEDED] = superseded[:5000]
        tracking.set_tags(tags)
    except Exception:
        pass
    try:  # MLflow pops the run before writing: after this, its exit hook cannot mark it FINISHED
        tracking.end_run(status)
    except Exception:
        pass


def adopt_finished_run(sw: SweepContext, trial_id: str) -> dict | None:
    """The objective of a FINISHED run of this trial, if a killed process left one the oracle never
    recorded: returned to Keras Tuner as the trial's result, so the trial is not trained twice."""
    try:
        done = [r for r in tracking.trial_runs(sw.experiment_id, sw.parent_run_id, trial_id=trial_id)
                if r.info.status == keys.FINISHED and keys.METRIC_OBJECTIVE in r.data.metrics]
    except Exception as e:
        raise as_store_unavailable(e) from e
    if not done:
        return None
    run = min(done, key=lambda r: r.info.start_time)
    value = run.data.metrics[keys.METRIC_OBJECTIVE]
    print(f"[sweep {sw.exp.name}] trial {trial_id}: run {run.info.run_id} had finished before the interruption "
          f"({sw.exp.objective.name}={value:.4f}); recorded, not trained again", flush=True)
    return {sw.exp.objective.name: value}


def make_tuner(sw: SweepContext, hyperparameters, directory: Path, hypermodel=None, verbose: int = 0,
               mixins: tuple = (), budget=None, on_trial_ended=None, oracle_mixins: tuple = (), warm_start=None,
               mirror=None):
    """The sweep's Tuner over a fresh (or reloaded) oracle.

    Args:
        verbose: the fits' verbosity (terminal.fit_verbose); nonzero also shows Keras Tuner's own messages.
        mixins: tuner mixins put before ours (a worker's, distributed/worker.py).
        budget, on_trial_ended, oracle_mixins, warm_start, mirror: for the oracle (oracle.make_oracle).
    """
    exp = sw.exp
    oracle = make_oracle(exp, hyperparameters, budget, on_trial_ended, oracle_mixins, warm_start, mirror)
    tuner_cls = type(f"Tracked{KINDS[exp.tuner.kind][1].__name__}",
                     (*mixins, TrackedTunerMixin, KINDS[exp.tuner.kind][1]), {})
    # Keras Tuner prints "Reloading Tuner from …" on every resume; the sweep's own first line says so already
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        tuner = tuner_cls(sw, oracle, hypermodel=hypermodel or training.hypermodel_for(exp, len(sw.ds.y_train)),
                          directory=str(directory), project_name=exp.name, overwrite=False,
                          executions_per_trial=exp.tuner.executions_per_trial)
    # Keras Tuner's per-trial tables ("Search: Running Trial #…", "Best … So Far"): its oracle's Display. Set here
    # as well as by search(verbose=…), since a parallel sweep's chief serves the oracle without calling search.
    oracle.verbose = 1 if verbose else 0
    return tuner
