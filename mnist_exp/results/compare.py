"""Leaderboards read from MLflow with pandas: ``mnist-exp compare`` and each sweep's summary."""

from __future__ import annotations

from dataclasses import dataclass

import os
import sys
from pathlib import Path

import pandas as pd

from mnist_exp import tracking
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.spec import names
from mnist_exp.spec.levers import HP_DEFAULTS, TUNER_BOOKKEEPING_PREFIX
from mnist_exp.tracking import keys, readers, store

SUMMARY_METRICS = ["objective", "best_val_accuracy", "final_val_accuracy", "best_val_loss", "final_val_loss",
                   "test_accuracy", "test_loss", "epochs_run"]


def trials_table(runs) -> pd.DataFrame:
    """One row per trial run: sweep, trial, status, hyperparameters, summary metrics, duration."""
    rows = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        row = {
            "sweep": t.get(keys.TAG_SWEEP),
            "trial_id": t.get(keys.TAG_TRIAL),
            "status": r.info.status,
            "run_id": r.info.run_id,
            "parent_run_id": t.get(keys.TAG_PARENT_RUN),
        }
        for name in HP_DEFAULTS:
            if name in p:
                row[name] = _parse(p[name])
        for k, v in p.items():
            if k.startswith(TUNER_BOOKKEEPING_PREFIX):
                row[k] = _parse(v)
        for k in SUMMARY_METRICS:
            row[k] = m.get(k)
        end = r.info.end_time or r.info.start_time
        row["duration_s"] = (end - r.info.start_time) / 1000 if r.info.start_time else None
        row["start_time"] = r.info.start_time
        row["error"] = t.get(keys.TAG_ERROR)
        row["pruned"] = int(t[keys.TAG_PRUNED]) if keys.TAG_PRUNED in t else None  # the epoch it stopped after
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for k in SUMMARY_METRICS:
        df[k] = pd.to_numeric(df[k], errors="coerce")
    df["pruned"] = df["pruned"].astype("Int64")  # an epoch, or <NA> for a trial that ran its course
    return df.sort_values("start_time", kind="stable").reset_index(drop=True)


def _parse(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(v, v)


def ranked(df: pd.DataFrame, metric: str = "objective", maximize: bool = True) -> pd.DataFrame:
    """Finished trials, best first; pruned trials after those that ran their course."""
    done = df[df["status"] == keys.FINISHED]
    done = done.sort_values(metric, ascending=not maximize, kind="stable", na_position="last")
    return done.sort_values("pruned", key=lambda c: c.notna(), kind="stable") if "pruned" in done else done


def hp_columns(df: pd.DataFrame) -> list[str]:
    """Hyperparameters that vary across the table (constant ones say nothing)."""
    return [c for c in HP_DEFAULTS if c in df and df[c].nunique(dropna=True) > 1]


def log_sweep_summary(df: pd.DataFrame, exp, parent_run_id: str) -> None:
    """Leaderboard CSV and the two sweep figures, on the parent run."""
    from mnist_exp.model import plots  # matplotlib: a sweep needs it, `mnist-exp compare` only with --plot

    if df.empty:
        return
    maximize = exp.objective.direction == "max"
    tracking.log_text(ranked(df, maximize=maximize).to_csv(index=False), "leaderboard.csv", run_id=parent_run_id)
    done = df[df["status"] == keys.FINISHED]
    if done.empty:
        return
    fig = plots.objective_per_trial(list(done["trial_id"]), list(done["objective"]), exp.objective.name, maximize)
    tracking.log_figure(fig, "plots/objective_per_trial.png", run_id=parent_run_id)
    names = hp_columns(done) or [c for c in HP_DEFAULTS if c in done][:1]
    fig = plots.objective_vs_hyperparameters(done, names, "objective", exp.objective.name)
    tracking.log_figure(fig, "plots/objective_vs_hyperparameters.png", run_id=parent_run_id)


def summary_text(df: pd.DataFrame, exp, parent_run_id: str, top: int = 5) -> str:
    maximize = exp.objective.direction == "max"
    best = ranked(df, maximize=maximize).head(top)
    cols = ["trial_id", "objective", "test_accuracy", "epochs_run",
            *(["pruned"] if df["pruned"].notna().any() else []), "duration_s", *hp_columns(df)]
    failed = df[df["status"] != keys.FINISHED]
    lines = [f"\nsweep {exp.name}: {len(df) - len(failed)} finished, {len(failed)} failed/killed trial run(s); "
             f"top {len(best)} by {exp.objective.name} ({exp.objective.direction}):",
             _format(best[cols].rename(columns={"objective": exp.objective.name}))]
    import mlflow

    lines.append(f"parent run {parent_run_id}; open the UI: {store.ui_command(mlflow.get_tracking_uri())}")
    return "\n".join(lines)


def _format(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if not df.empty else "(none)"


def sweep_objectives(parents) -> dict[str, tuple[str, bool]]:
    """sweep name -> (objective metric, maximize), from the parent runs' tags."""
    out = {}
    for r in parents:
        direction, _, name = r.data.tags.get(keys.TAG_OBJECTIVE, "max:val_accuracy").partition(":")
        out[r.data.tags.get(keys.TAG_SWEEP)] = (name, direction == "max")
    return out


def latest_parents(reader, experiment_id: str, names: list[str] | None = None) -> dict:
    """sweep name -> its current parent run (an --overwrite'n sweep's older parents are history)."""
    out = {}
    for r in sorted(reader.runs(experiment_id, {keys.TAG_KIND: "sweep"}), key=lambda r: r.info.start_time):
        name = r.data.tags.get(keys.TAG_SWEEP)
        if names and name not in names:
            continue
        out[name] = r
    return out


def check_args(args) -> None:
    """--top and the output files, checked before the store is read: a typo costs no query."""
    if args.top < 1:
        raise ConfigError(f"--top {args.top}: must be at least 1")
    for flag, value in (("--csv", args.csv), ("--plot", args.plot)):
        if value:
            out_file(flag, value)


def out_file(flag: str, value: str) -> Path:
    """A file path we can create or replace, or a one-line ConfigError naming the flag."""
    path = Path(value)
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"{flag} {value}: is a folder; give a file name")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {value}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {value}: not writable")
    return path


@dataclass(frozen=True)
class Trials:
    """The trials of a store's sweeps, as ``load_trials`` found them."""

    df: pd.DataFrame  # one row per trial run (trials_table), every sweep asked for
    parents: dict  # sweep name -> its latest parent run
    objectives: dict  # sweep name -> (objective metric, maximize)
    missing: list  # sweeps asked for that the store does not have


def load_trials(uri: str, experiment_name: str = "mnist-exp", sweeps: list[str] | None = None) -> Trials:
    """Every trial run of ``sweeps`` (default: every sweep) in the store at ``uri``, read without MLflow for a
    local store."""
    reader = readers.run_reader(uri)
    experiment_id = reader.experiment_id(experiment_name)
    parents = latest_parents(reader, experiment_id, sweeps or None) if experiment_id else {}
    frames = [trials_table(tracking.trial_runs(experiment_id, p.info.run_id, reader)) for p in parents.values()]
    frames = [f for f in frames if not f.empty]
    return Trials(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), parents,
                  sweep_objectives(parents.values()), [s for s in sweeps or [] if s not in parents])


def main(uri: str, args) -> int:
    """``mnist-exp compare``: each sweep's leaderboard on the terminal, with --csv and --plot files."""
    check_args(args)
    found = load_trials(uri, args.experiment_name, args.sweeps)
    df, parents, objectives = found.df, found.parents, found.objectives
    if found.missing:
        shown = ", ".join(names.shorten(m) for m in found.missing)  # any text may be asked for; one line
        print(f"mnist-exp compare: no sweep named {shown} in {uri}", file=sys.stderr)
        return 2 if len(found.missing) == len(args.sweeps) else 0
    if not parents:
        print(f"no sweeps in {uri} (experiment {args.experiment_name}); run one: mnist-exp sweep experiments/quick.yaml")
        return 0
    if df.empty:
        print(f"sweeps {', '.join(parents)} have no trial runs yet")
        return 0
    board = []
    for name, group in df.groupby("sweep", sort=False):
        obj, maximize = objectives.get(name, ("val_accuracy", True))
        metric = args.metric or "objective"
        if metric not in group:
            print(f"mnist-exp compare: no metric column {metric!r} (have: {', '.join(SUMMARY_METRICS)})", file=sys.stderr)
            return 2
        top = ranked(group, metric, maximize if metric == "objective" or "acc" in metric else False)
        board.append(top)
        cols = ["trial_id", "objective", "best_val_accuracy", "final_val_accuracy", "test_accuracy", "test_loss",
                "epochs_run", *(["pruned"] if group["pruned"].notna().any() else []), "duration_s",
                *hp_columns(group), *[c for c in group if c.startswith("tuner/")]]
        print(f"\n== sweep {name}: {len(top)} finished trial(s), sorted by {metric if metric != 'objective' else obj} "
              f"({'max' if maximize else 'min'}); parent run {parents[name].info.run_id}")
        print(_format(top.head(args.top)[cols].rename(columns={"objective": obj})))
        bad = group[group["status"] != keys.FINISHED]
        if not bad.empty:
            print(f"-- {len(bad)} failed / killed / running trial run(s):")
            print(_format(bad[["trial_id", "status", "duration_s", "error"]]))
    if getattr(args, "importance", False):
        _print_importance(df, parents, objectives)
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv} ({len(df)} rows)")
    if args.plot:
        _plot(uri, df, board, objectives, args)
        print(f"wrote {args.plot}")
    return 0


def _print_importance(df: pd.DataFrame, parents: dict, objectives: dict) -> None:
    """Each sweep's hyperparameter importance (results/importance.py), or why there is none."""
    from mnist_exp.results import importance

    for name, group in df.groupby("sweep", sort=False):
        _, maximize = objectives.get(name, ("val_accuracy", True))
        searched = [h for h in parents[name].data.tags.get(keys.TAG_SEARCHED, "").split(",") if h] or hp_columns(group)
        found = importance.importances(group, searched, maximize, int(parents[name].data.params.get("seed", 0)))
        print(f"\n== sweep {name}: hyperparameter importance")
        if found is None:
            print(importance.too_few(len(importance.usable(group))))
        else:
            print("\n".join(f"{k:<20} {v:.3f}" for k, v in found.items()) or "(no hyperparameter varied)")


def _plot(uri, df, board, objectives, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mnist_exp.model.plots import log_x_axis

    c = tracking.client(uri)  # per-epoch curves: MLflow's metric history
    names = hp_columns(df) or [h for h in HP_DEFAULTS if h in df][:1]
    fig, axes = plt.subplots(1 + (len(names) + 2) // 3, 3, figsize=(13, 3.6 * (1 + (len(names) + 2) // 3)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    ax = axes[0, 0]
    ax.axis("on")
    for top in board:
        for _, row in top.head(args.top).iterrows():
            hist = sorted(c.get_metric_history(row["run_id"], "val_accuracy"), key=lambda m: m.step)
            ax.plot([m.step for m in hist], [m.value for m in hist], marker="o", label=f"{row['sweep']}/{row['trial_id']}")
    ax.set_title(f"validation accuracy, top {args.top} per sweep")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    done = df[df["status"] == keys.FINISHED]
    for ax, name in zip(axes.ravel()[3:], names):
        ax.axis("on")
        for sweep, g in done.groupby("sweep"):
            x = g[name] if pd.api.types.is_numeric_dtype(g[name]) else g[name].astype(str)
            ax.scatter(x, g["objective"], label=sweep, s=18)
        if name == "learning_rate":
            log_x_axis(ax)
        ax.set_xlabel(name)
        ax.set_ylabel("objective")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)
