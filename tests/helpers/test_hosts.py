"""The namespace harness: hosts on a private LAN reach each other and the root, not the root's loopback;
a partition drops packets without resets and heals; kills reach the real program; teardown leaves nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import hosts as hosts_mod
from helpers.hosts import Hosts

# Network namespaces need root; one xdist worker runs them all (each claims a private subnet of the root namespace).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("netns")]

PY = sys.executable

# An echo server; prints "<port> <pid>" once it listens (the test's synchronisation point).
SERVER = """
import os, socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
srv = Server((sys.argv[1], int(sys.argv[2])), Echo)
print(srv.server_address[1], os.getpid(), flush=True)
srv.serve_forever()
"""

# Connects, sends "ping", prints the echo, or the error's class name.
CLIENT = """
import socket, sys

try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.sendall(b"ping")
        print(s.recv(4).decode())
except OSError as e:
    print(type(e).__name__)
"""


@pytest.fixture
def hosts(tmp_path):
    hosts_mod.require()
    with Hosts(["a", "b"], base=tmp_path) as h:
        yield h


def serve(hosts, name, bind, port=0):
    """An echo server on host ``name`` bound to ``bind``; returns (Popen, port, pid it reported)."""
    proc = hosts.popen(name, [PY, "-c", SERVER, bind, port], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line, f"server on {name} exited {proc.wait()}"
    return proc, int(line[0]), int(line[1])


def serve_root(bind):
    srv = socket.create_server((bind, 0))
    return srv, srv.getsockname()[1]


def client(hosts, name, addr, port, timeout=5.0):
    out = hosts.run(name, [PY, "-c", CLIENT, addr, port, timeout], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def accept_echo(srv):
    """Serve one echo on a root-namespace listening socket (in the test process, after the client ran)."""
    srv.settimeout(5)
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(4))


def test_hosts_reach_each_other_and_the_root(hosts):
    proc, port, pid = serve(hosts, "a", hosts.addr("a"))
    assert proc.pid == pid  # ip netns exec execs: the Popen is the program itself
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert client(hosts, "b", hosts.addr("a"), port) == "ping"
    with socket.create_connection((hosts.addr("a"), port), timeout=5) as s:  # from the root namespace
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"

    srv, rport = serve_root(hosts.gateway)
    with srv:
        # the client's SYN is answered by the kernel's backlog; the echo comes once we accept
        c = hosts.popen("a", [PY, "-c", CLIENT, hosts.gateway, rport, 5], stdout=subprocess.PIPE, text=True)
        accept_echo(srv)
        assert c.communicate(timeout=10)[0].strip() == "ping"

    out = hosts.run("b", [PY, "-c", "import os; print(os.environ['HOME'], os.getcwd(), os.environ['no_proxy'])"],
                    capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(hosts.home("b")), str(hosts.home("b")), "*"]
    assert hosts.home("a") != hosts.home("b")


def test_loopback_is_each_hosts_own(hosts):
    srv, port = serve_root("127.0.0.1")
    with srv:
        assert client(hosts, "a", "127.0.0.1", port) == "ConnectionRefusedError"
    _, aport, _ = serve(hosts, "a", "127.0.0.1")
    assert client(hosts, "a", "127.0.0.1", aport) == "ping"  # its own loopback works
    assert client(hosts, "b", hosts.addr("a"), aport) == "ConnectionRefusedError"  # and is not on its LAN address


def test_partition_drops_without_reset_and_heals(hosts):
    _, port, _ = serve(hosts, "a", hosts.addr("a"))
    kept = socket.create_connection((hosts.addr("a"), port), timeout=5)
    kept.sendall(b"1")
    assert kept.recv(1) == b"1"

    srv, rport = serve_root(hosts.gateway)
    hosts.partition("a")
    kept.sendall(b"2")  # queued, retransmitted into the void
    t0 = time.monotonic()
    into = hosts.popen("b", [PY, "-c", CLIENT, hosts.addr("a"), port, 2], stdout=subprocess.PIPE, text=True)
    out_of = hosts.popen("a", [PY, "-c", CLIENT, hosts.gateway, rport, 2], stdout=subprocess.PIPE, text=True)
    # no RST, no refusal, no EHOSTUNREACH (static ARP): both ways it just hangs
    assert into.communicate(timeout=10)[0].strip() == "TimeoutError"
    assert out_of.communicate(timeout=10)[0].strip() == "TimeoutError"
    assert time.monotonic() - t0 >= 1.9
    srv.close()
    kept.settimeout(0.2)
    with pytest.raises(TimeoutError):  # not ConnectionResetError
        kept.recv(1)

    hosts.heal("a")
    kept.settimeout(10)
    assert kept.recv(1) == b"2"  # the kept connection resumes on the next retransmission
    kept.close()
    assert client(hosts, "b", hosts.addr("a"), port) == "ping"


def test_kill_reaches_the_real_program(hosts):
    proc, _, pid = serve(hosts, "a", hosts.addr("a"))
    assert hosts.pids("a") == [pid]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert hosts.pids("a") == []

    # a program with a child: kill_all takes the whole machine down
    parent = hosts.popen("b", [PY, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               "'import time; time.sleep(60)'])"])
    deadline = time.monotonic() + 10
    while len(hosts.pids("b")) < 2:
        assert time.monotonic() < deadline, hosts.pids("b")
        time.sleep(0.05)
    assert parent.pid in hosts.kill_all("b")
    assert parent.wait(timeout=5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while hosts.pids("b"):  # the orphaned child is reaped by init, not by us
        assert time.monotonic() < deadline, hosts.pids("b")
        time.sleep(0.05)


def ip(*args):
    return subprocess.run([hosts_mod.IP, *args], capture_output=True, text=True, check=True).stdout


def test_teardown_leaves_nothing_even_after_a_failure():
    hosts_mod.require()
    h = Hosts(["chief", "w1", "w2"])
    with pytest.raises(RuntimeError, match="boom"), h:
        h.popen("w1", [PY, "-c", "import time; time.sleep(60)"])
        h.partition("w2")
        home = h.home("chief")
        assert home.is_dir()
        raise RuntimeError("boom")
    assert h.tag not in ip("netns", "list")
    assert h._uplink not in ip("-o", "link", "show")
    assert h.gateway not in ip("-4", "-o", "addr", "show")
    assert not home.exists()
    print(f"3 hosts: setup {h.timings['setup_s']:.2f} s, teardown {h.timings['teardown_s']:.2f} s")


def test_stale_leftovers_of_a_killed_run_are_removed():
    hosts_mod.require()
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns, link = f"mx-{dead.pid}-1.switch", f"mx{dead.pid}g1"
    live = f"mx-{os.getpid()}-999.switch"  # ours, alive: must stay
    ip("netns", "add", live)
    try:
        ip("netns", "add", ns)
        # a concurrent run's Hosts.start may clean ns up before this: that is cleanup working too
        subprocess.run([hosts_mod.IP, "link", "add", link, "type", "veth", "peer", "name", "up0", "netns", ns])
        hosts_mod.cleanup_stale()
        assert ns not in ip("netns", "list") and link not in ip("-o", "link", "show")
        assert live in ip("netns", "list")
    finally:
        ip("netns", "del", live)
