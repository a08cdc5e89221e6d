"""A sweep across processes on loopback: one chief (``sweep --serve``) and 1, 2, 4 ``mnist-exp worker`` processes.

    python benchmarks/cluster.py --workers 1,2 --trials 4                      # a few minutes on 2 cores
    python benchmarks/cluster.py --workers 1,2,4 --trials 16 --postgres        # store: a tracking server

For each worker count, one sweep of tiny fixed trials (``--train-size`` digits, ``--epochs``; the baseline
search space) with a fresh store (sqlite, or ``--postgres``: one ``mnist_exp.server`` for all counts), the
workers started as ``mnist-exp worker --threads 1`` the way a remote machine would start them. Measured:

- wall time from the chief's start to its exit, and trials per hour over it and over the trials' own window
  (first trial run's start to last one's end, from the store: without process start-up);
- (a) the chief's overhead per trial, from the chief's side: the chief runs in a child process of this
  script that wraps chief.Chief's gRPC interceptor (no package edit) so that every RPC's handler is timed
  (wall and the serving thread's CPU time, by method), plus the chief process's CPU seconds while serving,
  net of its CPU at rest (measured for ``--idle-s`` before the workers start) and of this script's own calls
  (each costs what one idle Renew cost it in full, gRPC's core included, measured over the idle burst);
- (b) gRPC round trips of ``Renew`` from a client here: back to back on the live chief before its
  workers start (idle) and one every ``--rtt-interval`` s while the sweep runs (under load). CreateTrial is
  not called from here (it would take a trial from the sweep); its cost is the chief-side handler time.
- with ``--postgres``, the tracking server's HTTP requests per trial (its access log).

On a 2-core machine 4 workers oversubscribe the cores: the trials slow down, the chief's figures do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-cluster-token-0123456789abcdef"
PROBE = "probe"  # the worker id of this script's round-trip client: its calls are not a trial's

EXPERIMENT = """name: {name}
search_space: {space}
data: {{source: {data}, train_size: {train}, test_size: {test}, validation_split: 0.2}}
training: {{epochs: {epochs}, threads: 1}}
tuner: {{kind: {tuner}, max_trials: {trials}}}
"""


# --- the chief, in a child process ----------------------------------------------------------------------------


def chief_child(cfg: dict) -> int:
    """``mnist-exp sweep --serve`` in this process, every RPC timed by an interceptor around the chief's own."""
    import grpc

    from mnist_exp.search.distributed import oracle_chief as chief_mod
    from mnist_exp import cli
    from mnist_exp.search.distributed import wire

    calls, lock, marks = [], threading.Lock(), {}
    token_check = chief_mod._TokenCheck

    def timed_token_check(chief):  # Chief.start builds its interceptor here: the hook needs no package edit
        inner = token_check(chief)
        marks.setdefault("serving_from", (time.perf_counter(), time.process_time()))

        class Timed(grpc.ServerInterceptor):
            def intercept_service(self, continuation, details):
                t0, c0 = time.perf_counter(), time.thread_time()
                handler = inner.intercept_service(continuation, details)  # token check, registry touch
                check_wall, check_cpu = time.perf_counter() - t0, time.thread_time() - c0
                if handler is None or handler.unary_unary is None:
                    return handler
                method = details.method.rsplit("/", 1)[-1]
                worker = dict(details.invocation_metadata or ()).get(wire.WORKER_KEY, "")
                fn = handler.unary_unary

                def run(request, context):
                    t1, c1 = time.perf_counter(), time.thread_time()
                    ok = False
                    try:
                        out = fn(request, context)
                        ok = True
                        return out
                    finally:
                        wall, cpu = time.perf_counter() - t1, time.thread_time() - c1
                        with lock:
                            calls.append((method, worker, check_wall + wall, check_cpu + cpu, ok))

                return handler._replace(unary_unary=run)

        return Timed()

    stop = chief_mod.Chief.stop

    def timed_stop(self, *a, **kw):
        marks.setdefault("serving_to", (time.perf_counter(), time.process_time()))
        return stop(self, *a, **kw)

    chief_mod._TokenCheck = timed_token_check
    chief_mod.Chief.stop = timed_stop
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        code = cli.main(["sweep", cfg["experiment"], "--tracking-uri", cfg["uri"], "--serve", f"127.0.0.1:{cfg['port']}",
                         "--parallel", "0", "--lease-timeout", str(cfg["lease"])])
    finally:
        end = (time.perf_counter(), time.process_time())
        start, stopped = marks.get("serving_from", (t0, c0)), marks.get("serving_to", end)
        with lock:
            Path(cfg["out"]).write_text(json.dumps({
                "calls": calls, "serving_wall_s": stopped[0] - start[0], "serving_cpu_s": stopped[1] - start[1],
                "process_wall_s": end[0] - t0, "process_cpu_s": end[1] - c0}))
    return code


# --- the parent ---------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _cpu_reader(pid: int):
    import psutil

    proc = psutil.Process(pid)

    def read() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    return read


class Prober:
    """Renew round trips from this process, as worker PROBE (no trial id: the chief only renews nothing)."""

    def __init__(self, port: int):
        from mnist_exp.search.distributed import wire

        self.chan = wire.channel("127.0.0.1", port, TOKEN, PROBE, 10.0)
        self.beat = wire.json_method(self.chan, "Renew")
        self.errors = 0

    def wait_ready(self, proc: subprocess.Popen, log: Path, timeout: float = 300) -> float:
        """Until the chief answers (it imports TensorFlow and opens the store first); seconds waited."""
        import grpc

        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the chief exited ({proc.returncode}) before serving:\n{_tail(log)}")
            try:
                self.beat({}, timeout=2.0, wait_for_ready=True)
                return time.perf_counter() - t0
            except grpc.RpcError:
                if time.perf_counter() - t0 > timeout:
                    raise SystemExit(f"the chief did not answer within {timeout:.0f} s:\n{_tail(log)}") from None

    def once(self) -> float | None:
        t0 = time.perf_counter()
        try:
            self.beat({}, timeout=5.0)
        except Exception:
            self.errors += 1
            return None
        return time.perf_counter() - t0

    def burst(self, n: int) -> list[float]:
        return [dt for dt in (self.once() for _ in range(n)) if dt is not None]

    def paced(self, every: float, until: threading.Event, limit: int) -> list[float]:
        out = []
        while not until.wait(every) and len(out) < limit:
            dt = self.once()
            if dt is not None:
                out.append(dt)
        return out


def one_sweep(n: int, args, tmp: Path, uri: str | None, server_log: Path | None) -> dict:
    folder = tmp / f"w{n}"
    (folder / "mlruns").mkdir(parents=True)
    uri = uri or f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    name = f"scale-w{n}-{int(time.time())}"
    data = args.data if args.data in ("embedded", "mnist") else str(Path(args.data).resolve())
    exp = folder / "scale.yaml"
    exp.write_text(EXPERIMENT.format(name=name, space=ROOT / "search_spaces" / args.space, data=data,
                                     train=args.train_size, test=args.test_size, epochs=args.epochs, trials=args.trials,
                                     tuner=args.tuner))
    port = _free_port()
    env = {**os.environ, "MNIST_EXP_TOKEN": TOKEN, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(folder),
           "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    result_file, chief_log = folder / "chief.json", folder / "chief.log"
    cfg = {"experiment": str(exp), "uri": uri, "port": port, "lease": args.lease, "out": str(result_file)}
    log_offset = server_log.stat().st_size if server_log else 0
    t0 = time.perf_counter()
    with open(chief_log, "w") as log:
        chief = subprocess.Popen([sys.executable, __file__, "--chief-child", json.dumps(cfg)], cwd=folder, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers = []
    try:
        probe = Prober(port)
        ready_s = probe.wait_ready(chief, chief_log)
        # The chief's own CPU (all its threads, gRPC's core included), read from outside: first at rest, then
        # over the idle burst of round trips, which gives what one Renew costs it in full.
        cpu = _cpu_reader(chief.pid)
        c0, w0 = cpu(), time.perf_counter()
        time.sleep(args.idle_s)
        c1, w1 = cpu(), time.perf_counter()
        idle = probe.burst(args.rtt_calls)
        c2, w2 = cpu(), time.perf_counter()
        idle_rate = (c1 - c0) / (w1 - w0)
        hb_cpu = max(0.0, (c2 - c1) - idle_rate * (w2 - w1)) / max(len(idle), 1)
        for i in range(n):
            wid = f"w{i}"
            home = folder / "hosts" / wid
            home.mkdir(parents=True)
            with open(home / "worker.log", "w") as log:
                workers.append((wid, home / "worker.log", subprocess.Popen(
                    [sys.executable, "-m", "mnist_exp", "worker", "--chief", f"127.0.0.1:{port}", "--tracking-uri", uri,
                     "--id", wid, "--threads", "1"], cwd=home, env={**env, "HOME": str(home)}, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)))
        done = threading.Event()
        loaded: list[float] = []
        t = threading.Thread(target=lambda: loaded.extend(probe.paced(args.rtt_interval, done, args.rtt_calls)),
                             daemon=True)
        t.start()
        try:
            chief.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{n} worker(s): the sweep did not end within {args.timeout:.0f} s:\n{_tail(chief_log)}") \
                from None
        wall = time.perf_counter() - t0
        done.set()
        t.join()
        for wid, log, w in workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            if w.returncode:
                print(f"  worker {wid} exited {w.returncode}:\n{_tail(log, 1500)}", flush=True)
        if chief.returncode:
            raise SystemExit(f"{n} worker(s): the chief exited {chief.returncode}:\n{_tail(chief_log)}")
    finally:
        for _, _, w in workers:
            if w.poll() is None:
                os.killpg(w.pid, 9)
                w.wait()
        if chief.poll() is None:
            os.killpg(chief.pid, 9)
            chief.wait()
    probe.chan.close()
    res = json.loads(result_file.read_text())
    row = {"workers": n, "wall_s": wall, "chief_ready_s": ready_s, **store_figures(uri, name),
           **chief_figures(res), "rtt_errors": probe.errors, "chief_idle_cpu_pct": 100 * idle_rate,
           "chief_cpu_ms_per_heartbeat": 1000 * hb_cpu, "probe_calls": len(idle) + len(loaded),
           "hb_idle_p50_ms": 1000 * pct(idle, 50), "hb_idle_p99_ms": 1000 * pct(idle, 99), "hb_idle_n": len(idle),
           "hb_load_p50_ms": 1000 * pct(loaded, 50), "hb_load_p99_ms": 1000 * pct(loaded, 99), "hb_load_n": len(loaded)}
    done_trials = max(row["trials_finished"], 1)
    row["trials_per_hour_wall"] = 3600 * row["trials_finished"] / wall
    row["chief_handler_ms_per_trial"] = 1000 * row["handler_wall_s_trials"] / done_trials
    row["chief_handler_cpu_ms_per_trial"] = 1000 * row["handler_cpu_s_trials"] / done_trials
    row["chief_process_cpu_ms_per_trial"] = 1000 * row["serving_cpu_s"] / done_trials
    # Net of what is not the trials': the chief at rest over the serving time and this script's round trips.
    # The workers' own heartbeats stay in (they scale with workers x time: readme_scale.md counts them apart).
    net = row["serving_cpu_s"] - idle_rate * row["serving_wall_s"] - hb_cpu * row["probe_calls"]
    row["chief_net_cpu_ms_per_trial"] = 1000 * max(net, 0.0) / done_trials
    row["rpcs_per_trial"] = row["rpcs_trials"] / done_trials
    if server_log:
        row.update(server_requests(server_log, log_offset, done_trials, row["trials_from"], row["trials_to"]))
    return row


def store_figures(uri: str, sweep: str) -> dict:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("mnist-exp")
    runs = c.search_runs([exp.experiment_id], f"tags.`mnist_exp.kind` = 'trial' and tags.`mnist_exp.sweep` = '{sweep}'",
                         max_results=10000)
    fin = [r for r in runs if r.info.status == "FINISHED"]
    window = ((max(r.info.end_time for r in fin) - min(r.info.start_time for r in fin)) / 1000) if fin else float("nan")
    times = [r.data.metrics["trial_time_s"] for r in fin if "trial_time_s" in r.data.metrics]
    return {"trials_finished": len(fin), "trial_runs_other": len(runs) - len(fin), "trials_window_s": window,
            "trials_from": min(r.info.start_time for r in fin) / 1000 if fin else None,
            "trials_to": max(r.info.end_time for r in fin) / 1000 if fin else None,
            "trials_per_hour_window": 3600 * len(fin) / window if fin else float("nan"),
            "trial_time_s_mean": statistics.mean(times) if times else float("nan")}


def chief_figures(res: dict) -> dict:
    """Every RPC of the sweep's workers (not this script's probe), summed and by method."""
    by = defaultdict(list)
    for method, worker, wall, cpu, _ok in res["calls"]:
        if worker != PROBE:
            by[method].append((wall, cpu))
    methods = {m: {"n": len(v), "p50_ms": 1000 * pct([w for w, _ in v], 50), "p99_ms": 1000 * pct([w for w, _ in v], 99),
                   "mean_cpu_ms": 1000 * statistics.mean(c for _, c in v)} for m, v in sorted(by.items())}
    return {"rpcs_trials": sum(len(v) for v in by.values()),
            "handler_wall_s_trials": sum(w for v in by.values() for w, _ in v),
            "handler_cpu_s_trials": sum(c for v in by.values() for _, c in v),
            "serving_wall_s": res["serving_wall_s"], "serving_cpu_s": res["serving_cpu_s"],
            "chief_process_cpu_s": res["process_cpu_s"], "methods": methods,
            "create_trial_p50_ms": methods.get("CreateTrial", {}).get("p50_ms", float("nan")),
            "create_trial_p99_ms": methods.get("CreateTrial", {}).get("p99_ms", float("nan"))}


def server_requests(log: Path, offset: int, trials: int, t_from: float | None, t_to: float | None) -> dict:
    """The tracking server's requests during this sweep, from uvicorn's access lines in its mlflow.log: all of
    them (the sweep's set-up and summary, the workers' start-up) and those inside the trials' window (first
    trial run's start to last one's end; the log's clock has 1 s resolution), which are the per-trial cost."""
    import re
    from datetime import datetime

    with open(log, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    found, inside = Counter(), Counter()
    line = re.compile(r'^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) .*"(GET|POST|PUT|PATCH|DELETE) (/[^ ?"]*)[^"]*" \d{3}', re.M)
    for m in line.finditer(text):
        path = m.group(3)
        if "/mlflow-artifacts/artifacts/" in path:
            path = "mlflow-artifacts/artifacts"
        else:
            path = re.sub(r"/m-[0-9a-f]{32}", "/ID", path.split("/mlflow/")[-1])  # logged-models/m-…
        key = f"{m.group(2)} {path}"
        found[key] += 1
        when = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").timestamp()
        if t_from is not None and int(t_from) <= when <= t_to:
            inside[key] += 1
    return {"server_requests": sum(found.values()), "server_requests_in_window": sum(inside.values()),
            "server_requests_per_trial": sum(inside.values()) / trials,
            "server_requests_by_endpoint": dict(found.most_common()),
            "server_requests_in_window_by_endpoint": dict(inside.most_common())}


def report(rows: list[dict]) -> None:
    import pandas as pd

    pd.set_option("display.width", 200)
    cols = {"workers": "workers", "trials_finished": "trials", "wall_s": "wall s", "trials_per_hour_wall": "trials/h",
            "trials_per_hour_window": "trials/h window", "trial_time_s_mean": "trial s",
            "chief_handler_ms_per_trial": "chief ms/trial", "chief_handler_cpu_ms_per_trial": "chief cpu ms/trial",
            "chief_net_cpu_ms_per_trial": "chief net cpu ms/trial", "chief_idle_cpu_pct": "chief idle cpu %",
            "chief_cpu_ms_per_heartbeat": "chief cpu ms/hb", "rpcs_per_trial": "rpcs/trial",
            "create_trial_p50_ms": "CreateTrial p50 ms", "hb_idle_p50_ms": "hb idle p50", "hb_idle_p99_ms": "hb idle p99",
            "hb_load_p50_ms": "hb load p50", "hb_load_p99_ms": "hb load p99"}
    if any("server_requests_per_trial" in r for r in rows):
        cols["server_requests_per_trial"] = "http/trial window"
    df = pd.DataFrame(rows)[list(cols)].rename(columns=cols).set_index("workers")
    print(df.to_string(float_format=lambda v: f"{v:.1f}"))
    print("\nchief-side handler time by method (sweep workers' calls; wall p50/p99 ms, mean thread CPU ms, count):")
    for r in rows:
        parts = [f"{m} {v['p50_ms']:.2f}/{v['p99_ms']:.2f}/{v['mean_cpu_ms']:.2f} x{v['n']}" for m, v in r["methods"].items()]
        print(f"  {r['workers']} worker(s): " + "; ".join(parts))
    for r in rows:
        if "server_requests_by_endpoint" in r:
            top = ", ".join(f"{k} {v}" for k, v in list(r["server_requests_in_window_by_endpoint"].items())[:10])
            print(f"  {r['workers']} worker(s), tracking server: {r['server_requests']} requests in all, "
                  f"{r['server_requests_in_window']} within the trials' window ({top})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4", help="worker counts, one sweep each (default 1,2,4)")
    ap.add_argument("--trials", type=int, default=8, help="trials per sweep (default 8)")
    ap.add_argument("--train-size", type=int, default=200, help="digits per trial (default 200)")
    ap.add_argument("--test-size", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data", default="embedded", help="data source (default embedded)")
    ap.add_argument("--space", default="baseline.yaml", help="search_spaces/ file (default baseline.yaml)")
    ap.add_argument("--tuner", default="random", choices=("random", "bayesian"),
                    help="the oracle (bayesian: its CreateTrial fits a Gaussian process on every trial so far)")
    ap.add_argument("--lease", type=float, default=30.0, help="--lease-timeout (default 30: heartbeat every 5 s)")
    ap.add_argument("--postgres", action="store_true", help="store: one mnist_exp.server (PostgreSQL) for all counts")
    ap.add_argument("--server-workers", type=int, default=2, help="with --postgres: the MLflow server's --workers")
    ap.add_argument("--rtt-calls", type=int, default=500, help="Renew round trips, idle and under load (default 500)")
    ap.add_argument("--rtt-interval", type=float, default=0.2, help="seconds between round trips under load (default "
                                                                    "0.2: as many as 25 workers' heartbeats)")
    ap.add_argument("--idle-s", type=float, default=3.0, help="seconds the chief's CPU at rest is measured over")
    ap.add_argument("--timeout", type=float, default=1800, help="per sweep (default 1800 s)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--chief-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chief_child:
        sys.exit(chief_child(json.loads(args.chief_child)))
    counts = [int(x) for x in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mnist-exp-cluster-"))
    tmp.chmod(0o755)  # under root PostgreSQL runs as the postgres user, who must enter the server's folder
    srv, rows = None, []
    try:
        uri = server_log = None
        if args.postgres:
            from mnist_exp import server

            from mnist_exp.server.files import read_credentials

            srv = server.start(tmp / "srv", port=_free_port(), workers=args.server_workers)  # sign-in on, as a team's
            user, password = read_credentials(srv.credentials)
            os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)  # inherited, never argv
            uri, server_log = srv.uri, srv.dir / "mlflow.log"
            print(f"tracking server {uri} (PostgreSQL, --workers {args.server_workers})", flush=True)
        for n in counts:
            t0 = time.perf_counter()
            rows.append(one_sweep(n, args, tmp, uri, server_log))
            r = rows[-1]
            print(f"{n} worker(s): {r['trials_finished']} trials in {r['wall_s']:.0f} s ({r['trials_per_hour_wall']:.0f}/h; "
                  f"{r['trials_per_hour_window']:.0f}/h over the trials' window); chief "
                  f"{r['chief_handler_ms_per_trial']:.1f} ms/trial in handlers, {r['rpcs_per_trial']:.1f} RPCs/trial; "
                  f"heartbeat p50 {r['hb_idle_p50_ms']:.2f} ms idle, {r['hb_load_p50_ms']:.2f} ms under load "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    report(rows)
    sys.path.insert(0, str(Path(__file__).parent))
    import bench

    info = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/cluster.py " + " ".join(a for a in sys.argv[1:]),
            "cores": os.cpu_count(), "load_average_end": os.getloadavg(), "trials": args.trials, "tuner": args.tuner,
            "train_size": args.train_size, "epochs": args.epochs, "lease_s": args.lease, "postgres": args.postgres,
            "server_workers": args.server_workers if args.postgres else None}
    print(f"\n{info}")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": info, "rows": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
