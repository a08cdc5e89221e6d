"""Which hyperparameters mattered: Optuna's fANOVA evaluator over a sweep's finished trials.

Read from the trials' runs (their params and objective), so it works on any store and at any time (``mnist-exp
compare SWEEP --importance``) and is logged on the parent run when a sweep ends. Pruned trials are left out (their
objective is an early epoch's), and so is a conditional hyperparameter in any trial where it was inactive (Optuna
evaluates the parameters every trial has). Values are normalised to sum to 1.
"""

from __future__ import annotations

import math

import pandas as pd

from mnist_exp.tracking import keys

MIN_TRIALS = 8  # finished, unpruned trials before importance says anything
METRIC_PREFIX = keys.METRIC_IMPORTANCE_PREFIX


def importances(df: pd.DataFrame, names: list[str], maximize: bool, seed: int = 0) -> dict[str, float] | None:
    """{hyperparameter: importance}, largest first, over ``df`` (compare.trials_table) for the searched ``names``;
    None with fewer than MIN_TRIALS usable trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = usable(df)
    if len(done) < MIN_TRIALS:
        return None
    dists = {}
    for name in names:
        if name not in done or done[name].nunique(dropna=True) < 2:
            continue
        col = done[name].dropna()
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)
        dists[name] = (FloatDistribution(float(col.min()), float(col.max())) if numeric
                       else CategoricalDistribution(sorted({str(v) for v in col})))
    if not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    for _, row in done.iterrows():
        params = {n: (float(row[n]) if isinstance(d, FloatDistribution) else str(row[n]))
                  for n, d in dists.items() if not _missing(row.get(n))}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={n: dists[n] for n in params},
                                                  value=float(row["objective"])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def usable(df: pd.DataFrame) -> pd.DataFrame:
    """Finished, unpruned trials with an objective."""
    if df.empty:
        return df
    done = df[(df["status"] == keys.FINISHED) & df["objective"].notna()]
    return done[done["pruned"].isna()] if "pruned" in done else done


def too_few(n: int) -> str:
    return (f"importance needs at least {MIN_TRIALS} finished, unpruned trials; this sweep has {n}: "
            "nothing computed")


def table(found: dict[str, float]) -> str:
    """The importances as a Markdown table (the parent run's note) or plain lines."""
    rows = [f"| `{name}` | {value:.3f} |" for name, value in found.items()]
    return "\n".join(["| hyperparameter | importance (fANOVA) |", "| --- | --- |", *rows])


def log(found: dict[str, float], parent_run_id: str) -> None:
    """``importance.<hp>`` metrics and ``plots/importance.png`` on the parent run."""
    from mnist_exp import tracking
    from mnist_exp.model import plots

    tracking.log_metrics({f"{METRIC_PREFIX}{k}": v for k, v in found.items()}, run_id=parent_run_id)
    tracking.log_figure(plots.importance(found), "plots/importance.png", run_id=parent_run_id)


def after_sweep(df: pd.DataFrame, exp, parent_run_id: str, searched: list[str]) -> str:
    """At a sweep's end: importance logged on the parent run and a line printed, or the line saying how many
    trials it needs. Returns the parent note's section ("" when nothing was computed)."""
    found = importances(df, searched, exp.objective.direction == "max", exp.seed)
    if found is None:
        print(f"sweep {exp.name}: {too_few(len(usable(df)))}", flush=True)
        return ""
    if not found:
        return ""
    log(found, parent_run_id)
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(found.items())[:5])
    print(f"sweep {exp.name}: hyperparameter importance (fANOVA): {top}", flush=True)
    return "\n\n### Hyperparameter importance\n\n" + table(found)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
