"""Ports a command listens on (``mnist-exp ui``, ``mnist-exp server``), checked before a server starts."""

from __future__ import annotations

import errno
import socket

from mnist_exp.runtime.errors import ConfigError


def check_port_free(host: str, port: int) -> None:
    """Bind host:port once, as the server will: a busy port is one line here, not a server that exits 0."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be in 1-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn/gunicorn do: TIME_WAIT is no conflict
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port {port}: {host}:{port} is already in use (another mnist-exp ui?); "
                                  "stop it or choose another --port") from None
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
