"""Keras Tuner's own tuners and oracles, with every trial tracked as a nested MLflow run.

``make_tuner`` builds a Tuner whose ``run_trial`` opens a child run under the sweep's
parent, trains through Keras Tuner's own ``run_trial`` (so Hyperband's epochs and
checkpoints, executions per trial and the oracle all work as the library intends),
then evaluates Keras Tuner's best-epoch checkpoint on the test set and logs it.
Tuner and oracle state are written atomically (temp file + rename), so a process
killed at any instant leaves a loadable project.

Exactly once: a trial's MLflow run turning FINISHED is the commit point. A process killed
after that but before Keras Tuner recorded the trial leaves the oracle with the trial
ongoing; when the trial comes back (resume, or another worker), ``run_trial`` finds the
FINISHED run and hands its recorded objective to the oracle instead of training again.
A run killed before FINISHED is marked KILLED on resume and its trial runs again.
The ``faults.point`` calls name each boundary; tests/test_faults.py kills the process at each.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import keras_tuner as kt

from mnist_exp import tracking
from mnist_exp.model import fidelity, training
from mnist_exp.model.data import Dataset
from mnist_exp.runtime import faults, signals
from mnist_exp.runtime.terminal import hms
from mnist_exp.search.sweep_state import atomic_write_json  # its home is state.py; still importable from here
from mnist_exp.spec.experiment import TUNER_KINDS, Experiment
from mnist_exp.spec.levers import HP_DEFAULTS, TUNER_BOOKKEEPING_PREFIX, hp_value
from mnist_exp.tracking import keys
from mnist_exp.tracking.store import is_unavailable


class AtomicOracleMixin:
    """Oracle state and trial files written by rename: never half-written. With a ``budget``
    (budget.py) it starts only trials that should finish in time."""

    budget = None  # budget.Budget, set by the sweep (chief) process
    configured_epochs = 10  # training.epochs, for trials whose length Hyperband does not set

    @kt.synchronized
    def create_trial(self, tuner_id):
        refused = self.budget.refused_trial if self.budget is not None else None
        if refused and self._retry_queue and self._retry_queue[-1] == refused[0] and not self.budget.fits(refused[1]):
            # still refused: answered without taking it off the queue (waiting workers ask every second)
            self.tuner_ids.discard(tuner_id)
            return kt.engine.trial.Trial(self.hyperparameters.copy(), status=kt.engine.trial.TrialStatus.STOPPED)
        trial = super().create_trial(tuner_id)
        if self.budget is None or trial.status != kt.engine.trial.TrialStatus.RUNNING:
            return trial
        first, last = fidelity.trial_epochs(trial.hyperparameters.values, self.configured_epochs)
        if self.budget.admits(trial.trial_id, last - first):
            return trial
        # Not started: it waits at the head of the retry queue, so a resume with more budget runs it next.
        self.ongoing_trials.pop(tuner_id, None)
        self._retry_queue.append(trial.trial_id)
        self.tuner_ids.discard(tuner_id)
        self.save()
        return kt.engine.trial.Trial(self.hyperparameters.copy(), status=kt.engine.trial.TrialStatus.STOPPED)

    def save(self):
        atomic_write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        atomic_write_json(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())
        if trial.status == "COMPLETED":  # the trial file says COMPLETED, oracle.json not yet
            faults.point("after_trial_file_saved")

    def end_trial(self, trial):
        super().end_trial(trial)
        if self.budget is not None:
            if trial.status == "COMPLETED":
                self.budget.trial_ended(trial.trial_id)
            else:  # a failed trial's length says nothing about the next one's
                self.budget.trial_lost(trial.trial_id)
        # The oracle sees every trial end, whichever process ran it: the sweep's progress line is printed here.
        hook = getattr(self, "on_trial_ended", None)
        if hook:
            hook(self.trials[trial.trial_id])

    # A chief's oracle, called from its gRPC threads (chief.py): each under Keras Tuner's per-oracle lock, so a
    # check of who holds a trial and what follows from it cannot interleave with another worker's call.

    @kt.synchronized
    def holds(self, tuner_id: str, trial_id: str) -> bool:
        trial = self.ongoing_trials.get(tuner_id)
        return trial is not None and trial.trial_id == trial_id

    @kt.synchronized
    def revoke(self, tuner_id: str):
        """A silent worker's lease is over: its trial goes to the retry queue (the next worker to ask runs
        it) and it no longer counts as a tuner the search waits for. Returns the trial, or None."""
        self.tuner_ids.discard(tuner_id)
        trial = self.ongoing_trials.pop(tuner_id, None)
        if trial is not None:
            if self.budget is not None:
                self.budget.trial_lost(trial.trial_id)
            self._retry_queue.append(trial.trial_id)
            self.save()
        return trial

    @kt.synchronized
    def create_trial_for(self, tuner_id: str):
        """create_trial, but a worker is told to wait (IDLE) instead of to stop while other workers still
        hold trials: one of them may go silent and its trial come back to the queue."""
        trial = self.create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.STOPPED and self.ongoing_trials:
            self.tuner_ids.add(tuner_id)
            return kt.engine.trial.Trial(self.hyperparameters.copy(), status=kt.engine.trial.TrialStatus.IDLE)
        return trial

    @kt.synchronized
    def update_trial_from(self, tuner_id: str, trial_id: str, metrics, step=0):
        if not self.holds(tuner_id, trial_id):
            return None
        return self.update_trial(trial_id, metrics, step=step)

    @kt.synchronized
    def end_trial_from(self, tuner_id: str, trial) -> bool:
        if not self.holds(tuner_id, trial.trial_id):
            return False
        self.end_trial(trial)
        return True


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


class TrackedTunerMixin:
    def __init__(self, sweep: SweepContext, oracle, **kwargs):
        self.sweep = sweep
        # Called on kt.Tuner directly: the concrete tuners' __init__ only build their oracle,
        # which we build ourselves (atomic saves). Their run_trial etc. still apply by MRO.
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        atomic_write_json(self._get_tuner_fname(), self.get_state())

    # From here to on_trial_end a Ctrl-C / SIGTERM is taken at safe points only (signals.py): before
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

    def claim(self, trial_id: str) -> None:
        """Raise Superseded if this process may no longer commit the trial (a worker asks its chief)."""

    def extra_callbacks(self) -> list:
        return []

    def run_trial(self, trial, *args, **kwargs):
        sw, exp, hp = self.sweep, self.sweep.exp, trial.hyperparameters
        for name in HP_DEFAULTS:  # pin what the space leaves out to the baseline, so params are complete
            hp_value(hp, name)
        adopted = adopt_finished_run(sw, trial.trial_id)
        if adopted is not None:
            return adopted
        tags = {
            keys.TAG_KIND: "trial",
            keys.TAG_SWEEP: exp.name,
            keys.TAG_TRIAL: trial.trial_id,
            keys.TAG_TUNER_ID: self.tuner_id,
            **tracking.environment_tags(),
        }
        try:
            run_id = tracking.start_run(sw.experiment_id, f"{exp.name}-{trial.trial_id}", tags, sw.parent_run_id)
        except Exception as e:
            raise _unavailable_or(e) from e
        faults.point("trial_started")
        t0 = time.perf_counter()
        try:
            signals.check()
            tracking.log_params({**hp.values, **exp.as_params(), **fidelity.logged(hp.values, exp.training.epochs)})
            tracking.log_dataset(sw.ds)
            echo = f"[sweep {exp.name}{' ' + sw.worker if sw.worker else ''}] trial {trial.trial_id}"
            # kwargs are search()'s fit arguments: its verbose is the fit's (sweep.py, progress.fit_verbose)
            callbacks = list(kwargs.pop("callbacks", [])) + training.callbacks_for(exp, run_id, echo,
                                                                                    kwargs.get("verbose", 0))
            callbacks += self.extra_callbacks()
            histories = super().run_trial(trial, *args, callbacks=callbacks, **kwargs)
            signals.check()
            hist = training.merged_history(histories)
            summary = training.history_summary(hist, exp.objective.name, exp.objective.direction)
            tracking.log_metrics({**summary, "train_time_s": time.perf_counter() - t0})
            model = self.load_model(trial)  # Keras Tuner's best-epoch checkpoint: what get_best_models returns
            signals.check()  # the last point where an interrupt still ends the trial KILLED
            first_epoch = int(hp.values.get(f"{TUNER_BOOKKEEPING_PREFIX}initial_epoch", 0)) + 1
            training.evaluate_and_log(model, sw.ds, hist, first_epoch)
            tracking.log_metrics({"trial_time_s": time.perf_counter() - t0})
            faults.point("after_trial_logged")
            self.claim(trial.trial_id)
            tracking.end_run(keys.FINISHED)  # the commit point (see the module docstring)
            faults.point("after_run_finished")
            return histories
        except Superseded as e:  # its result is kept as a superseded attempt, never as the trial's
            _end_quietly(keys.KILLED, f"superseded: {e}", superseded=str(e))
            raise
        except ChiefGone:
            _end_quietly(keys.KILLED, "the chief stopped answering; the trial runs again")
            raise
        except Exception as e:
            if tracking_unavailable(e):
                # Not the trial's fault: it stays ongoing in the oracle and runs again on resume; its run,
                # which cannot be updated now, is marked KILLED then.
                raise _unavailable_or(e) from e
            if disk_full(e):  # not the trial's fault either: stop the sweep, the trial runs again on resume
                _end_quietly(keys.KILLED, "no space left on device")
                raise DiskFullStop(f"no space left on device ({_first_line(e)})") from e
            text = traceback.format_exc()
            sw.first_error = sw.first_error or f"trial {trial.trial_id}: {type(e).__name__}: {e}"
            try:
                tracking.set_tags({keys.TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]})
                tracking.log_text(text, "error.txt")
                tracking.end_run(keys.FAILED)
            except Exception as e2:
                raise _unavailable_or(e2) from e
            raise kt.errors.FailedTrialError(f"{type(e).__name__}: {e}") from e
        except BaseException:  # Ctrl-C, SIGTERM: the retry on resume is a new child run
            _end_quietly(keys.KILLED, "interrupted")
            raise


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


class StoreUnavailable(kt.errors.FatalError):
    """Raised out of a trial when the tracking store cannot be reached after MLflow's retries.
    Keras Tuner re-raises FatalError from search() instead of marking the trial failed."""


class ChiefGone(kt.errors.FatalError):
    """A worker's chief stopped answering: the worker stops; the chief gives the trial to another."""


class Superseded(Exception):
    """The chief refused a worker's report: the trial's lease had expired and another worker has it.
    Not fatal: the worker goes on with its next trial."""


class DiskFullStop(kt.errors.FatalError):
    """Raised out of a trial when a write found no space left (checkpoint, artifact or store)."""


def disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain, or sqlite's "database or disk is full"."""
    import errno

    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "database or disk is full" in text or "No space left on device" in text or "[Errno 28]" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def tracking_unavailable(e: BaseException) -> bool:
    return is_unavailable(e)


def _unavailable_or(e: Exception) -> Exception:
    if isinstance(e, StoreUnavailable) or not tracking_unavailable(e):
        return e
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return StoreUnavailable(f"the tracking store stopped answering: {first[:300]}")


def adopt_finished_run(sw: SweepContext, trial_id: str) -> dict | None:
    """The objective of a FINISHED run of this trial, if a killed process left one the oracle never
    recorded: returned to Keras Tuner as the trial's result, so the trial is not trained twice."""
    try:
        done = [r for r in tracking.trial_runs(sw.experiment_id, sw.parent_run_id, trial_id=trial_id)
                if r.info.status == keys.FINISHED and "objective" in r.data.metrics]
    except Exception as e:
        raise _unavailable_or(e) from e
    if not done:
        return None
    run = min(done, key=lambda r: r.info.start_time)
    value = run.data.metrics["objective"]
    print(f"[sweep {sw.exp.name}] trial {trial_id}: run {run.info.run_id} had finished before the interruption "
          f"({sw.exp.objective.name}={value:.4f}); recorded, not trained again", flush=True)
    return {sw.exp.objective.name: value}


def requeue_orphans(oracle, ids: list[str]) -> list[str]:
    """Trials that no tuner will finish, into Keras Tuner's retry queue so the next tuner to ask runs
    them: those left running by tuner ids that will not ask again (a sweep resumed with fewer parallel
    workers), and those a kill -9 inside ``create_trial`` left RUNNING in their trial file but not in
    oracle.json (Keras Tuner would count them against max_trials and never run them)."""
    orphans = [tid for tid in list(oracle.ongoing_trials) if tid not in ids]
    for tid in orphans:
        oracle._retry_queue.append(oracle.ongoing_trials.pop(tid).trial_id)
    held = {t.trial_id for t in oracle.ongoing_trials.values()} | set(oracle._retry_queue)
    for trial_id, t in oracle.trials.items():
        if t.status == "RUNNING" and trial_id not in held:
            oracle._retry_queue.append(trial_id)
            if trial_id not in oracle.start_order:
                oracle.start_order.append(trial_id)
            orphans.append(trial_id)
    return orphans


def planned_trials(oracle) -> int:
    if isinstance(oracle, kt.oracles.HyperbandOracle):
        per_iteration = sum(
            oracle._get_size(b, r) for b in range(oracle._get_num_brackets()) for r in range(oracle._get_num_rounds(b))
        )
        return per_iteration * oracle.hyperband_iterations
    return oracle.max_trials


def progress_line(oracle, trial, sw: SweepContext) -> str:
    ended = [t for t in oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID")]
    total = max(planned_trials(oracle), len(ended))
    name = sw.exp.objective.name
    result = f"{name}={trial.score:.4f}" if trial.status == "COMPLETED" and trial.score is not None else trial.status
    best = [t for t in oracle.get_best_trials(1) if t.score is not None]
    best_txt = f"best {best[0].score:.4f} (trial {best[0].trial_id})" if best else "best -"
    elapsed = time.time() - sw.started
    # Rate over this invocation: with parallel trials it already counts the trials running side by side.
    eta = elapsed / sw.ended_here * max(total - len(ended), 0) if sw.ended_here else 0.0
    budget = getattr(oracle, "budget", None)
    left = f" | budget left {hms(max(0.0, budget.left()))}" if budget is not None else ""
    if budget is not None:
        eta = min(eta, max(0.0, budget.left()))
    return (
        f"[sweep {sw.exp.name}] trial {len(ended)}/{total} ({trial.trial_id}): {result} | {best_txt} | "
        f"elapsed {hms(elapsed)} | ETA {hms(eta)}{left}"
    )


def print_progress(oracle, sw: SweepContext):
    """The oracle's on_trial_ended hook."""

    def hook(trial):
        sw.ended_here += 1
        print(progress_line(oracle, trial, sw), flush=True)

    return hook


KINDS = {
    "random": (kt.oracles.RandomSearchOracle, kt.Tuner),
    "bayesian": (kt.oracles.BayesianOptimizationOracle, kt.Tuner),
    "grid": (kt.oracles.GridSearchOracle, kt.Tuner),
    "hyperband": (kt.oracles.HyperbandOracle, kt.Hyperband),
}


assert set(KINDS) == set(TUNER_KINDS), "a tuner kind is one entry here and its name in config.TUNER_KINDS"


def make_tuner(sw: SweepContext, hyperparameters, directory: Path, hypermodel=None, verbose: int = 0,
               mixins: tuple = ()):
    """``verbose``: the fits' verbosity (progress.fit_verbose); nonzero also shows Keras Tuner's own messages.
    ``mixins``: put before ours (a worker's, worker.py)."""
    exp = sw.exp
    oracle_cls, tuner_cls = KINDS[exp.tuner.kind]
    oracle_kwargs = dict(
        objective=kt.Objective(exp.objective.name, exp.objective.direction),
        seed=exp.seed,
        hyperparameters=hyperparameters,
        tune_new_entries=False,
        allow_new_entries=True,
        max_consecutive_failed_trials=exp.tuner.max_consecutive_failed_trials,
    )
    if exp.tuner.kind == "hyperband":
        oracle_kwargs.update(
            max_epochs=exp.tuner.max_epochs, factor=exp.tuner.factor, hyperband_iterations=exp.tuner.hyperband_iterations
        )
    else:
        oracle_kwargs["max_trials"] = exp.tuner.max_trials
    oracle = type(f"Atomic{oracle_cls.__name__}", (AtomicOracleMixin, oracle_cls), {})(**oracle_kwargs)
    tuner_cls = type(f"Tracked{tuner_cls.__name__}", (*mixins, TrackedTunerMixin, tuner_cls), {})
    # Keras Tuner prints "Reloading Tuner from …" on every resume; the sweep's own first line says so already
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        tuner = tuner_cls(
            sw,
            oracle,
            hypermodel=hypermodel or training.hypermodel_for(exp, len(sw.ds.y_train)),
            directory=str(directory),
            project_name=exp.name,
            overwrite=False,
            executions_per_trial=exp.tuner.executions_per_trial,
        )
    # Keras Tuner's per-trial tables ("Search: Running Trial #…", "Best … So Far"): its oracle's Display. Set here
    # as well as by search(verbose=…), since a parallel sweep's chief serves the oracle without calling search.
    oracle.verbose = 1 if verbose else 0
    return tuner
