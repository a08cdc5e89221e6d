"""Hyperparameter importance (mnist_exp/results/importance.py): Optuna's fANOVA over trials whose answer is known,
the line when there are too few, and what lands on a real parent run."""

import random

import pandas as pd
import pytest

from mnist_exp.results import importance
from mnist_exp.tracking import keys


def synthetic(n: int, seed: int = 0, pruned: int = 0) -> pd.DataFrame:
    """Trials whose objective is driven by the learning rate alone (plus a little noise)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lr = 10 ** rng.uniform(-4, -1.5)
        rows.append({"trial_id": f"{i:02d}", "status": keys.FINISHED, "pruned": 1 if i < pruned else None,
                     "learning_rate": lr, "dropout_1": rng.choice([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
                     "activation": rng.choice(["relu", "gelu", "elu"]), "batch_size": rng.choice([16, 32, 64]),
                     "objective": 0.99 - abs(lr - 3e-3) * 10 + rng.uniform(0, 0.002)})
    df = pd.DataFrame(rows)
    df["pruned"] = df["pruned"].astype("Int64")
    return df


SEARCHED = ["learning_rate", "dropout_1", "activation", "batch_size"]


def test_the_hyperparameter_that_drives_the_objective_ranks_first_and_they_sum_to_one():
    found = importance.importances(synthetic(24), SEARCHED, maximize=True, seed=1)
    assert list(found)[0] == "learning_rate" and found["learning_rate"] > 0.5
    assert set(found) == set(SEARCHED) and sum(found.values()) == pytest.approx(1.0)
    assert importance.importances(synthetic(24), SEARCHED, maximize=True, seed=1) == found  # seeded


def test_too_few_unpruned_trials_give_nothing_and_say_how_many_are_needed():
    assert importance.importances(synthetic(7), SEARCHED, True) is None
    assert importance.importances(synthetic(12, pruned=5), SEARCHED, True) is None  # 7 unpruned
    assert importance.too_few(7) == ("importance needs at least 8 finished, unpruned trials; this sweep has 7: "
                                     "nothing computed")


def test_a_conditional_hyperparameter_absent_from_some_trials_is_left_out():
    df = synthetic(16)
    df["warmup_fraction"] = [0.1 if i % 2 else None for i in range(16)]  # inactive in half the trials
    found = importance.importances(df, [*SEARCHED, "warmup_fraction"], True, seed=1)
    assert "warmup_fraction" not in found and list(found)[0] == "learning_rate"


def test_at_a_sweeps_end_importance_lands_on_the_parent_run(store, capsys):
    import mlflow

    from mnist_exp.spec.experiment import load_experiment

    from helpers import ROOT

    exp = load_experiment(ROOT / "experiments" / "quick.yaml")
    with mlflow.start_run() as run:
        pass
    section = importance.after_sweep(synthetic(12), exp, run.info.run_id, SEARCHED)
    assert "### Hyperparameter importance" in section and "| `learning_rate` |" in section
    assert "sweep quick: hyperparameter importance (fANOVA): learning_rate " in capsys.readouterr().out
    got = mlflow.get_run(run.info.run_id)
    assert set(got.data.metrics) == {f"importance.{h}" for h in SEARCHED}
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")] == ["plots/importance.png"]

    with mlflow.start_run() as few:
        pass
    assert importance.after_sweep(synthetic(3), exp, few.info.run_id, SEARCHED) == ""
    assert "importance needs at least 8" in capsys.readouterr().out
    assert not mlflow.get_run(few.info.run_id).data.metrics


def test_compare_importance_says_per_sweep_what_it_can(swept_store, capsys):
    from mnist_exp.cli import main

    assert main(["compare", "a", "b", "--importance"]) == 0
    out = capsys.readouterr().out
    assert out.count("hyperparameter importance") == 2
    assert out.count("importance needs at least 8 finished, unpruned trials; this sweep has 2: nothing computed") == 2
