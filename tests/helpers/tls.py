"""A private certificate authority made in a test, with OpenSSL's command line: ``ca.pem`` and a server
certificate for 127.0.0.1, localhost and any other addresses asked for, signed by it (``server.pem``,
``server.key``, 0600)."""

import os
import subprocess
from pathlib import Path


def make_ca(folder: Path, ips: tuple[str, ...] = ()) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=mnist-exp test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text(f"subjectAltName={','.join(f'IP:{ip}' for ip in ('127.0.0.1', *ips))},DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    for key in ("ca.key", "server.key"):
        os.chmod(folder / key, 0o600)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
