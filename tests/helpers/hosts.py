"""Make processes look like separate machines: one Linux network namespace per "host" on a private LAN.

Layout (iproute2 only; no iptables/nft/sysctl needed)::

    root namespace (the test, e.g. an MLflow server)   mx<pid>g<n>  = gateway 10.A.B.1/24
        | veth
    "<tag>.switch" namespace: bridge br0 ── veth ── "<tag>-chief": eth0 10.A.B.2/24, lo, default via gateway
                                         ── veth ── "<tag>-w1":    eth0 10.A.B.3/24 ...

The bridge lives in its own namespace, not the root one: on a machine running Docker (CI runners), br_netfilter
is loaded and the root's iptables FORWARD policy is DROP, so bridged traffic between hosts on a root bridge
would pass that chain and be dropped. The switch namespace has empty tables, and host<->root traffic is local
delivery on the root (INPUT/OUTPUT), so neither ip_forward nor br_netfilter settings matter.

Findings (iproute2 6.1, kernel 6.18):
- ``ip netns exec NS prog`` setns()es and then exec()s prog: the Popen pid *is* the program, so
  ``Popen.kill()``/``send_signal()`` reach it. Its children are not reached; ``kill_all(name)`` kills every
  process in the namespace (``ip netns pids``), like pulling the machine's power.
- ``partition(name)`` sets the switch's end of that host's veth down: the host sees NO-CARRIER (a pulled cable).
  Nothing sends RST: established TCP connections retransmit silently and resume after ``heal``. With the
  default static ARP, new connects to or from the cut host just time out (a black hole). With dynamic ARP
  (``static_arp=False``) they fail EHOSTUNREACH after ~3 s instead: ARP gives up, and the cut host's own
  neighbour entries are flushed on carrier loss.
- Deleting a namespace is asynchronous in the kernel, so teardown deletes the root's veth explicitly first:
  ``ip link`` is clean when ``close()`` returns.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "ftp_proxy")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_STALE_NS = re.compile(r"^mx-(\d+)-\d+[-.]")  # our namespaces: mx-<pid>-<n>-<host> and mx-<pid>-<n>.switch
_STALE_LINK = re.compile(r"^mx(\d+)g\d+$")  # our root-side veths
_counter = 0


class HostsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, timeout: float = 20, stdin: str | None = None) -> str:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and proc.returncode:
        raise HostsError(f"ip {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _alive(pid: int) -> bool:
    """Whether pid runs; a zombie (killed, parent not yet reaped it) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_netns_pids(ns: str, sig: int = signal.SIGKILL) -> list[int]:
    pids = [int(p) for p in _ip("netns", "pids", ns, check=False).split()]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """None if network namespaces, veths and bridges can be made here, else the reason (one line)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return f"network namespaces need root (euid {os.geteuid()})"
    if not os.path.exists(IP):
        return "iproute2's ip command is not installed"
    probe = f"mx-{os.getpid()}-0.probe"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except (HostsError, OSError, subprocess.TimeoutExpired) as e:
        return f"cannot make network namespaces here: {e}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def require() -> None:
    """In a test: skip when namespaces cannot be made here, but fail in CI (CI=true), where they must work."""
    import pytest

    reason = available()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs network namespaces: {reason}")
        pytest.skip(reason)


def cleanup_stale() -> list[str]:
    """Remove namespaces and root veths left by an earlier, killed run (owner pid no longer alive)."""
    removed = []
    for line in _ip("-o", "link", "show", check=False).splitlines():
        m = re.match(r"^\d+:\s+([^:@]+)", line)
        if m and (s := _STALE_LINK.match(m.group(1))) and not _alive(int(s.group(1))):
            _ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    for line in _ip("netns", "list", check=False).splitlines():
        ns = line.split()[0] if line.split() else ""
        if (s := _STALE_NS.match(ns)) and not _alive(int(s.group(1))):
            _kill_netns_pids(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    return removed


def _pick_subnet() -> ipaddress.IPv4Network:
    """A random 10.A.B.0/24 that overlaps no address or route of the root namespace (other runs included)."""
    taken = []
    for line in (_ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show", "table", "all")).splitlines():
        for word in line.split():
            if "." not in word:  # "1500" would parse as 0.0.5.220
                continue
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if net.version == 4 and net.prefixlen > 0:
                taken.append(net)
    rng = random.Random()  # not the test's seeded global random: two runs must differ
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(100, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise HostsError("no free 10.x.y.0/24 subnet for the namespaces")


class Hosts:
    """Named network namespaces on one private /24, reachable from the root namespace at ``gateway``.

    ``with Hosts(["chief", "w1"], base=tmp_path) as hosts: hosts.popen("w1", [...])``.
    ``base``: where the per-host home folders go (kept); default a temp folder removed at close.
    ``static_arp`` (default): every host and the root know every MAC up front, so a partition is a black hole:
    packets vanish, connects just time out. False: hosts learn MACs by ARP, as on a real LAN, so a connect
    to or from a cut host fails EHOSTUNREACH after ~3 s (ARP gives up) instead of hanging.
    """

    def __init__(self, names, base: str | os.PathLike | None = None, static_arp: bool = True):
        global _counter
        names = list(names)
        for name in names:
            if not _NAME.match(name):
                raise HostsError(f"host name {name!r}: use 1-32 of a-z, 0-9, _ and -, starting with a letter or digit")
        if len(set(names)) != len(names) or not names:
            raise HostsError(f"host names {names}: need at least one, all different")
        _counter += 1
        self.names = names
        self.tag = f"mx-{os.getpid()}-{_counter}"
        self._switch = f"{self.tag}.switch"
        self._uplink = f"mx{os.getpid()}g{_counter}"  # the root's end; <= 15 chars (pid <= 7 digits)
        self._base = Path(base) if base is not None else None
        self.static_arp = static_arp
        self._own_base = None
        self._procs: list[subprocess.Popen] = []
        self._made: list[str] = []  # namespaces created so far, for teardown after a partial start
        self.partitioned: set[str] = set()
        self.subnet = None
        self.gateway = None
        self.timings: dict[str, float] = {}

    # -- lifecycle --------------------------------------------------------------------------------------

    def __enter__(self) -> Hosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> Hosts:
        t0 = time.monotonic()
        cleanup_stale()
        if self._base is None:
            self._own_base = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
            self._base = self._own_base
        atexit.register(self.close)
        self.subnet = _pick_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._addrs = {name: str(hosts[1 + i]) for i, name in enumerate(self.names)}
        plen = self.subnet.prefixlen
        sw = self._switch
        _ip("netns", "add", sw)
        self._made.append(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        # the root's uplink: created in the root with its peer straight in the switch namespace
        _ip("link", "add", self._uplink, "address", self._mac(self.gateway), "type", "veth", "peer", "name", "up0",
            "netns", sw)
        _ip("-n", sw, "link", "set", "up0", "master", "br0", "up")
        _ip("addr", "add", f"{self.gateway}/{plen}", "dev", self._uplink)
        _ip("link", "set", self._uplink, "up")
        for i, name in enumerate(self.names):
            ns = self.netns(name)
            _ip("netns", "add", ns)
            self._made.append(ns)
            # created in the switch namespace with the peer straight in the host's: no root-namespace names
            _ip("-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns,
                "address", self._mac(self._addrs[name]))
            _ip("-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self._addrs[name]}/{plen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.gateway)
            (self.home(name) / "tmp").mkdir(parents=True, exist_ok=True)
        if self.static_arp:
            # permanent entries survive the carrier loss of a partition (dynamic ones are flushed and re-ARPed)
            everyone = [self.gateway, *self._addrs.values()]
            for ns, dev, me in [(None, self._uplink, self.gateway)] + [
                    (self.netns(n), "eth0", self._addrs[n]) for n in self.names]:
                lines = [f"neigh replace {a} lladdr {self._mac(a)} dev {dev} nud permanent" for a in everyone if a != me]
                _ip(*(["-n", ns] if ns else []), "-batch", "-", stdin="\n".join(lines) + "\n")
        self.timings["setup_s"] = time.monotonic() - t0
        return self

    def close(self) -> None:
        """Kill every process in the namespaces, delete the root veth and the namespaces. Idempotent."""
        t0 = time.monotonic()
        atexit.unregister(self.close)
        for ns in self._made:
            _kill_netns_pids(ns)
        for p in self._procs:  # reap ours (no zombies); already killed above
            try:
                p.kill()
                p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._procs.clear()
        # the kernel tears namespaces down asynchronously; deleting our root link directly is synchronous
        _ip("link", "del", self._uplink, check=False)  # absent when start failed early: fine
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        if self._own_base is not None:
            shutil.rmtree(self._own_base, ignore_errors=True)
            self._own_base = None
        self.timings["teardown_s"] = time.monotonic() - t0

    def _mac(self, addr: str) -> str:
        """A locally administered MAC derived from the (unique) address: 02:6d:78 ("mx") + its last 3 octets."""
        return "02:6d:78:" + ":".join(f"{int(o):02x}" for o in addr.split(".")[1:])

    # -- queries ----------------------------------------------------------------------------------------

    def _check(self, name: str) -> None:
        if name not in self.names:
            raise HostsError(f"host {name!r}: not one of {self.names}")

    def addr(self, name: str) -> str:
        """The host's IPv4 address on the private LAN."""
        self._check(name)
        return self._addrs[name]

    def netns(self, name: str) -> str:
        """The namespace's name, for ``ip netns exec`` / ``ip -n``."""
        self._check(name)
        return f"{self.tag}-{name}"

    def home(self, name: str) -> Path:
        """The host's own folder (its cwd, HOME and TMPDIR parent); shares no files with the others."""
        self._check(name)
        return self._base / name

    # -- processes --------------------------------------------------------------------------------------

    def env(self, name: str, env: dict | None = None) -> dict:
        """os.environ, then this host's HOME/TMPDIR and no proxy, then ``env`` on top (as helpers.cli)."""
        full = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
        home = self.home(name)
        # a namespace reaches only the LAN and the root: a proxy from the environment is unreachable
        full.update(HOME=str(home), TMPDIR=str(home / "tmp"), no_proxy="*", NO_PROXY="*")
        full.update(env or {})
        return full

    def popen(self, name: str, argv, env: dict | None = None, cwd=None, **kw) -> subprocess.Popen:
        """Start argv on host ``name`` (``ip netns exec``, which execs: the Popen pid is the program).

        env: variables over ``self.env(name)``; cwd: default the host's home. New session by default, so
        the program can be signalled as a group (``os.killpg(p.pid, sig)``) and a terminal's ^C misses it.
        """
        kw.setdefault("start_new_session", True)
        argv = [IP, "netns", "exec", self.netns(name), *map(str, argv)]
        proc = subprocess.Popen(argv, env=self.env(name, env), cwd=cwd or self.home(name), **kw)
        self._procs.append(proc)
        return proc

    def run(self, name: str, argv, env: dict | None = None, cwd=None, **kw) -> subprocess.CompletedProcess:
        """Run argv on host ``name`` to completion (subprocess.run's keywords)."""
        argv = [IP, "netns", "exec", self.netns(name), *map(str, argv)]
        return subprocess.run(argv, env=self.env(name, env), cwd=cwd or self.home(name), **kw)

    def pids(self, name: str) -> list[int]:
        """Every process now running on host ``name``."""
        return [int(p) for p in _ip("netns", "pids", self.netns(name)).split()]

    def kill_all(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process on host ``name`` (SIGKILL: the machine loses power). Returns their pids."""
        return _kill_netns_pids(self.netns(name), sig)

    # -- network faults ---------------------------------------------------------------------------------

    def partition(self, name: str) -> None:
        """Pull host ``name``'s cable: it loses carrier, packets to and from it are dropped, nothing is reset."""
        self._check(name)
        _ip("-n", self._switch, "link", "set", f"p{self.names.index(name)}", "down")
        self.partitioned.add(name)

    def heal(self, name: str) -> None:
        """Plug the cable back in; connections that were kept resume on their next retransmission."""
        self._check(name)
        _ip("-n", self._switch, "link", "set", f"p{self.names.index(name)}", "up")
        self.partitioned.discard(name)
