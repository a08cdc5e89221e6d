"""The chief's TLS (search/distributed/wire.py): a worker that trusts the chief's CA talks to it; a plaintext worker,
a worker trusting another CA, and a TLS worker at a plaintext chief are each told so in one line at once, not after
gRPC's wait. Real gRPC servers on 127.0.0.1 with certificates made in the test (no TensorFlow)."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest

from helpers import free_port
from helpers.tls import make_ca
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.search.distributed import wire


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    return make_ca(base / "ours"), make_ca(base / "theirs")


def serve(tls: wire.ServerTLS | None):
    """A gRPC server with the Sweep service's Describe, plaintext or TLS, on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: {"protocol": wire.PROTOCOL},
                                                  request_deserializer=wire.loads, response_serializer=wire.dumps)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, {"Describe": handler}),))
    target = f"127.0.0.1:{free_port()}"
    if tls is None:
        port = server.add_insecure_port(target)
    else:
        port = server.add_secure_port(target, grpc.ssl_server_credentials([(tls.key, tls.cert)]))
    server.start()
    return server, port


@pytest.fixture(scope="module")
def tls_chief(pki):
    ours, _ = pki
    server, port = serve(wire.server_tls(str(ours["cert"]), str(ours["key"])))
    yield port
    server.stop(0)


def test_a_worker_trusting_the_chiefs_ca_is_answered_over_tls(pki, tls_chief):
    ours, _ = pki
    ca = wire.client_ca(str(ours["ca"]))
    wire.check_transport("127.0.0.1", tls_chief, ca, str(ours["ca"]), f"127.0.0.1:{tls_chief}", 5)
    chan = wire.channel("127.0.0.1", tls_chief, "t" * 16, "w1", 10, ca)
    assert wire.json_method(chan, "Describe")({}, timeout=10) == {"protocol": wire.PROTOCOL}
    chan.close()


@pytest.mark.parametrize("who", ["plaintext", "other CA"])
def test_a_plaintext_or_untrusting_worker_is_refused_in_one_line_at_once(pki, tls_chief, who):
    _, theirs = pki
    ca_path = None if who == "plaintext" else str(theirs["ca"])
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        wire.check_transport("127.0.0.1", tls_chief, wire.client_ca(ca_path), ca_path, f"127.0.0.1:{tls_chief}", 60)
    assert time.monotonic() - t0 < 10  # not gRPC's wait for the chief
    line = str(e.value)
    assert "\n" not in line
    if who == "plaintext":
        assert line == (f"--chief 127.0.0.1:{tls_chief}: the chief speaks TLS; give the CA certificate that signed "
                        "its --tls-cert with --tls-ca PEM")
    else:
        assert line.startswith(f"--tls-ca {ca_path}: does not vouch for the certificate of the chief at "
                               f"127.0.0.1:{tls_chief} (")
        assert "certificate" in line


def test_a_tls_worker_at_a_plaintext_chief_is_refused_in_one_line(pki):
    ours, _ = pki
    server, port = serve(None)
    try:
        with pytest.raises(ConfigError, match=rf"^--chief 127.0.0.1:{port}: the chief does not speak TLS \(started "
                                              r"without --tls-cert\); drop --tls-ca"):
            wire.check_transport("127.0.0.1", port, wire.client_ca(str(ours["ca"])), str(ours["ca"]),
                                 f"127.0.0.1:{port}", 60)
        wire.check_transport("127.0.0.1", port, None, None, f"127.0.0.1:{port}", 5)  # plaintext to plaintext: fine
    finally:
        server.stop(0)


def test_tls_files_are_checked_before_anything_starts(pki, tmp_path):
    ours, theirs = pki
    with pytest.raises(ConfigError, match=r"^--tls-key: needed with --tls-cert$"):
        wire.server_tls(str(ours["cert"]), None)
    with pytest.raises(ConfigError, match=rf"^--tls-key {theirs['key']}: not the private key of --tls-cert "):
        wire.server_tls(str(ours["cert"]), str(theirs["key"]))
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(ConfigError, match=r"^--tls-ca .*junk.pem: not a PEM file \(no -----BEGIN line\)$"):
        wire.client_ca(str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match=r"^--tls-ca .*missing.pem: cannot be read \(No such file or directory\)$"):
        wire.client_ca(str(tmp_path / "missing.pem"))
