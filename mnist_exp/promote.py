"""``mnist-exp promote``: register a sweep's best trial and move the champion alias to it, guarded.

The best trial is chosen by the sweep's objective (a validation metric); the test
set only decides whether it may replace the champion, and only when both were
tested on the same data (same test fingerprint). Promotions are serialised by a
lock beside the store, so two racing promotions end with the better model.
"""

from __future__ import annotations

import fcntl
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from . import __version__, compare, describe, names, tracking
from .errors import ConfigError, PromotionRefused
from .model import HP_DEFAULTS


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
    parents = compare.latest_parents(tracking.MLflowRuns(), experiment_id, [sweep] if sweep else None)
    if not parents:
        raise ConfigError(f"no sweep named {sweep}" if sweep else "no sweeps in the store; run mnist-exp sweep first")
    parent = max(parents.values(), key=lambda r: r.info.start_time)
    name = parent.data.tags[tracking.TAG_SWEEP]
    objective, maximize = compare.sweep_objectives([parent])[name]
    finished = [r for r in tracking.trial_runs(experiment_id, parent.info.run_id)
                if r.info.status == tracking.FINISHED and "objective" in r.data.metrics
                and tracking.TAG_MODEL_URI in r.data.tags]
    if not finished:
        raise ConfigError(f"sweep {name} has no finished trial with a logged model")
    sign = 1 if maximize else -1
    best = max(finished, key=lambda r: (sign * r.data.metrics["objective"], -r.info.start_time))
    m, p, t = best.data.metrics, best.data.params, best.data.tags
    tags = {
        "mnist_exp.version": __version__,  # the release that registered it (the trial run carries its own)
        "mnist_exp.sweep": name,
        "mnist_exp.trial_id": t[tracking.TAG_TRIAL],
        "mnist_exp.run_id": best.info.run_id,
        "mnist_exp.data_fingerprint": t.get(tracking.TAG_FINGERPRINT, ""),
        "mnist_exp.test_fingerprint": t.get(tracking.TAG_TEST_FINGERPRINT, ""),
        "mnist_exp.objective": f"{'max' if maximize else 'min'}:{objective}",
        "mnist_exp.hyperparameters": json.dumps({k: p[k] for k in HP_DEFAULTS if k in p}, sort_keys=True),
        **{f"metric.{k}": repr(m[k]) for k in ("objective", "best_val_accuracy", "best_val_loss", "test_accuracy",
                                               "test_loss") if k in m},
        **{f"hp.{k}": p[k] for k in HP_DEFAULTS if k in p},
    }
    return Candidate(name, t[tracking.TAG_TRIAL], best.info.run_id, t[tracking.TAG_MODEL_URI], objective,
                     m["objective"], m["test_accuracy"], t.get(tracking.TAG_TEST_FINGERPRINT, ""), tags, parent.info.run_id)


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
    if champion.tags.get("mnist_exp.run_id") == cand.run_id:
        return None
    champ_fp = champion.tags.get("mnist_exp.test_fingerprint")
    champ_acc = float(champion.tags.get("metric.test_accuracy", "nan"))
    if champ_fp != cand.test_fingerprint:
        return (f"the champion (version {champion.version}) was tested on other data (test fingerprint "
                f"{(champ_fp or 'unknown')[:12]} vs {cand.test_fingerprint[:12]}): the accuracies are not comparable")
    if not cand.test_accuracy >= champ_acc:
        return (f"test accuracy {cand.test_accuracy:.4f} is below the champion's {champ_acc:.4f} "
                f"(version {champion.version}, sweep {champion.tags.get('mnist_exp.sweep')}, "
                f"trial {champion.tags.get('mnist_exp.trial_id')})")
    return None


@contextmanager
def registry_lock(uri: str):
    """Serialise promotions against one store (a file lock beside a local store)."""
    path = tracking.local_store_dir(uri) / "registry.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def promote(uri: str, experiment_id: str, sweep: str | None, model_name: str, alias: str,
            dry_run: bool = False, force: bool = False) -> tuple[Candidate, str]:
    """Returns (candidate, model version). Raises PromotionRefused and changes nothing when refused."""
    import mlflow

    client = tracking.client()
    cand = best_candidate(experiment_id, sweep)
    with registry_lock(uri):
        champion = current_champion(client, model_name, alias)
        why = verdict(cand, champion)
        if why and not force:
            raise PromotionRefused(f"not promoting {cand.sweep} trial {cand.trial_id} (run {cand.run_id}): {why}; "
                                   "--force overrides")
        existing = client.search_model_versions(f"name='{model_name}' and run_id='{cand.run_id}'")
        existing = [v for v in existing if v.tags.get("mnist_exp.run_id") == cand.run_id]
        if dry_run:
            what = f"version {existing[0].version}" if existing else "a new version"
            return cand, f"(dry run) would point {alias} at {what}"
        if existing:
            version = existing[0]
        else:
            version = mlflow.register_model(cand.model_uri, model_name, tags=cand.tags)
        if not version.description:  # new, or registered before descriptions (or by a process killed just here)
            client.update_model_version(model_name, version.version,
                                        description=describe.model_version_description(cand, experiment_id))
        client.set_registered_model_alias(model_name, alias, version.version)
        client.set_model_version_tag(model_name, version.version, "mnist_exp.promoted_at", str(int(time.time())))
        if why:
            client.set_model_version_tag(model_name, version.version, "mnist_exp.forced", why[:5000])
    return cand, version.version


def check_args(args) -> None:
    """--model-name and --alias, checked before MLflow loads: they end up in the registry and its queries."""
    names.check(args.model_name, "--model-name", key=None)
    names.check(args.alias, "--alias", key=None, kind="alias")


def main(uri: str, args) -> int:
    import mlflow

    check_args(args)

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(args.experiment_name)
    if exp is None:
        raise ConfigError(f"no experiment {args.experiment_name} in {uri}; run mnist-exp sweep first")
    try:
        cand, version = promote(uri, exp.experiment_id, args.sweep, args.model_name, args.alias,
                                dry_run=args.dry_run, force=args.force)
    except PromotionRefused as e:
        print(f"mnist-exp promote: refused: {e}", file=sys.stderr)
        return 1
    line = (f"{cand.sweep} trial {cand.trial_id} (run {cand.run_id}): {cand.objective}={cand.objective_value:.4f}, "
            f"test accuracy {cand.test_accuracy:.4f}")
    if args.dry_run:
        print(f"{line}\n{version}")
    else:
        print(f"{line}\nmodels:/{args.model_name}@{args.alias} -> version {version}")
    return 0
