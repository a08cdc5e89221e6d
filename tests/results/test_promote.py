
import pytest
from mlflow import MlflowClient

from mnist_exp._version import __version__
from mnist_exp.cli import main

from helpers import runs


def best_run(sweep):
    trials = [r for r in runs(filter_string=f"tags.`mnist_exp.sweep` = '{sweep}' and tags.`mnist_exp.kind` = 'trial'")
              if r.info.status == "FINISHED"]
    return max(trials, key=lambda r: (r.data.metrics["objective"], -r.info.start_time))


def set_test_accuracy(sweep, value):
    """Give a sweep's best trial a chosen test accuracy (a newer value of the metric), to stage each case."""
    run = best_run(sweep)
    MlflowClient().log_metric(run.info.run_id, "test_accuracy", value, step=1)
    return run.info.run_id


def champion():
    return MlflowClient().get_model_version_by_alias("mnist-cnn", "champion")


def versions():
    return MlflowClient().search_model_versions("name='mnist-cnn'")


@pytest.mark.slow
def test_first_promotion_registers_the_best_trial_with_its_tags(swept_store, capsys):
    run_id = set_test_accuracy("a", 0.90)
    assert main(["promote", "a"]) == 0
    said = capsys.readouterr()
    assert "models:/mnist-cnn@champion -> version 1" in said.out
    assert "registered model" not in said.err.lower() and "Created version" not in said.err  # MLflow's own lines
    v = champion()
    assert str(v.version) == "1" and v.run_id == run_id
    best = best_run("a")
    assert v.tags["mnist_exp.sweep"] == "a" and v.tags["mnist_exp.trial_id"] == best.data.tags["mnist_exp.trial_id"]
    assert v.tags["mnist_exp.run_id"] == run_id and v.tags["metric.test_accuracy"] == "0.9"
    assert v.tags["mnist_exp.version"] == __version__  # which release registered it
    assert v.tags["mnist_exp.test_fingerprint"] == best.data.tags["mnist_exp.test_fingerprint"]
    assert v.tags["hp.learning_rate"] == best.data.params["learning_rate"]
    assert float(v.tags["metric.objective"]) == pytest.approx(best.data.metrics["objective"])
    # its description says where it came from: sweep, trial, run, the sweep's parent, data, metrics
    text = v.description
    assert f"sweep `a`, trial {best.data.tags['mnist_exp.trial_id']}: run [{run_id}]" in text
    assert best.data.tags["mlflow.parentRunId"] in text and "`test_accuracy` 0.9000" in text
    assert best.data.tags["mnist_exp.data_fingerprint"] in text and best.data.tags["mnist_exp.test_fingerprint"] in text
    assert f"max:val_accuracy = {best.data.metrics['objective']:.4f}" in text
    # the best trial is chosen by the objective (validation), never by test accuracy
    others = [r for r in runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'trial'")
              if r.info.run_id != run_id]
    assert all(r.data.metrics["objective"] <= best.data.metrics["objective"] for r in others)


@pytest.mark.slow
def test_better_promotes_worse_refuses_equal_promotes_repeat_reuses(swept_store, capsys):
    set_test_accuracy("a", 0.80)
    assert main(["promote", "a"]) == 0
    set_test_accuracy("b", 0.70)  # worse: refused, nothing changes
    assert main(["promote", "b"]) == 1
    assert "test accuracy 0.7000 is below the champion's 0.8000" in capsys.readouterr().err
    assert str(champion().version) == "1" and len(versions()) == 1
    assert main(["promote", "b", "--dry-run"]) == 1 and len(versions()) == 1
    set_test_accuracy("b", 0.80)  # equal: promoted
    assert main(["promote", "b", "--dry-run"]) == 0 and len(versions()) == 1
    assert main(["promote", "b"]) == 0
    assert str(champion().version) == "2"
    assert main(["promote", "b"]) == 0  # the same run again: no second version
    assert len(versions()) == 2 and str(champion().version) == "2"
    set_test_accuracy("a", 0.75)  # a's run is version 1; now worse than b
    assert main(["promote", "a"]) == 1 and str(champion().version) == "2"
    assert main(["promote", "a", "--force"]) == 0  # forced back: reuses version 1
    assert str(champion().version) == "1" and len(versions()) == 2
    assert "below the champion" in champion().tags["mnist_exp.forced"]
    set_test_accuracy("a", 0.85)  # now on its merit: the forced tag of the earlier promotion goes
    assert main(["promote", "a"]) == 0 and "mnist_exp.forced" not in champion().tags
    # the promotion lock (a registered model) is gone after every promotion, refused ones and dry runs included
    assert [m.name for m in MlflowClient().search_registered_models()] == ["mnist-cnn"]


@pytest.mark.slow
def test_champion_tested_on_other_data_is_not_compared(swept_store, capsys):
    set_test_accuracy("a", 0.50)
    assert main(["promote", "a"]) == 0
    run_id = set_test_accuracy("b", 0.99)
    MlflowClient().set_tag(run_id, "mnist_exp.test_fingerprint", "0" * 64)
    assert main(["promote", "b"]) == 1
    assert "tested on other data" in capsys.readouterr().err and str(champion().version) == "1"
