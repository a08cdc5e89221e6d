"""What the chief and its workers say to each other, beside Keras Tuner's own Oracle service.

Transport: Keras Tuner's gRPC ``Oracle`` service (create/update/end trial) on one port, plus a small
``mnist_exp.Sweep`` service of JSON methods on the same server: ``Describe`` (the sweep's definition,
so a worker needs no file from the chief's machine), ``Renew`` (the worker's lease on its trial)
and ``Claim`` (may this worker commit its trial's result?). Every call carries the shared token and
the worker's id as gRPC metadata. With ``--tls-cert``/``--tls-key`` the chief serves gRPC's TLS and workers
trust its certificate through ``--tls-ca``; a worker that speaks the other transport, or does not trust the
certificate, is told so in one line before it waits (:func:`check_transport`).
"""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

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


def channel(host: str, port: int, token: str, worker: str, max_timeout_s: float, ca: bytes | None = None):
    """A channel to the chief; ``ca``: TLS, trusting the certificates that CA (PEM) signed."""
    import grpc

    # Trials are small messages; keepalive notices a chief whose machine vanished without a FIN.
    options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
               ("grpc.enable_http_proxy", 0)]
    if ca is None:
        raw = grpc.insecure_channel(target(host, port), options=options)
    else:
        raw = grpc.secure_channel(target(host, port), grpc.ssl_channel_credentials(root_certificates=ca), options)
    return grpc.intercept_channel(raw, client_interceptor(token, worker, max_timeout_s))


# --- TLS ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTLS:
    """The chief's certificate chain and private key (PEM), checked to be a pair."""

    cert: bytes
    key: bytes


def _read_pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def server_tls(cert: str | None, key: str | None) -> ServerTLS | None:
    """``--tls-cert``/``--tls-key`` read and checked (both or neither; a key that belongs to the certificate)."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError(f"{'--tls-cert' if not cert else '--tls-key'}: needed with "
                          f"{'--tls-key' if not cert else '--tls-cert'}")
    cert_pem, key_pem = _read_pem(cert, "--tls-cert"), _read_pem(key, "--tls-key")
    if b"ENCRYPTED" in key_pem:
        raise ConfigError(f"--tls-key {key}: encrypted with a passphrase, which gRPC cannot use; give the key "
                          "unencrypted (e.g. openssl pkey -in KEY -out KEY.plain), readable by this user only")
    try:  # the password callable: never a prompt on the terminal
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        raise ConfigError(f"--tls-key {key}: not the private key of --tls-cert {cert}, or not a certificate and "
                          f"key in PEM ({e.reason or e})") from None
    return ServerTLS(cert_pem, key_pem)


def client_ca(path: str | None) -> bytes | None:
    """``--tls-ca``: the certificates a worker trusts (PEM), checked to load."""
    if not path:
        return None
    data = _read_pem(path, "--tls-ca")
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"--tls-ca {path}: no certificate could be loaded ({e})") from None
    return data


def check_transport(host: str, port: int, ca: bytes | None, ca_path: str | None, address: str,
                    wait_s: float) -> None:
    """Once something answers at the chief's address, check that it speaks this worker's transport (TLS that
    ``ca`` vouches for, or plaintext): a mismatch is one line now, where gRPC would retry until UNAVAILABLE.
    Nothing answering within ``wait_s`` is left to gRPC to report."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.5)
    ctx = ssl.create_default_context(cadata=ca.decode("ascii", "replace")) if ca else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["h2"])
    untrusted = None
    try:
        with sock, ctx.wrap_socket(sock, server_hostname=host):
            speaks_tls = True
    except ssl.SSLCertVerificationError as e:
        speaks_tls, untrusted = True, e.verify_message or str(e)
    except (ssl.SSLError, OSError):
        speaks_tls = False
    if untrusted:
        raise ConfigError(f"--tls-ca {ca_path}: does not vouch for the certificate of the chief at {address} "
                          f"({untrusted}); give the CA that signed the chief's --tls-cert")
    if ca and not speaks_tls:
        raise ConfigError(f"--chief {address}: the chief does not speak TLS (started without --tls-cert); "
                          "drop --tls-ca, or restart the chief with --tls-cert and --tls-key")
    if not ca and speaks_tls:
        raise ConfigError(f"--chief {address}: the chief speaks TLS; give the CA certificate that signed its "
                          "--tls-cert with --tls-ca PEM")


def json_method(chan, name: str):
    return chan.unary_unary(f"/{SERVICE}/{name}", request_serializer=dumps, response_deserializer=loads)
