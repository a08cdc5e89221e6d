"""``mnist-exp promote``: register a sweep's best trial and move the champion alias to it, guarded.

The best trial is chosen by the sweep's objective (a validation metric); the test
set only decides whether it may replace the champion, and only when both were
tested on the same data (same test fingerprint).

Promotions are serialised by a lock kept in the model registry itself, so it holds for
any store (sqlite, or a tracking server shared by several machines): the registered model
``<model>.promotion-lock``. Creating a registered model is an atomic test-and-set on every
backend (the registry's unique name: exactly one of several concurrent creates succeeds, the
others get RESOURCE_ALREADY_EXISTS), and its tags, written in the same request, name the
holder (pid, host, process start, time, a random token). Inside the lock the champion is read,
judged, the version registered with its tags and description, and only then is the alias
moved, after checking that the lock is still ours and the alias still where it was judged;
the alias is read back afterwards. A waiter polls with backoff for ``LOCK_WAIT_S`` and then
fails naming the holder. A lock left by a crashed promotion is broken, with one line: at once
when its holder was on this machine and is gone, after ``LOCK_TTL_S`` when it was elsewhere.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from mnist_exp import tracking
from mnist_exp._version import __version__
from mnist_exp.results import compare, describe, ensemble
from mnist_exp.runtime.errors import ConfigError, PermissionRefused, PromotionRefused
from mnist_exp.spec import names
from mnist_exp.spec.levers import HP_DEFAULTS
from mnist_exp.tracking import keys, readers, team
from mnist_exp.tracking.registry_lock import Busy, RegistryLock


@dataclass(frozen=True)
class Candidate:
    sweep: str
    trial_id: str
    run_id: str
    model_uri: str
    objective: str
    objective_value: float
    test_accuracy: float
    test_fingerprint: str
    tags: dict
    parent_run_id: str = ""  # the sweep's parent run


def best_candidate(experiment_id: str, sweep: str | None) -> Candidate:
    parents = compare.latest_parents(readers.MLflowRuns(), experiment_id, [sweep] if sweep else None)
    if not parents:
        raise ConfigError(f"no sweep named {sweep}" if sweep else "no sweeps in the store; run mnist-exp sweep first")
    parent = max(parents.values(), key=lambda r: r.info.start_time)
    name = parent.data.tags[keys.TAG_SWEEP]
    objective, maximize = compare.sweep_objectives([parent])[name]
    finished = [r for r in tracking.trial_runs(experiment_id, parent.info.run_id)
                if r.info.status == keys.FINISHED and "objective" in r.data.metrics
                and keys.TAG_MODEL_URI in r.data.tags and keys.TAG_GC not in r.data.tags]
    if not finished:
        raise ConfigError(f"sweep {name} has no finished trial with a logged model")
    sign = 1 if maximize else -1
    # A pruned trial's objective is its best epoch before it was stopped: it wins only if nothing ran its course.
    best = max(finished, key=lambda r: (keys.TAG_PRUNED not in r.data.tags, sign * r.data.metrics["objective"],
                                        -r.info.start_time))
    # The sweep's own refit (refit.py) when there is one: chosen on validation by the sweep's oracle (which breaks
    # ties and averages executions its own way), then trained on every training digit: that model is the candidate.
    refit_id = parent.data.tags.get(keys.TAG_REFIT_RUN_ID)
    refits = [r for r in tracking.refit_runs(experiment_id, parent.info.run_id)
              if r.info.run_id == refit_id and r.info.status == keys.FINISHED
              and keys.TAG_MODEL_URI in r.data.tags and "test_accuracy" in r.data.metrics]
    if refits:
        [trial] = [r for r in finished if r.info.run_id == refits[0].data.tags.get(keys.TAG_REFIT_OF)] or [best]
        best = refits[0]
    else:
        trial = best
    objective_value, trial_run_id = trial.data.metrics["objective"], trial.info.run_id
    m, p, t = best.data.metrics, best.data.params, best.data.tags
    tags = {
        keys.TAG_VERSION: __version__,  # the release that registered it (the trial run carries its own)
        keys.TAG_SWEEP: name,
        keys.TAG_TRIAL: t[keys.TAG_TRIAL],
        keys.TAG_RUN_ID: best.info.run_id,
        keys.TAG_FINGERPRINT: t.get(keys.TAG_FINGERPRINT, ""),
        keys.TAG_TEST_FINGERPRINT: t.get(keys.TAG_TEST_FINGERPRINT, ""),
        keys.TAG_OBJECTIVE: f"{'max' if maximize else 'min'}:{objective}",
        keys.TAG_HYPERPARAMETERS: json.dumps({k: p[k] for k in HP_DEFAULTS if k in p}, sort_keys=True),
        "metric.objective": repr(objective_value),  # the trial's: what the search chose it by
        **({keys.TAG_REFIT_OF: trial_run_id} if refits else {}),
        **{f"metric.{k}": repr(m[k]) for k in ("best_val_accuracy", "best_val_loss", "test_accuracy",
                                               "test_loss") if k in m},
        **{f"hp.{k}": p[k] for k in HP_DEFAULTS if k in p},
    }
    return Candidate(name, t[keys.TAG_TRIAL], best.info.run_id, t[keys.TAG_MODEL_URI], objective,
                     objective_value, m["test_accuracy"], t.get(keys.TAG_TEST_FINGERPRINT, ""), tags, parent.info.run_id)


def current_champion(client, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def verdict(cand: Candidate, champion) -> str | None:
    """Why the candidate may not replace the champion, or None if it may."""
    if champion is None:
        return None
    if champion.tags.get(keys.TAG_RUN_ID) == cand.run_id:
        return None
    champ_fp = champion.tags.get(keys.TAG_TEST_FINGERPRINT)
    champ_acc = float(champion.tags.get("metric.test_accuracy", "nan"))
    if champ_fp != cand.test_fingerprint:
        return (f"the champion (version {champion.version}) was tested on other data (test fingerprint "
                f"{(champ_fp or 'unknown')[:12]} vs {cand.test_fingerprint[:12]}): the accuracies are not comparable")
    if not cand.test_accuracy >= champ_acc:
        return (f"test accuracy {cand.test_accuracy:.4f} is below the champion's {champ_acc:.4f} "
                f"(version {champion.version}, sweep {champion.tags.get(keys.TAG_SWEEP)}, "
                f"trial {champion.tags.get(keys.TAG_TRIAL)})")
    return None


# --- the promotion lock: a registered model, created atomically, deleted on release (registry_lock.py) ----------

LOCK_SUFFIX = ".promotion-lock"
LOCK_TTL_S = 600  # a promotion takes seconds; a lock from another machine this old is from a crashed one
LOCK_WAIT_S = float(os.environ.get("MNIST_EXP_PROMOTION_WAIT_S") or 60)  # how long a second promotion waits


class PromotionBusy(PromotionRefused):
    """Another promotion holds (or took over) the lock; nothing was changed. Exit 1, like a refusal: the store
    and the input are fine and running again later is the remedy, unlike exit 2 (bad input, unusable store)."""


def lock_name(model_name: str) -> str:
    return model_name + LOCK_SUFFIX


def registry_lock(client, model_name: str, sweep: str = "") -> RegistryLock:
    description = (f"Promotion lock of registered model `{model_name}`, not a model: `mnist-exp promote` holds it "
                   f"for the seconds it takes to move an alias. If no promotion is running, it was left by a "
                   f"crashed one; the next promotion breaks it (at once on the holder's machine, after "
                   f"{LOCK_TTL_S} s elsewhere), or delete it.")
    return RegistryLock(client, lock_name(model_name), description, ttl_s=LOCK_TTL_S,
                        tags={keys.TAG_LOCK_SWEEP: sweep or ""}, who="mnist-exp promote", kind="promotion lock",
                        about=lambda tags: f" promoting sweep {tags[keys.TAG_LOCK_SWEEP]}" if tags.get(keys.TAG_LOCK_SWEEP)
                        else "")


@contextmanager
def promotion_lock(client, model_name: str, sweep: str = "", wait_s: float | None = None):
    """``with promotion_lock(client, name) as lock:`` one promotion of ``name`` at a time, on any store."""
    lock = registry_lock(client, model_name, sweep)
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    try:
        lock.acquire(wait_s)
    except Busy as e:
        raise PromotionBusy(f"another promotion holds {lock.name} ({lock.describe(e.holder)}); waited {wait_s:.0f} s "
                            "and changed nothing; run again when it is done") from None
    try:
        yield lock
    finally:
        try:
            lock.release()
        except Exception as e:  # never hide the promotion's own outcome; the lock is recoverable
            print(f"mnist-exp promote: warning: could not release the promotion lock {lock.name} "
                  f"({type(e).__name__}: {str(e)[:200]}); once this process has exited the next promotion breaks it "
                  f"(from another machine after {LOCK_TTL_S} s)", file=sys.stderr)


def promote(uri: str, experiment_id: str, sweep: str | None, model_name: str, alias: str,
            dry_run: bool = False, force: bool = False, ensemble_of: int | None = None) -> tuple[Candidate, str]:
    """Returns (candidate, model version). Raises PromotionRefused and changes nothing when refused.
    ``ensemble_of``: up to that many trials averaged as one model (results/ensemble.py); None takes the sweep's
    ``tuner.ensemble``, and 0 or 1 the best trial (or its refit). ``uri`` is unused (the lock lives in the
    registry of the current tracking URI); kept for callers."""
    import mlflow

    client = tracking.client()
    cand = best_candidate(experiment_id, sweep)
    plan = _ensemble_plan(experiment_id, cand, ensemble_of)
    single, cand = cand, (_ensemble_candidate(plan, cand, ensemble.finished(plan, experiment_id)) if plan else cand)
    if dry_run:  # reads only, so no lock (a lock is a write, and a dry run may face a read-only store)
        return cand, _judge(client, cand, model_name, alias, force, dry_run=True)[1]
    registry = mlflow.get_registry_uri()
    if not team.may_promote(registry, model_name):
        user = team.signed_in_user(registry)
        raise PermissionRefused(f"user {user} may not promote to {model_name} on {registry} (read only); an admin "
                                f"grants it: mnist-exp server-users DIR grant {user} promote")
    with promotion_lock(client, model_name, cand.sweep) as lock:
        champion, why = _judge(client, cand, model_name, alias, force)
        built = None
        if plan:  # judged on its test probabilities; built (or found again) only when it may be promoted
            built = ensemble.build(plan, experiment_id, single.model_uri)
            cand = _ensemble_candidate(plan, single, built)
        existing = _versions_of(client, model_name, cand.run_id)
        if existing:
            version = existing[0]
        else:
            version = tracking.register_model(cand.model_uri, model_name, cand.tags)  # tags in the same request
        # Everything the version should say is written before the alias moves, so an alias never points at a
        # version without its description or promotion tags (a crash anywhere before leaves the alias alone).
        if not version.description:  # new, or registered before descriptions (or by a process killed just here)
            text = (describe.ensemble_version_description(cand, plan, built, single, experiment_id) if plan
                    else describe.model_version_description(cand, experiment_id))
            client.update_model_version(model_name, version.version, description=text)
        client.set_model_version_tag(model_name, version.version, keys.TAG_PROMOTED_AT, str(int(time.time())))
        user = team.signed_in_user(mlflow.get_registry_uri())
        if user:
            client.set_model_version_tag(model_name, version.version, keys.TAG_PROMOTED_BY, user)
        if why:
            client.set_model_version_tag(model_name, version.version, keys.TAG_FORCED, why[:5000])
        elif keys.TAG_FORCED in (version.tags or {}):  # forced once, promoted on its merit now
            client.delete_model_version_tag(model_name, version.version, keys.TAG_FORCED)
        _move_alias(client, model_name, alias, champion, version.version, lock)
        if built:
            ensemble.note_on_parent(plan, built)
    return cand, version.version


def _ensemble_plan(experiment_id: str, single: Candidate, ensemble_of: int | None):
    parent = tracking.get_run(single.parent_run_id)
    k = ensemble_of if ensemble_of is not None else int(parent.data.params.get("tuner.ensemble") or 0)
    if k <= 1:
        return None
    maximize = single.tags.get(keys.TAG_OBJECTIVE, "max:").startswith("max:")
    return ensemble.plan(experiment_id, parent, k, single.objective, maximize)


def _ensemble_candidate(plan, single: Candidate, built) -> Candidate:
    """The ensemble as promote's candidate: scored like a trial (its objective on validation, the guard on test)."""
    value = plan.val_loss if single.objective.endswith("loss") else plan.val_accuracy
    tags = {
        keys.TAG_VERSION: __version__,
        keys.TAG_SWEEP: plan.sweep,
        keys.TAG_TRIAL: "ensemble",
        keys.TAG_RUN_ID: built.run_id if built else "",
        keys.TAG_ENSEMBLE_OF: ",".join(m.run_id for m in plan.members),
        keys.TAG_FINGERPRINT: single.tags.get(keys.TAG_FINGERPRINT, ""),
        keys.TAG_TEST_FINGERPRINT: single.test_fingerprint,
        keys.TAG_OBJECTIVE: single.tags.get(keys.TAG_OBJECTIVE, ""),
        "metric.objective": repr(value),
        **{f"metric.{k}": repr(getattr(plan, k)) for k in ("val_accuracy", "val_loss", "test_accuracy", "test_loss")},
    }
    return Candidate(plan.sweep, "ensemble", built.run_id if built else "", built.model_uri if built else "",
                     single.objective, value, plan.test_accuracy, single.test_fingerprint, tags, plan.parent_run_id)


def _judge(client, cand: Candidate, model_name: str, alias: str, force: bool, dry_run: bool = False):
    """(champion, why it may not be replaced or None); PromotionRefused unless ``force``. For a dry run the
    second item is the line saying what would happen."""
    champion = current_champion(client, model_name, alias)
    why = verdict(cand, champion)
    if why and not force:
        raise PromotionRefused(f"not promoting {cand.sweep} trial {cand.trial_id} (run {cand.run_id}): {why}; "
                               "--force overrides")
    if dry_run:
        existing = _versions_of(client, model_name, cand.run_id)
        what = f"version {existing[0].version}" if existing else "a new version"
        return champion, f"(dry run) would point {alias} at {what}"
    return champion, why


def _versions_of(client, model_name: str, run_id: str) -> list:
    if not run_id:  # an ensemble not built yet
        return []
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    return [v for v in found if v.tags.get(keys.TAG_RUN_ID) == run_id]


def _move_alias(client, model_name: str, alias: str, champion, version, lock: RegistryLock) -> None:
    """Point ``alias`` at ``version``, compare-and-set style: only while the lock is still ours and the alias is
    still where it was when judged, then read it back. Each check catches a writer that bypassed the lock (an
    older mnist-exp, MLflow used directly) or a lock broken under a promotion that outlived LOCK_TTL_S."""
    if not lock.held():
        raise PromotionBusy(f"the promotion lock {lock.name} was taken over while this promotion ran (longer than "
                            f"{LOCK_TTL_S} s?); {model_name}@{alias} was not moved; run again")
    was = getattr(champion, "version", None)
    now = getattr(current_champion(client, model_name, alias), "version", None)
    if str(now) != str(was):
        raise PromotionBusy(f"{model_name}@{alias} moved from version {was} to {now} while this promotion judged it "
                            "(a writer that does not take the promotion lock); it was not moved again; run again")
    client.set_registered_model_alias(model_name, alias, version)
    after = getattr(current_champion(client, model_name, alias), "version", None)
    if str(after) != str(version):
        raise PromotionBusy(f"{model_name}@{alias} points at version {after}, not {version} as this promotion set it "
                            "(a writer that does not take the promotion lock); run again to judge against it")


def check_names(model_name: str, alias: str) -> None:
    """--model-name and --alias, checked before MLflow loads: they end up in the registry and its queries."""
    names.check(model_name, "--model-name", key=None)
    if model_name.endswith(LOCK_SUFFIX):
        raise ConfigError(f"--model-name: {model_name!r} ends with {LOCK_SUFFIX!r}, which names promotion locks")
    names.check(alias, "--alias", key=None, kind="alias")


def experiment_id(uri: str, experiment: str) -> str:
    """The id of the store's experiment holding the sweeps, or ConfigError."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no experiment {experiment} in {uri}; run mnist-exp sweep first")
    return exp.experiment_id
