"""Markdown descriptions: a sweep's parent run note (MLflow's ``mlflow.note.content``) and a registered
model version's description. Text only: no MLflow here; the callers write it."""

from __future__ import annotations

import os
from pathlib import Path

from mnist_exp.model.data import Dataset
from mnist_exp.spec.experiment import Experiment, load_experiment
from mnist_exp.spec.space import Param, SearchSpace, load_space
from mnist_exp.tracking import keys, store


def sweep_note(exp: Experiment, ds: Dataset, experiment_id: str, space: SearchSpace | None = None,
               trials: list[dict] | None = None, best_trial_id: str | None = None, uri: str | None = None) -> str:
    """The parent run's description. ``trials``: compare.trials_table rows, given once the sweep has
    finished (None while it runs); ``space``: read from the experiment's search-space file when None;
    ``uri``: the store, by default MLFLOW_TRACKING_URI, which MLflow's set_tracking_uri exports (3.17)."""
    space = space if space is not None else load_space(exp.search_space)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    t, o = exp.tuner, exp.objective
    if t.kind == "hyperband":
        budget = f"Hyperband, max_epochs {t.max_epochs}, factor {t.factor}, {t.hyperband_iterations} iteration(s)"
    else:
        budget = f"{t.max_trials} trials × {exp.training.epochs} epoch(s)"
    if t.executions_per_trial > 1:
        budget += f", {t.executions_per_trial} executions per trial"
    if t.parallel_trials > 1:
        budget += f", {t.parallel_trials} at once"
    patience = exp.training.early_stopping_patience
    sizes = ds.sizes
    lines = [
        f"## Sweep `{exp.name}`: {t.kind} search, {o.direction} `{o.name}`",
        "",
        f"- **experiment file**: `{_shown_path(exp.path) if exp.path else '(none: defaults)'}`, seed {exp.seed}",
        f"- **search space**: `{_shown_path(space.path)}`",
        f"- **tuner and budget**: {t.kind}, {budget}"
        + (f"; early stopping after {patience} epoch(s) without progress" if patience else ""),
        f"- **data**: `{ds.source}`: {sizes['train']} train / {sizes['val']} validation / {sizes['test']} test digits "
        f"(fingerprint `{ds.fingerprint[:12]}`, test `{ds.test_fingerprint[:12]}`)",
        f"- **objective**: {o.direction} `{o.name}` (the test set chooses nothing)",
        "",
        "### Search space",
        "",
        *[f"- `{p.name}`: {_param_range(p)}" for p in space.params if p.name not in exp.hp],
        *[f"- `{k}`: pinned to `{v}` by the experiment's `hp:`" for k, v in exp.hp.items()],
        "",
        "### Best trial",
        "",
        _best_text(exp, trials, best_trial_id, experiment_id),
        "",
        "### Commands",
        "",
        "```bash",
        *commands(exp, uri),
        "```",
    ]
    return "\n".join(lines) + "\n"


def commands(exp: Experiment, uri: str) -> list[str]:
    """Resume, compare and promote this sweep, as typed from the project root (the folder holding mlruns/)."""
    from shlex import quote

    flag = "" if not uri or store.is_default(uri) else f" --tracking-uri {quote(uri)}"
    sweep = f"mnist-exp sweep {quote(_shown_path(exp.path))}" if exp.path else "mnist-exp sweep"
    file_exp = _from_file(exp)
    if file_exp is None or file_exp.name != exp.name:
        sweep += f" --name {exp.name}"
    sweep += "".join(f" --set {quote(f'{k}={_scalar(v)}')}" for k, v in _changed(file_exp, exp).items())
    name_flag = "" if exp.mlflow_experiment == "mnist-exp" else f" --experiment-name {exp.mlflow_experiment}"
    return [
        "# resume it (the same command; a larger --max-trials extends it)",
        sweep + flag,
        "# its leaderboard",
        f"mnist-exp compare {exp.name}{name_flag}{flag}",
        "# register its best trial and make it the champion if no worse",
        f"mnist-exp promote {exp.name}{name_flag}{flag}",
    ]


def _from_file(exp: Experiment) -> Experiment | None:
    """The experiment as its file alone (or the defaults) gives it; None: the file is no longer readable."""
    try:
        return load_experiment(exp.path)
    except Exception:
        return None


def _changed(base: Experiment | None, exp: Experiment) -> dict:
    """Keys where ``exp`` differs from ``base`` (--set, --epochs, --tuner ... given on the command line)."""
    import dataclasses

    def flat(e: Experiment) -> dict:
        d = dataclasses.asdict(e)
        out = {k: v for k, v in d.items() if not isinstance(v, dict) and k not in ("name", "path")}
        for section in ("data", "training", "tuner", "objective", "hp"):
            out.update({f"{section}.{k}": v for k, v in d[section].items()})
        return out

    mine = flat(exp)
    if base is None:
        return {}
    theirs = flat(base)
    return {k: v for k, v in mine.items() if k not in theirs or theirs[k] != v}


def _scalar(v) -> str:
    """As --set reads it back (a YAML scalar)."""
    import json

    return json.dumps(v) if v is None or isinstance(v, bool) else str(v)


def model_version_description(c, experiment_id: str) -> str:
    """A registered version's description, from promote's candidate ``c`` (its tags hold the rest)."""
    tags = c.tags
    metrics = [f"`{k[len('metric.'):]}` {float(v):.4f}" for k, v in tags.items() if k.startswith("metric.")]
    hps = [f"`{k[len('hp.'):]}`={v}" for k, v in tags.items() if k.startswith("hp.")]
    lines = [
        f"Promoted from sweep `{c.sweep}`, trial {c.trial_id}: run [{c.run_id}]({_run_link(experiment_id, c.run_id)})"
        + (f" (the sweep's parent run [{c.parent_run_id}]({_run_link(experiment_id, c.parent_run_id)}))"
           if c.parent_run_id else ""),
        "",
        f"- **chosen by**: {tags.get(keys.TAG_OBJECTIVE, c.objective)} = {c.objective_value:.4f}",
        f"- **metrics**: {', '.join(metrics)}",
        f"- **data**: fingerprint `{tags.get(keys.TAG_FINGERPRINT, '')}`",
        f"- **test data**: fingerprint `{c.test_fingerprint}`",
        f"- **hyperparameters**: {', '.join(hps)}",
        f"- **model**: `{c.model_uri}`",
    ]
    return "\n".join(lines) + "\n"


def ensemble_version_description(c, plan, built, single, experiment_id: str) -> str:
    """A registered ensemble's description: its members with links to their runs, scores, size and latency."""
    m = built.metrics
    rows = [f"| {x.trial_id}{' (refit)' if x.refit else ''} | [{x.run_id}]({_run_link(experiment_id, x.run_id)}) | "
            f"{x.weight:.3f} | {x.val_accuracy:.4f} | {x.val_loss:.4f} | {x.test_accuracy:.4f} |" for x in plan.members]
    lines = [
        f"Ensemble of {len(plan.members)} models from sweep `{c.sweep}`, chosen among its {plan.library} best trials "
        f"on the validation split only (greedy selection with replacement, up to {plan.max_members} members): run "
        f"[{c.run_id}]({_run_link(experiment_id, c.run_id)}) (the sweep's parent run "
        f"[{plan.parent_run_id}]({_run_link(experiment_id, plan.parent_run_id)})). It averages the members' class "
        "probabilities with these weights.",
        "",
        "| trial | run | weight | val accuracy | val loss | test accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"- **ensemble**: validation accuracy {plan.val_accuracy:.4f} (loss {plan.val_loss:.4f}), test accuracy "
        f"{plan.test_accuracy:.4f} (loss {plan.test_loss:.4f})",
        f"- **best single model** (what promote without --ensemble registers: trial {single.trial_id}, run "
        f"[{single.run_id}]({_run_link(experiment_id, single.run_id)})): test accuracy {single.test_accuracy:.4f}",
        f"- **size on disk**: {m.get('size_bytes', float('nan')) / 1e6:.1f} MB (best single model "
        f"{m.get('single_size_bytes', float('nan')) / 1e6:.1f} MB)",
        f"- **latency per image**: {m.get('latency_ms_per_image_batch1', float('nan')):.2f} ms at batch 1, "
        f"{m.get('latency_ms_per_image_batch256', float('nan')):.3f} ms at batch 256 (best single model "
        f"{m.get('single_latency_ms_per_image_batch1', float('nan')):.2f} / "
        f"{m.get('single_latency_ms_per_image_batch256', float('nan')):.3f} ms)",
        f"- **test data**: fingerprint `{c.test_fingerprint}`",
        f"- **model**: `{c.model_uri}`",
    ]
    return "\n".join(lines) + "\n"


def _best_text(exp: Experiment, trials: list[dict] | None, best_trial_id: str | None, experiment_id: str) -> str:
    if trials is None:
        return "Written here when the sweep finishes."
    finished = [r for r in trials if r.get("status") == "FINISHED"]
    counts = f"{len(finished)} trial run(s) finished, {len(trials) - len(finished)} failed or killed."
    best = [r for r in finished if str(r.get("trial_id")) == str(best_trial_id)]
    if not best:
        return f"No trial finished. {counts}"
    b = best[0]
    test = b.get("test_accuracy")
    test_txt = f", test accuracy {test:.4f}" if isinstance(test, float) and test == test else ""
    return (f"Trial **{b['trial_id']}**: `{exp.objective.name}` {b['objective']:.4f}{test_txt}; run "
            f"[{b['run_id']}]({_run_link(experiment_id, b['run_id'])}). {counts}")


def _run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}"  # MLflow's UI routes (hash router), same server


def _param_range(p: Param) -> str:
    if p.type in ("int", "float"):
        txt = f"{p.type} {p.min} … {p.max}"
        if p.step:
            txt += f", step {p.step}"
        if p.sampling != "linear":
            txt += f" ({p.sampling})"
    elif p.type == "choice":
        txt = "one of " + ", ".join(str(v) for v in p.values)
    elif p.type == "boolean":
        txt = "true or false"
    else:
        return f"fixed at {p.default}"
    return f"{txt}; default {p.default}"


def _shown_path(path: str) -> str:
    """Relative to the project root when inside it (where the commands are typed), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(store.project_root()))
    except ValueError:
        return str(p)
