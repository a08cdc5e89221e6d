"""A tracking server as the store: unreachable or silent servers are one line and exit 2 before any work,
MLflow's HTTP limits are set (the user's kept), errors that mean "server unavailable" are recognised
(server_store.is_unavailable), and a read whose answer was cut off is asked again."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from mnist_exp.tracking import server_store
from mnist_exp.tracking import store as storelib

from helpers import TINY, VENV_BIN, free_port


class _Server:
    """A real server on 127.0.0.1 in a thread: ``answer(handler)`` replies to each GET/POST, or never."""

    def __init__(self, answer=None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        self.httpd = None
        if answer is None:  # accepts every connection and never says a word
            threading.Thread(target=self._hold, daemon=True).start()
        else:
            self.listener.close()

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    answer(self)

                do_POST = do_GET

                def log_message(self, *args):
                    pass

            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _hold(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
        else:
            self.listener.close()
        for c in self.held:
            c.close()


def _reply(status: int, body: dict | str):
    def answer(h):
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json" if isinstance(body, dict) else "text/html")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return answer


@pytest.fixture
def silent_server():
    s = _Server()
    yield s
    s.close()


@pytest.mark.slow
def test_unreachable_or_silent_server_is_one_line_within_15_s(tmp_path, silent_server):
    """A closed port and a server that accepts and never answers: sweep, compare and promote each say so in one
    line naming the URI, exit 2, within 15 s (whole process), before any training, writing nothing."""
    closed = f"http://127.0.0.1:{free_port()}"
    runs = [(uri, argv) for uri in (closed, silent_server.uri)
            for argv in (["sweep", "--name", "s", *TINY], ["compare"], ["promote", "--dry-run"])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    started, procs = time.monotonic(), []
    for uri, argv in runs:
        procs.append(subprocess.Popen([str(VENV_BIN / "mnist-exp"), *argv, "--tracking-uri", uri], cwd=tmp_path, text=True,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for (uri, argv), p in zip(runs, procs):
        out, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - started
        assert p.returncode == 2, (uri, argv, out, err[-2000:])
        why = "cannot be reached (Connection refused)" if uri == closed else "did not answer within 4 s"
        assert err.startswith(f"mnist-exp {argv[0]}: error: tracking server {uri} {why} (") and err.count("\n") == 1, err
        assert err.endswith("start it, or check --tracking-uri / MLFLOW_TRACKING_URI\n"), err
        assert elapsed < 15, f"{argv} on {uri}: {elapsed:.1f} s"
        assert "epoch" not in out.lower(), out
    assert list(tmp_path.iterdir()) == []  # no mlruns/, no tuner folder


def test_preflight_accepts_mlflow_answers_and_refuses_others():
    ok = _Server(_reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment"}))
    found = _Server(_reply(200, {"experiment": {"experiment_id": "1", "name": "mnist-exp"}}))
    html = _Server(_reply(404, "<html>Not Found</html>"))
    down = _Server(_reply(503, "<html>Service Unavailable</html>"))
    try:
        server_store.check_server(ok.uri, deadline_s=2)
        server_store.check_server(found.uri, deadline_s=2)
        with pytest.raises(storelib.StoreError, match=rf"tracking server {html.uri} answered HTTP 404 to MLflow's REST API: "
                                                   "not an MLflow tracking server"):
            server_store.check_server(html.uri, deadline_s=2)
        t = time.monotonic()
        with pytest.raises(storelib.StoreError, match=rf"tracking server {down.uri} answered HTTP 503 \(3 tries in \d s\)"):
            server_store.check_server(down.uri, deadline_s=3)  # retried after 0.5 s and 1 s; a third wait would pass 3 s
        assert 1.4 < time.monotonic() - t < 3
    finally:
        for s in (ok, found, html, down):
            s.close()


def test_http_limits_are_set_for_mlflow_and_keep_the_users(monkeypatch):
    from mlflow import environment_variables as ev

    for key in server_store.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    ok = _Server(_reply(200, {"experiment": {}}))
    try:
        storelib.prepare(ok.uri, write=True)
    finally:
        ok.close()
    assert ev.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 77  # the user's value
    assert ev.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 7
    assert ev.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
    assert ev.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get() == 1.0


def test_is_unavailable_on_real_client_errors(monkeypatch, silent_server, store):
    """Errors raised by MLflow's own client (retries cut to 0 to keep the test short)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")

    def error(uri: str, call=lambda c: c.get_experiment_by_name("mnist-exp")) -> BaseException:
        with pytest.raises(MlflowException) as info:
            call(MlflowClient(uri))
        return info.value

    failing = _Server(_reply(503, "<html>Service Unavailable</html>"))
    bad_request = _Server(_reply(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad name"}))
    try:
        refused = error(f"http://127.0.0.1:{free_port()}")
        assert server_store.is_unavailable(refused)
        assert server_store.is_unavailable(MlflowException(str(refused)))  # by its message alone (no exception chain)
        assert server_store.is_unavailable(error(silent_server.uri))  # read timeout
        assert server_store.is_unavailable(error(failing.uri))  # 5xx after the retries
        assert not server_store.is_unavailable(error(bad_request.uri))  # the server answered: a real error
    finally:
        failing.close()
        bad_request.close()
    db = store / "mlruns" / "mlflow.db"
    assert not server_store.is_unavailable(error(f"sqlite:///{db}", lambda c: c.get_run("0" * 32)))  # no such run
    assert not server_store.is_unavailable(BrokenPipeError("stdout closed"))
    assert not server_store.is_unavailable(ValueError("x"))


def test_a_read_cut_off_mid_answer_is_asked_again_and_a_write_is_not(monkeypatch):
    """A server stopped while answering: a read (a GET, or a search sent as POST) is sent again within MLflow's
    retry budget and answered; a write is not sent again (the server may have done it) and is an outage."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    bodies = {"/api/2.0/mlflow/experiments/get-by-name": {"experiment": {"experiment_id": "7", "name": "mnist-exp"}},
              "/api/2.0/mlflow/runs/search": {"runs": []},
              "/api/2.0/mlflow/runs/create": {"run": {"info": {"run_id": "a" * 32}}}}
    seen: list[tuple[str, str]] = []

    def cut_first(h):
        path = h.path.split("?")[0]
        seen.append((h.command, path))
        data = json.dumps(bodies[path]).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        whole = seen.count((h.command, path)) > 1 and "gone" not in h.path
        h.wfile.write(data if whole else data[:5])  # then the connection closes: a body cut off

    server = _Server(cut_first)
    server_store.retry_cut_off_reads()
    try:
        client = MlflowClient(server.uri)
        assert client.get_experiment_by_name("mnist-exp").experiment_id == "7"
        assert client.search_runs(["7"]) == []
        with pytest.raises(Exception) as write:
            client.create_run("7")
        with pytest.raises(Exception) as spent:
            client.get_experiment_by_name("gone")
    finally:
        server.close()
    get, search, create = bodies
    assert seen == [("GET", get)] * 2 + [("POST", search)] * 2 + [("POST", create)] + [("GET", get)] * 3, seen
    assert server_store.is_unavailable(write.value) and server_store.is_unavailable(spent.value)
    assert "IncompleteRead" in str(spent.value), spent.value
