import re

import numpy as np
from PIL import Image

from mnist_exp._version import __version__
from mnist_exp.cli import main

from helpers import runs
import pytest


@pytest.mark.slow
def test_train_logs_params_curves_test_metrics_plots_and_a_loadable_model(store, capsys):
    rc = main(["train", "--set", "data.train_size=300", "--set", "data.test_size=100", "--epochs", "2",
               "--set", "hp.filters_1=32"])
    assert rc == 0
    out = capsys.readouterr().out
    [run] = runs()
    assert run.info.status == "FINISHED"
    assert f"run {run.info.run_id}: test accuracy" in out and "mnist-exp ui" in out
    epochs = re.findall(r"^\[train baseline\] epoch (\d)/2: loss \S+ accuracy \S+ val_loss \S+ val_accuracy \S+ \(\S+ s\)$",
                        out, re.M)
    assert epochs == ["1", "2"] and "\r" not in out and "\x1b[" not in out, out  # one line per epoch, no bar
    p = run.data.params
    assert p["filters_1"] == "32" and p["learning_rate"] == "0.001" and p["batch_size"] == "16"
    assert p["activation"] == "relu" and p["dropout_1"] == "0.5" and p["dense_units"] == "128"
    assert p["training.epochs"] == "2" and p["seed"] == "42" and p["data.source"] == "embedded"
    assert p["data.n_train"] == "270" and p["data.n_val"] == "30" and p["data.n_test"] == "100"

    from mlflow import MlflowClient

    c = MlflowClient()
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        hist = c.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in hist) == [1, 2], metric
    m = run.data.metrics
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_loss"] > 0 and m["epochs_run"] == 2
    # what the run cost: MLflow's machine-wide samples, and this process's own CPU time and memory
    assert c.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert m["process_cpu_s"] > 0 and m["process_peak_rss_mb"] >= 100 and m["process_rss_end_mb"] > 0

    tags = run.data.tags
    for key in ("mnist_exp.version", "mnist_exp.tensorflow", "mnist_exp.keras", "mnist_exp.mlflow"):
        assert tags[key]
    assert tags["mnist_exp.version"] == __version__  # the release that wrote the run
    assert len(tags["mnist_exp.data_fingerprint"]) == 64
    contexts = sorted(i.tags[0].value if i.tags[0].key == "mlflow.data.context" else i.tags[1].value
                      for i in run.inputs.dataset_inputs)
    assert contexts == ["testing", "training"]

    plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("learning_curves", "predictions", "confusion_matrix", "mistakes")}
    for path in plots:
        local = c.download_artifacts(run.info.run_id, path, str(store))
        with Image.open(local) as im:
            im.verify()
        with Image.open(local) as im:
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 200
            assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas

    import mlflow

    model = mlflow.pyfunc.load_model(tags["mnist_exp.model_uri"])
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    probs = np.asarray(model.predict(x))
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert model.metadata.signature is not None
    assert model.metadata.saved_input_example_info is not None


def test_train_with_zero_validation_split_logs_train_curves_only(store):
    assert main(["train", "--set", "data.train_size=200", "--set", "data.test_size=100", "--epochs", "1",
                 "--set", "data.validation_split=0"]) == 0
    [run] = runs()
    assert "val_accuracy" not in run.data.metrics and "accuracy" in run.data.metrics
    assert run.data.params["data.n_train"] == "200"
