"""What the chief and its workers say to each other, beside Keras Tuner's own Oracle service.

Transport: Keras Tuner's gRPC ``Oracle`` service (create/update/end trial) on one port, plus a small
``mnist_exp.Sweep`` service of JSON methods on the same server: ``Describe`` (the sweep's definition,
so a worker needs no file from the chief's machine), ``Renew`` (the worker's lease on its trial)
and ``Claim`` (may this worker commit its trial's result?). Every call carries the shared token and
the worker's id as gRPC metadata. The channel is not encrypted (README: "Sweeps across machines").
"""

from __future__ import annotations

import collections
import json
import os
import re

from mnist_exp.runtime.errors import ConfigError

TOKEN_ENV = "MNIST_EXP_TOKEN"
TOKEN_KEY = "x-mnist-exp-token"  # gRPC metadata keys are lower case
WORKER_KEY = "x-mnist-exp-worker"
SERVICE = "mnist_exp.Sweep"
METHODS = ("Describe", "Renew", "Claim")
MIN_TOKEN = 16
# Bumped when a method is renamed or a method's meaning changes; chief and worker must agree.
# 3: UpdateTrial after every epoch, answered STOPPED when the sweep's pruner stops the trial.
PROTOCOL = 3


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback) -> (host, port); one line naming ``flag`` otherwise."""
    if re.fullmatch(r"\d{1,5}", text or ""):
        text = f"127.0.0.1:{text}"
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", text or "")
    if not m:
        raise ConfigError(f"{flag}: must be HOST:PORT or PORT (loopback), e.g. 10.0.0.5:8470 (got {text!r})")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise ConfigError(f"{flag}: port must be 1-65535 (got {port})")
    return host, int(port)


def target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def token_from_env(who: str) -> str:
    """The shared token from MNIST_EXP_TOKEN: required, and long enough not to be guessed."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"{TOKEN_ENV}: not set; {who} needs the sweep's shared token "
                          f"(e.g. export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_hex(16))'))")
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"{TOKEN_ENV}: at least {MIN_TOKEN} characters (got {len(token)})")
    return token


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def loads(data: bytes):
    return json.loads(data.decode() or "null")


class _Details(collections.namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression")):
    pass


def client_interceptor(token: str, worker: str, max_timeout_s: float):
    """Adds the token and worker id to every call and caps its deadline: Keras Tuner's own client waits up
    to an hour per call, so a worker of a dead chief would hang that long."""
    import grpc

    class Interceptor(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            md = list(details.metadata or []) + [(TOKEN_KEY, token), (WORKER_KEY, worker)]
            timeout = min(details.timeout or max_timeout_s, max_timeout_s)
            return continuation(_Details(details.method, timeout, md, details.credentials,
                                         details.wait_for_ready, details.compression), request)

    Interceptor.__name__ = "MnistExpClientInterceptor"
    return Interceptor()


def channel(host: str, port: int, token: str, worker: str, max_timeout_s: float):
    import grpc

    # Trials are small messages; keepalive notices a chief whose machine vanished without a FIN.
    options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
               ("grpc.enable_http_proxy", 0)]
    raw = grpc.insecure_channel(target(host, port), options=options)
    return grpc.intercept_channel(raw, client_interceptor(token, worker, max_timeout_s))


def json_method(chan, name: str):
    return chan.unary_unary(f"/{SERVICE}/{name}", request_serializer=dumps, response_deserializer=loads)
