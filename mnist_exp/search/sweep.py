"""``mnist-exp sweep``: one parent MLflow run per sweep, one nested child run per trial, resumable.

State lives on disk and in MLflow, never only in this process: the Keras Tuner project
(``<store>/tuner/<sweep>/``) holds the oracle, and ``mnist_exp_sweep.json`` beside it
holds the parent run id and the sweep's identity. Running the same command again resumes. On a tracking
server that folder is a cache of the copy kept with the parent run (state_mirror.py): the same command
resumes the sweep on any machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_exp import tracking
from mnist_exp.model import training
from mnist_exp.model.data import Dataset
from mnist_exp.results import compare, describe, importance
from mnist_exp.runtime import faults, signals, terminal
from mnist_exp.runtime.errors import ConfigError, DiskFull, SweepError, TrackingUnavailable
from mnist_exp.search import state_mirror, sweep_budget, sweep_state, trial_resume
from mnist_exp.search.distributed import oracle_chief, wire, worker_processes
from mnist_exp.search.distributed.trial_leases import TrialLeaseOracleMixin
from mnist_exp.search.distributed.worker_processes import ChiefEnvironment
from mnist_exp.search.oracle import requeue_orphans
from mnist_exp.search.refit import refit_best
from mnist_exp.search.sweep_state import STATE_FILE, identity, tuner_dir
from mnist_exp.search.tracked_tuner import SweepContext, make_tuner
from mnist_exp.search.trial_failures import DiskFullStop, StoreUnavailable, first_line, is_disk_full, is_store_unavailable
from mnist_exp.search import warm_start
from mnist_exp.search.trial_progress import progress_printer, start_line
from mnist_exp.spec.experiment import Experiment
from mnist_exp.spec.space import SearchSpace
from mnist_exp.tracking import keys, store, ui_view


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    completed: int
    failed: int
    best_trial_id: str | None
    best_value: float | None


def run_sweep(exp: Experiment, space: SearchSpace, ds: Dataset, uri: str, overwrite: bool = False,
              verbose: bool = False, hypermodel=None, serve: str | None = None, local_workers: int | None = None,
              lease_s: float = 30.0, tls=None) -> SweepResult:
    """Run (or resume) the sweep. ``hypermodel`` replaces the CNN HyperModel (tests inject faults with it).
    Prints one line per epoch and per trial; ``verbose`` adds Keras's bars and Keras Tuner's tables (terminal.py).
    ``serve`` (HOST:PORT): be a chief that workers on other machines join (oracle_chief.py), with ``local_workers``
    of its own (default tuner.parallel_trials); trials of a silent worker are re-run after ``lease_s``; ``tls``
    (wire.ServerTLS): serve it over TLS."""
    parallel = exp.tuner.parallel_trials > 1 or serve is not None
    if hypermodel is not None and parallel:  # workers build their own CNN; nothing else crosses
        raise ValueError("a custom hypermodel cannot reach parallel workers; use tuner.parallel_trials=1")
    if exp.objective.name.startswith("val_") and not len(ds.y_val):
        raise ConfigError(f"{exp.path}: data.validation_split: must be > 0 for the objective {exp.objective.name}")
    project = tuner_dir(uri) / exp.name
    # On a tracking server the state kept with the sweep's parent run is the truth, the folder its cache.
    remote = store.is_remote(uri)
    pointer = state_mirror.restore(uri, exp.mlflow_experiment, exp.name, project) if remote and not overwrite else None
    # Read before anything is written: a state file this release cannot read stops here (sweep_state.py).
    prior = None if overwrite else sweep_state.read(project / STATE_FILE)
    training.set_seed_and_threads(exp)
    if exp.tuner.budget is not None and prior is None:  # a new sweep: can its budget hold a search at all?
        sweep_budget.check(exp, space, ds)
    experiment_id = tracking.configure(uri, exp.mlflow_experiment)
    ident = identity(exp, space)
    if overwrite and project.exists():
        _retire(project, uri, experiment_id, exp.name)
    if prior is not None:
        warm = warm_start.WarmStart.from_state(prior)
    elif warm_start.sweep_names(exp):
        warm = warm_start.choose(exp, space, uri, (ds.fingerprint, ds.test_fingerprint))
    else:
        warm = warm_start.WarmStart()
    parent_run_id, resumed = _open_parent(exp, space, ds, experiment_id, project, ident, prior, warm)
    mirror = state_mirror.StateMirror(parent_run_id, project, pointer) if remote else None

    fit_verbose = terminal.fit_verbose(verbose)
    # The chief of a parallel sweep trains nothing: its workers load the data themselves.
    sw = SweepContext(exp, ds, experiment_id, parent_run_id, arrays=() if parallel else training.fit_arrays(ds))
    budget = sweep_budget.make(exp, ds, (experiment_id, parent_run_id) if resumed else None)
    # Keras Tuner reads chief/worker from the environment when the Tuner is built
    with ChiefEnvironment("127.0.0.1", 0) if parallel else contextlib.nullcontext():
        tuner = make_tuner(sw, space.to_hyperparameters(fixed=exp.hp), project.parent, hypermodel,
                           verbose=fit_verbose, budget=budget, on_trial_ended=progress_printer(sw),
                           oracle_mixins=(TrialLeaseOracleMixin,) if parallel else (), warm_start=warm, mirror=mirror)
    print(start_line(exp, ds, tuner.oracle, parent_run_id, resumed), flush=True)
    if parallel:
        return _finishing(exp, parent_run_id, lambda: _run_parallel(tuner, sw, uri, fit_verbose, project, serve,
                                                                    local_workers, lease_s, mirror, tls))
    requeue_orphans(tuner.oracle, [tuner.tuner_id])
    crashed = _search_here(tuner, sw, fit_verbose)
    return _finishing(exp, parent_run_id, lambda: _finish(tuner, sw, crashed))


def _search_here(tuner, sw, fit_verbose: int) -> str | None:
    """Run the search in this process; returns why it stopped early (Keras Tuner's failure limit) or None."""
    exp, parent_run_id = sw.exp, sw.parent_run_id
    x, y, val = sw.arrays
    try:
        with signals.handled():
            tuner.search(x, y, validation_data=val, epochs=exp.training.epochs, verbose=fit_verbose)
    except StoreUnavailable as e:
        raise _stop_for_lost_store(exp, parent_run_id, str(e)) from None
    except DiskFullStop as e:
        raise _stop_for_full_disk(exp, parent_run_id, str(e)) from None
    except KeyboardInterrupt:
        tracking.set_status(parent_run_id, keys.KILLED)
        print(f"sweep {exp.name} interrupted: finished trials are kept; run the same command again to resume",
              flush=True)
        raise
    except RuntimeError as e:  # Keras Tuner's "Number of consecutive failures exceeded the limit"
        return str(e).splitlines()[0]
    except Exception as e:
        if is_disk_full(e):  # writing Keras Tuner's state between trials
            raise _stop_for_full_disk(exp, parent_run_id, f"no space left on device ({first_line(e)})") from None
        tracking.set_status(parent_run_id, keys.FAILED)
        tracking.set_tags({keys.TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]}, run_id=parent_run_id)
        raise
    return None


def _finishing(exp, parent_run_id: str, step):
    """Run the sweep's last step; a store that stopped answering there stops the sweep cleanly too."""
    try:
        return step()
    except Exception as e:
        if is_store_unavailable(e):
            raise _stop_for_lost_store(exp, parent_run_id, first_line(e)) from None
        if isinstance(e, DiskFullStop) or is_disk_full(e):
            raise _stop_for_full_disk(exp, parent_run_id, f"no space left on device ({first_line(e)})") from None
        raise


def _stop_for_full_disk(exp, parent_run_id: str, why: str) -> DiskFull:
    """Mark the parent KILLED for a full disk; returns the error the sweep stops with."""
    try:
        tracking.set_tags({keys.TAG_ERROR: why[:5000]}, run_id=parent_run_id)
        tracking.set_status(parent_run_id, keys.KILLED)
    except Exception:  # the store's own disk is full: the next command marks the run KILLED
        pass
    return DiskFull(f"sweep {exp.name} stopped: {why}; finished trials are kept: free space under "
                    f"the store and run the same command again to resume")


def _stop_for_lost_store(exp, parent_run_id: str, why: str) -> TrackingUnavailable:
    """The tracking store went away for longer than MLflow's retries: stop, keep what is recorded."""
    try:
        tracking.set_status(parent_run_id, keys.KILLED)
    except Exception:  # still gone: the next command marks it (the run's process is dead by then)
        pass
    return TrackingUnavailable(f"sweep {exp.name} stopped: {why}; finished trials are kept, the trial in progress "
                               "runs again: run the same command again once the store answers")


def _run_parallel(tuner, sw, uri: str, fit_verbose: int, project: Path, serve: str | None,
                  local_workers: int | None, lease_s: float, mirror=None, tls=None) -> SweepResult:
    """Chief: serve the oracle (oracle_chief.py) to local worker processes and, with ``serve``, to workers
    elsewhere, until the oracle is done (or, without ``serve``, until the local workers have all stopped)."""
    import secrets

    exp = sw.exp
    n = exp.tuner.parallel_trials if local_workers is None else local_workers
    ids = worker_processes.worker_ids(n)
    if serve:
        host, port = wire.parse_address(serve, "--serve")
        token = wire.token_from_env("--serve")
    else:
        host, port, token = "127.0.0.1", 0, secrets.token_hex(16)  # local workers get it in their environment
    # Trials held by remote workers when the chief stopped wait one lease for them (oracle_chief.py); others requeue.
    requeue_orphans(tuner.oracle, ids + (list(tuner.oracle.ongoing_trials) if serve else []))
    threads = worker_processes.threads_per_worker(max(n, 1), exp.training.threads)
    chief = oracle_chief.Chief(tuner.oracle, sw, uri, _description(sw, uri, project), token, lease_s)
    port = chief.start(host, port, tls)
    address = wire.target(host, port)
    print(f"chief serving the oracle on {address}; {n} {'local ' if serve else ''}workers"
          f"{' (' + ', '.join(ids) + ')' if ids else ''}"
          f"{', ' + str(threads) + ' thread(s) each' if n else ''}", flush=True)
    ca = " --tls-ca <its CA certificate>" if tls else ""
    if serve and store.is_remote(uri):
        print(f"workers: {wire.TOKEN_ENV}=<the token> mnist-exp worker --chief {address}{ca} [--data PATH]", flush=True)
    elif serve:
        print(f"workers: {wire.TOKEN_ENV}=<the token> mnist-exp worker --chief {address}{ca} --tracking-uri {uri} "
              "(a store on this machine: workers elsewhere need a tracking server, see mnist-exp server)", flush=True)
    local = wire.target("127.0.0.1" if host in ("0.0.0.0", "::") or tls else host, chief.local_port)
    procs, codes = {}, {}
    try:
        with signals.handled():
            procs = worker_processes.launch_workers(uri, local, token, ids, threads, verbose=bool(fit_verbose))
            waiting_said = False
            while True:
                worker_processes.poll_workers(procs, codes)
                if mirror is not None and mirror.failure:  # the server did not take the oracle's state
                    raise StoreUnavailable(mirror.failure)
                local_done = len(codes) == len(procs)
                if local_done and (chief.done() or not serve):
                    break
                if serve and local_done and not waiting_said and not chief.live_workers():
                    print(f"chief {address}: waiting for workers", flush=True)
                    waiting_said = True
                time.sleep(0.5)
    except KeyboardInterrupt:
        chief.announce_stop()  # remote workers hear it with their next renewal
        worker_processes.stop_workers(procs)
        chief.stop(grace_s=2 * chief.renew_s if serve else 0)
        tracking.set_status(sw.parent_run_id, keys.KILLED)
        print(f"sweep {exp.name} interrupted: finished trials are kept; run the same command again to resume",
              flush=True)
        raise
    finally:
        chief.stop()
    bad = {tid: code for tid, code in codes.items() if code}
    crashed = f"worker(s) exited with an error: {bad}" if bad else None
    return _finish(tuner, sw, crashed)


def _description(sw, uri: str, project: Path) -> dict:
    """What a worker anywhere needs to run this sweep's trials (worker.py): the sweep's state as written
    to its state file, the search space's text and where the runs go."""
    desc = sweep_state.read(project / STATE_FILE)
    space = sw.exp.search_space
    return {**desc, "space_yaml": Path(space).read_text(encoding="utf-8") if space else None,
            "space_name": Path(space).name if space else None,
            "tracking_uri": uri if store.is_remote(uri) else None, "store": uri}


def _open_parent(exp, space, ds, experiment_id, project: Path, ident: dict, prior: dict | None,
                 warm) -> tuple[str, bool]:
    """``prior``: the sweep's state as sweep_state.read found it (None: a new sweep); ``warm``: what it starts
    from (warm_start.WarmStart)."""
    state_path = project / STATE_FILE
    if prior is not None:
        changed = sweep_state.changed_sections(prior, exp, space)
        if changed:
            raise ConfigError(
                f"{exp.path}: sweep '{exp.name}' exists with a different {', '.join(changed)}; "
                "resume it unchanged, or start afresh with --overwrite or a new --name"
            )
        parent = prior["parent_run_id"]
        try:
            tracking.get_run(parent)
        except Exception:
            raise ConfigError(
                f"{state_path}: parent run {parent} is not in the tracking store; use --overwrite or a new --name"
            ) from None
        killed = tracking.kill_stale_children(experiment_id, parent)
        if killed:
            print(f"marked {len(killed)} interrupted trial run(s) KILLED; their trials are retried", flush=True)
        tracking.set_status(parent, keys.RUNNING)
        # A format-1 state is migrated here, by rename: from now on only this release (or a later one) reads it.
        sweep_state.write(state_path, exp, ds, parent, experiment_id, ident, prior.get("created"), warm.to_state())
        return parent, True
    if project.exists() and any(project.iterdir()):  # Keras Tuner files without our state: not ours to reuse
        raise ConfigError(f"{project}: exists but holds no {STATE_FILE}; use --overwrite or a new --name")
    # An empty folder is what a kill -9 between its creation and the state file leaves: start afresh.
    _supersede_parents(experiment_id, exp.name, "a new sweep of this name started")
    tags = {keys.TAG_KIND: "sweep", keys.TAG_SWEEP: exp.name, keys.TAG_TUNER: exp.tuner.kind,
            keys.TAG_OBJECTIVE: f"{exp.objective.direction}:{exp.objective.name}", **tracking.environment_tags(),
            **({keys.TAG_WARM_START: ",".join(warm_start.sweep_names(exp))} if warm_start.sweep_names(exp) else {})}
    parent = tracking.create_run(experiment_id, exp.name, tags)
    faults.point("after_parent_created")
    try:
        tuner_params = {f"tuner.{k}": v for k, v in dataclasses.asdict(exp.tuner).items()}
        tracking.log_params_to(parent, {**tuner_params, **exp.as_params(), "objective": exp.objective.name,
                                        "objective.direction": exp.objective.direction,
                                        "search_space": Path(space.path).name})
        tracking.log_dataset(ds, run_id=parent)
        tracking.set_tags({keys.TAG_NOTE: describe.sweep_note(exp, ds, experiment_id, space)}, run_id=parent)
        for f in (exp.path, exp.search_space):
            if f:
                tracking.log_artifact(f, "config", run_id=parent)
        project.mkdir(parents=True, exist_ok=True)
        sweep_state.write(state_path, exp, ds, parent, experiment_id, ident, time.time(), warm.to_state())
    except BaseException:
        tracking.set_status(parent, keys.FAILED)
        raise
    return parent, False


def _retire(project: Path, uri: str, experiment_id: str, name: str) -> None:
    """--overwrite: mark the old parent run and its trials superseded (ended, never deleted: MLflow keeps
    them as history) and remove this sweep's own Keras Tuner folder, and nothing else."""
    root = tuner_dir(uri).resolve()
    target = project.resolve()
    if target.parent != root or target.name != name or project.is_symlink():
        raise ConfigError(f"{project}: --overwrite removes only a sweep's own folder directly inside {root}")
    # The state file goes first: a kill -9 from here on leaves a folder that no run resumes (the next sweep
    # asks for --overwrite again), never a resumable sweep whose parent is already marked superseded.
    (target / sweep_state.STATE_FILE).unlink(missing_ok=True)
    _supersede_parents(experiment_id, name, "replaced by --overwrite")
    shutil.rmtree(target)


def _supersede_parents(experiment_id: str, name: str, why: str) -> list[str]:
    """Tag every earlier parent run of this sweep name, and its trial runs, mnist_exp.superseded; end any
    still marked RUNNING as KILLED. Nothing is deleted."""
    done = []
    parents = tracking.find_runs([experiment_id], f"tags.`{keys.TAG_KIND}` = 'sweep' and "
                                                  f"tags.`{keys.TAG_SWEEP}` = '{name}'")
    for parent in parents:
        if parent.data.tags.get(keys.TAG_SUPERSEDED):
            continue
        rid = parent.info.run_id
        # The parent is tagged last: it is what marks the whole sweep done, so a kill -9 in this loop leaves the
        # parent untagged and the next call finishes the job.
        for run in [*tracking.trial_runs(experiment_id, rid), *tracking.refit_runs(experiment_id, rid), parent]:
            tracking.set_tags({keys.TAG_SUPERSEDED: why}, run_id=run.info.run_id)
            if run.info.status == keys.RUNNING:
                tracking.set_tags({keys.TAG_ERROR: f"superseded: {why}"}, run_id=run.info.run_id)
                tracking.set_status(run.info.run_id, keys.KILLED)
        done.append(rid)
    return done


def _finish(tuner, sw, crashed: str | None) -> SweepResult:
    exp, parent = sw.exp, sw.parent_run_id
    trials = list(tuner.oracle.trials.values())
    completed = [t for t in trials if t.status == "COMPLETED"]
    failed = [t for t in trials if t.status in ("FAILED", "INVALID")]
    table = compare.trials_table(tracking.trial_runs(sw.experiment_id, parent))
    compare.log_sweep_summary(table, exp, parent)
    best = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED" and t.score is not None]
    if best:
        tracking.set_tags({keys.TAG_BEST_TRIAL: best[0].trial_id}, run_id=parent)
        tracking.log_metrics({f"best_{exp.objective.name}": best[0].score, "trials_completed": len(completed),
                              "trials_failed": len(failed), **_result(table, best[0])}, run_id=parent)
    note = describe.sweep_note(exp, sw.ds, sw.experiment_id, trials=table.to_dict("records"),
                               best_trial_id=best[0].trial_id if best else None)
    tracking.set_tags({keys.TAG_NOTE: note + importance.after_sweep(
        table, exp, parent, ui_view.searched_from(tuner.oracle.hyperparameters))},
                      run_id=parent)
    if not completed:
        first = sw.first_error or _first_message(failed) or _first_run_error(table) or crashed or "no trial ran"
        tracking.set_tags({keys.TAG_ERROR: first[:5000]}, run_id=parent)
        tracking.set_status(parent, keys.FAILED)
        raise SweepError(f"sweep {exp.name}: every trial failed ({len(failed)}); first error: {first}")
    tracking.set_status(parent, keys.FINISHED)
    trial_resume.remove_leftovers(sw)

    ui_view.after_sweep(sw, tuner.oracle.hyperparameters)  # the MLflow UI's saved view; a failure is one warning line
    if crashed:
        print(f"sweep {exp.name} stopped early: {crashed}", flush=True)
    print(compare.summary_text(table, exp, parent), flush=True)
    budget = tuner.oracle.budget
    if budget is not None and budget.refused:
        print(f"sweep {exp.name}: {budget.refused}; the rest of the search waits: run the same command again "
              "(with a larger --budget) to go on", flush=True)
        tracking.set_tags({keys.TAG_BUDGET_STOP: budget.refused}, run_id=parent)
    elif keys.TAG_BUDGET_STOP in tracking.get_run(parent).data.tags:  # a resume that finished what a budget stopped
        tracking.delete_tag(parent, keys.TAG_BUDGET_STOP)
    if exp.tuner.refit:
        refit_best(sw, tuner.oracle, tracking.tracking_uri())
    return SweepResult(exp.name, parent, len(completed), len(failed),
                       best[0].trial_id if best else None, best[0].score if best else None)


def _result(table, best) -> dict:
    """The sweep's own row in the UI's saved view: its best trial's objective, test accuracy and epochs (a refit
    replaces the test accuracy with its own, refit.py)."""
    rows = table[(table["trial_id"] == best.trial_id) & (table["status"] == keys.FINISHED)] if not table.empty else table
    out = {keys.METRIC_OBJECTIVE: best.score}
    if not rows.empty:
        first = rows.iloc[0]  # the run a resume adopts (tracked_tuner.py)
        out.update({k: float(first[k]) for k in (keys.METRIC_TEST_ACCURACY, keys.METRIC_EPOCHS_RUN)
                    if k in first and first[k] == first[k]})
    return out


def _first_run_error(table) -> str | None:
    """A worker's error, as its trial run recorded it (a chief never sees the exception)."""
    if table.empty or "error" not in table:
        return None
    errors = table.loc[table["status"] == keys.FAILED, ["trial_id", "error"]].dropna()
    return f"trial {errors.iloc[0]['trial_id']}: {errors.iloc[0]['error']}" if len(errors) else None


def _first_message(failed) -> str | None:
    for t in failed:
        if t.message:
            lines = [ln for ln in t.message.strip().splitlines() if ln.strip()]
            return lines[-1] if lines else None
    return None
