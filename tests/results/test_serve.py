"""The champion served by `mlflow models serve` answers /invocations with 10 class probabilities."""

import numpy as np
import pytest

from mnist_exp.cli import main
from mnist_exp.model.data import to_model_inputs

from helpers import VENV_BIN, served_predictions


@pytest.mark.slow
def test_champion_serves_real_digits(swept_store, embedded):
    assert main(["promote", "a"]) == 0
    import mlflow

    local = mlflow.pyfunc.load_model("models:/mnist-cnn@champion")
    x = to_model_inputs(embedded["x_test"][:16])
    expected = np.asarray(local.predict(x))
    probs = served_predictions("models:/mnist-cnn@champion", x, VENV_BIN)
    assert probs.shape == (16, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    accuracy = (probs.argmax(axis=1) == embedded["y_test"][:16]).mean()
    assert accuracy >= 0.5  # a 2-epoch model on 480 digits; chance is 0.1
