"""The champion served by `mlflow models serve` answers /invocations with 10 class probabilities."""

import json
import os
import subprocess
import urllib.request

import numpy as np

from mnist_exp.cli import main
from mnist_exp.model.data import to_model_inputs

from helpers import VENV_BIN, free_port, wait_http
import pytest


@pytest.mark.slow
def test_champion_serves_real_digits(swept_store, embedded):
    assert main(["promote", "a"]) == 0
    import mlflow

    local = mlflow.pyfunc.load_model("models:/mnist-cnn@champion")
    x = to_model_inputs(embedded["x_test"][:16])
    expected = np.asarray(local.predict(x))

    port = free_port()
    # uvicorn is found on PATH only from the venv: call mlflow by the venv's bin path, with that bin on PATH.
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/mnist-cnn@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", server)
        body = json.dumps({"inputs": x.tolist()}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        probs = np.asarray(answer["predictions"])
        assert probs.shape == (16, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        accuracy = (probs.argmax(axis=1) == embedded["y_test"][:16]).mean()
        assert accuracy >= 0.5  # a 2-epoch model on 480 digits; chance is 0.1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
