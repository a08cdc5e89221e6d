"""Load test of one tracking server (MLflow on PostgreSQL, artifacts proxied): K simulated workers writing at once.

    python benchmarks/tracking_load.py --clients 10 --epochs 3 --procs 2                 # a minute
    python benchmarks/tracking_load.py --clients 100 --epochs 20 --procs 4 --server-workers 4
    python benchmarks/tracking_load.py --clients 100 --epochs 20 --epoch-interval 2 --sysmetrics 2   # paced

Starts ``mnist_exp.server`` on loopback (or uses ``--uri``), then K clients (threads, spread over ``--procs``
processes so that one client process's GIL is not the bottleneck) each write what a trial writes
(tracked_tuner.run_trial, training.EpochLogger): create a run with a trial's tags, one batch of params, one
``log_batch`` of ``--metrics`` metrics per epoch (EpochLogger logs 5: loss, accuracy, val_loss,
val_accuracy, epoch_time_s), one artifact of ``--artifact-kb`` through the server's proxied artifact store,
then end the run. ``--epoch-interval S`` paces the epochs as a real trial would (default 0: back to back,
which measures what the server sustains); ``--sysmetrics S`` adds what usage.py's sampler writes while a
run is open (a read of the run and a batch of system metrics every S seconds, 2 in mnist-exp).

Prints operations/s and HTTP requests/s over the load's window, p50/p99 latency per operation and per
HTTP endpoint, errors (after MLflow's own retries, as mnist-exp sees them; ``--retries 0`` shows the
raw refusals), the server's CPU seconds (MLflow and PostgreSQL processes), then checks through the server
that nothing was lost: every run FINISHED, every metric at every epoch step, the artifact at its size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCH_METRICS = ["loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s", "lr_x", "grad_norm", "aux"]
SYS_METRICS = ["system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
               "system/system_memory_usage_percentage", "system/disk_usage_megabytes", "system/disk_usage_percentage",
               "system/disk_available_megabytes", "system/network_receive_megabytes",
               "system/network_transmit_megabytes"]


# --- a client process ----------------------------------------------------------------------------------


def _record_http(out: list, lock: threading.Lock) -> None:
    """Every HTTP request MLflow's client sends (urllib3's retries happen inside one send: one record)."""
    from urllib.parse import urlsplit

    import requests.adapters

    send = requests.adapters.HTTPAdapter.send

    def timed(self, request, *a, **kw):
        t0 = time.time()
        status = "exc"
        try:
            resp = send(self, request, *a, **kw)
            status = resp.status_code
            return resp
        finally:
            with lock:
                out.append(("http", _endpoint(request.method, request.path_url), t0, time.time() - t0, status,
                            urlsplit(request.url).netloc))

    requests.adapters.HTTPAdapter.send = timed


def _endpoint(method: str, path: str) -> str:
    path = path.split("?", 1)[0]
    if "/mlflow-artifacts/artifacts/" in path:
        return f"{method} mlflow-artifacts/artifacts"
    return f"{method} {path.split('/mlflow/', 1)[-1]}"


def child(cfg: dict) -> None:
    """``cfg['threads']`` simulated workers in this process; one JSON line per operation and HTTP request."""
    os.environ["MLFLOW_HTTP_POOL_MAXSIZE"] = str(max(10, cfg["threads"]))  # one pooled connection per thread
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a "View run at" line per run otherwise
    if cfg["retries"] is not None:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg["retries"])
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    records: list = []
    lock = threading.Lock()
    _record_http(records, lock)
    client = MlflowClient(cfg["uri"])
    artifact = Path(cfg["tmp"]) / f"artifact-{cfg['proc']}.bin"
    artifact.write_bytes(random.Random(cfg["proc"]).randbytes(cfg["artifact_kb"] * 1024))

    def op(kind: str, fn, *a, **kw):
        t0 = time.time()
        try:
            result = fn(*a, **kw)
            err = None
            return result
        except Exception as e:  # counted, and the simulated worker goes on as mnist-exp would not: to load on
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            return None
        finally:
            with lock:
                records.append(("op", kind, t0, time.time() - t0, err))

    def one_run(wid: str, n: int) -> None:
        ts = lambda: int(time.time() * 1000)  # noqa: E731
        tags = {"mnist_exp.kind": "trial", "mnist_exp.sweep": "load", "mnist_exp.trial_id": f"{wid}-{n}",
                "mnist_exp.tuner_id": wid, "mnist_exp.host": "loadgen", "mnist_exp.pid": str(os.getpid()),
                "mnist_exp.heartbeat": str(time.time())}
        run = op("create_run", client.create_run, cfg["experiment_id"], run_name=f"{wid}-{n}", tags=tags)
        if run is None:
            return
        rid = run.info.run_id
        params = [Param(f"p{i}", str(i * 0.1)) for i in range(15)]  # a trial's hyperparameters and settings
        op("log_params", client.log_batch, rid, params=params)
        stop = threading.Event()
        sampler = None
        if cfg["sysmetrics"]:  # usage.py: MLflow's SystemMetricsMonitor, a read of the run and a batch per sample
            def sample():
                step = 0
                while not stop.wait(cfg["sysmetrics"]):
                    op("sys_get_run", client.get_run, rid)
                    op("sys_metrics", client.log_batch, rid,
                       metrics=[Metric(k, random.random(), ts(), step) for k in SYS_METRICS])
                    step += 1

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        for epoch in range(1, cfg["epochs"] + 1):
            if cfg["epoch_interval"]:
                time.sleep(cfg["epoch_interval"])
            op("log_epoch", client.log_batch, rid,
               metrics=[Metric(k, random.random(), ts(), epoch) for k in EPOCH_METRICS[:cfg["metrics"]]])
        stop.set()
        if sampler:
            sampler.join()
        op("log_artifact", client.log_artifact, rid, str(artifact), "load")
        op("log_tags", client.log_batch, rid, tags=[RunTag("mnist_exp.done", "1")])
        op("end_run", client.set_terminated, rid, "FINISHED")

    def worker(i: int) -> None:
        wid = f"p{cfg['proc']}t{i}"
        deadline = cfg["deadline"]
        for n in range(cfg["runs"]):
            if time.time() > deadline:
                break
            one_run(wid, n)

    client.get_experiment(cfg["experiment_id"])  # imports and the first connection, outside the window
    time.sleep(max(0.0, cfg["start_at"] - time.time()))  # every process starts together
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(cfg["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, cfg["deadline"] + 60 - time.time()))
    with lock, open(cfg["out"], "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# --- the parent: server, clients, figures, checks -------------------------------------------------------------


def _server_procs(srv) -> list:
    """The MLflow server's process group and PostgreSQL's postmaster with its backends."""
    import psutil

    procs = []
    for pid in (srv.proc.pid, _postmaster_pid(srv.dir)):
        if pid:
            try:
                p = psutil.Process(pid)
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    return procs


def _postmaster_pid(folder: Path) -> int | None:
    try:
        return int((folder / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_s(srv) -> float:
    """User + system CPU seconds of the server's processes alive now (MLflow's workers, PostgreSQL's backends)."""
    import psutil

    total = 0.0
    for p in _server_procs(srv):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def verify(uri: str, experiment_id: str, expected: int, epochs: int, metrics: int, artifact_bytes: int) -> dict:
    """Read everything back through the server: every run FINISHED, every epoch step of every metric there,
    the artifact present at its size."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient

    c = MlflowClient(uri)
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    keys = EPOCH_METRICS[:metrics]

    def check(run) -> list[str]:
        rid, bad = run.info.run_id, []
        if run.info.status != "FINISHED":
            bad.append(f"{rid}: status {run.info.status}")
        for k in keys:
            steps = sorted(m.step for m in c.get_metric_history(rid, k))
            if steps != list(range(1, epochs + 1)):
                bad.append(f"{rid}: {k} steps {steps[:5]}{'...' if len(steps) > 5 else ''}")
        sizes = {a.path: a.file_size for a in c.list_artifacts(rid, "load")}
        if not any(size == artifact_bytes for size in sizes.values()):
            bad.append(f"{rid}: artifact missing or wrong size ({sizes})")
        return bad

    with ThreadPoolExecutor(16) as pool:
        problems = [p for ps in pool.map(check, runs) for p in ps]
    return {"runs_expected": expected, "runs_found": len(runs),
            "runs_finished": sum(r.info.status == "FINISHED" for r in runs), "problems": len(problems),
            "first_problems": problems[:5], "ok": len(runs) == expected and not problems}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100, help="simulated workers K (default 100)")
    ap.add_argument("--procs", type=int, default=4, help="client processes the K threads are spread over (default 4)")
    ap.add_argument("--runs", type=int, default=1, help="runs (trials) per simulated worker (default 1)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per run E: one log_batch each (default 10)")
    ap.add_argument("--metrics", type=int, default=5, help=f"metrics per epoch (default 5, as EpochLogger; max "
                                                            f"{len(EPOCH_METRICS)})")
    ap.add_argument("--artifact-kb", type=int, default=50, help="one artifact per run, KiB (default 50)")
    ap.add_argument("--epoch-interval", type=float, default=0.0, help="seconds between epochs (default 0: back to back)")
    ap.add_argument("--sysmetrics", type=float, default=0.0,
                    help="seconds between system-metric samples while a run is open (mnist-exp: 2; default 0: off)")
    ap.add_argument("--max-seconds", type=float, default=600, help="no run starts after this (default 600)")
    ap.add_argument("--server-workers", type=int, default=4, help="the MLflow server's --workers (default 4)")
    ap.add_argument("--uri", help="use this running server instead of starting one (its --workers is its own)")
    ap.add_argument("--retries", type=int, help="MLFLOW_HTTP_REQUEST_MAX_RETRIES for the clients (default MLflow's)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if not 1 <= args.metrics <= len(EPOCH_METRICS):
        ap.error(f"--metrics: 1 to {len(EPOCH_METRICS)}")
    procs = max(1, min(args.procs, args.clients))
    tmp = Path(tempfile.mkdtemp(prefix="mnist-exp-load-"))
    tmp.chmod(0o755)  # under root PostgreSQL runs as the postgres user, who must enter the server's folder
    srv = None
    try:
        if args.uri:
            uri = args.uri
        else:
            from mnist_exp import server

            port = _free_port()
            t0 = time.perf_counter()
            srv = server.start(tmp / "srv", port=port, workers=args.server_workers)
            uri = srv.uri
            print(f"server {uri} (--workers {args.server_workers}) up in {time.perf_counter() - t0:.1f} s", flush=True)
        from mlflow import MlflowClient

        experiment_id = MlflowClient(uri).create_experiment(f"load-{int(time.time())}-{os.getpid()}")
        per_proc = [args.clients // procs + (i < args.clients % procs) for i in range(procs)]
        start_at = time.time() + 8 + 2 * procs  # after every client process has imported MLflow
        deadline = start_at + args.max_seconds
        cpu0 = _cpu_s(srv) if srv else None
        children = []
        for i, n in enumerate(per_proc):
            cfg = {"uri": uri, "experiment_id": experiment_id, "threads": n, "proc": i, "runs": args.runs,
                   "epochs": args.epochs, "metrics": args.metrics, "artifact_kb": args.artifact_kb,
                   "epoch_interval": args.epoch_interval, "sysmetrics": args.sysmetrics, "retries": args.retries,
                   "start_at": start_at, "deadline": deadline, "tmp": str(tmp), "out": str(tmp / f"rec-{i}.jsonl")}
            children.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)]))
        print(f"{args.clients} clients in {procs} processes; {args.runs} run(s) each, {args.epochs} epochs x "
              f"{args.metrics} metrics, {args.artifact_kb} KiB artifact"
              f"{f', epoch every {args.epoch_interval} s' if args.epoch_interval else ''}"
              f"{f', system metrics every {args.sysmetrics} s' if args.sysmetrics else ''}", flush=True)
        codes = [p.wait() for p in children]
        cpu1 = _cpu_s(srv) if srv else None
        if any(codes):
            raise SystemExit(f"client process(es) failed: exit codes {codes}")
        records = [json.loads(ln) for i in range(procs) for ln in (tmp / f"rec-{i}.jsonl").read_text().splitlines()]
        res = figures(records, uri, cpu1 - cpu0 if srv else None)
        t0 = time.perf_counter()
        res["verify"] = verify(uri, experiment_id, args.clients * args.runs, args.epochs, args.metrics,
                               args.artifact_kb * 1024)
        res["verify"]["seconds"] = time.perf_counter() - t0
        res.update(clients=args.clients, procs=procs, runs_per_client=args.runs, epochs=args.epochs,
                   metrics=args.metrics, artifact_kb=args.artifact_kb, epoch_interval_s=args.epoch_interval,
                   sysmetrics_s=args.sysmetrics, server_workers=None if args.uri else args.server_workers,
                   uri=uri, cores=os.cpu_count(), load_average=os.getloadavg())
        report(res)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
            print(f"\nwrote {args.out}")
        if not res["verify"]["ok"]:
            raise SystemExit(1)
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def figures(records: list, uri: str, server_cpu_s: float | None) -> dict:
    from urllib.parse import urlsplit

    ops = [r for r in records if r[0] == "op"]
    t_start = min(r[2] for r in ops)
    t_end = max(r[2] + r[3] for r in ops)
    # The tracking server's requests inside the window: not the clients' warm-up, not MLflow's own look-ups
    # elsewhere (it asks a remote host about its version, which fails offline)
    host = urlsplit(uri).netloc
    http = [r for r in records if r[0] == "http" and r[5] == host and r[2] >= t_start]
    window = t_end - t_start
    by_op, by_http = defaultdict(list), defaultdict(list)
    errors, first_error = defaultdict(int), {}
    for _, kind, _, dt, err in ops:
        by_op[kind].append(dt)
        if err:
            errors[kind] += 1
            first_error.setdefault(kind, err)
    http_bad = defaultdict(int)
    for _, ep, _, dt, status, _ in http:
        by_http[ep].append(dt)
        if status == "exc" or int(status) >= 400:
            http_bad[ep] += 1
    runs_done = len([r for r in ops if r[1] == "end_run" and not r[4]])

    def row(name, lat, bad, window):
        return {"name": name, "count": len(lat), "per_s": len(lat) / window, "p50_ms": 1000 * pct(lat, 50),
                "p99_ms": 1000 * pct(lat, 99), "max_ms": 1000 * max(lat), "errors": bad}

    return {"window_s": window, "operations": len(ops), "ops_per_s": len(ops) / window,
            "http_requests": len(http), "http_per_s": len(http) / window, "runs_ended": runs_done,
            "runs_per_s": runs_done / window, "http_per_run": len(http) / max(runs_done, 1),
            "errors": sum(errors.values()), "first_errors": first_error,
            "server_cpu_s": server_cpu_s, "server_cpu_ms_per_request": (1000 * server_cpu_s / len(http))
            if server_cpu_s is not None and http else None,
            "by_operation": [row(k, v, errors[k], window) for k, v in by_op.items()],
            "by_http": [row(k, v, http_bad[k], window) for k, v in sorted(by_http.items())]}


def report(res: dict) -> None:
    import pandas as pd

    pd.set_option("display.width", 160)
    fmt = {"per_s": "{:.1f}".format, "p50_ms": "{:.1f}".format, "p99_ms": "{:.1f}".format, "max_ms": "{:.0f}".format}
    print()
    for key, title in (("by_operation", "per operation (one MlflowClient call)"), ("by_http", "per HTTP request")):
        print(title)
        print(pd.DataFrame(res[key]).set_index("name").to_string(formatters=fmt))
        print()
    cpu = res["server_cpu_s"]
    rows = [
        ("clients x runs", f"{res['clients']} x {res['runs_per_client']}",
         f"{res['procs']} client processes, server --workers {res['server_workers']}"),
        ("window", f"{res['window_s']:.1f} s", "first operation's start to last one's end"),
        ("operations/s", f"{res['ops_per_s']:.1f}", f"{res['operations']} MlflowClient calls"),
        ("HTTP requests/s", f"{res['http_per_s']:.1f}", f"{res['http_requests']} requests, "
                                                         f"{res['http_per_run']:.1f} per run"),
        ("runs ended/s", f"{res['runs_per_s']:.2f}", f"{res['runs_ended']} runs"),
        ("errors", str(res["errors"]), "; ".join(f"{k}: {v}" for k, v in res["first_errors"].items())[:200]),
        ("server CPU", "-" if cpu is None else f"{cpu:.1f} s",
         "-" if cpu is None else f"{res['server_cpu_ms_per_request']:.1f} ms per request (MLflow + PostgreSQL)"),
        ("nothing lost", "yes" if res["verify"]["ok"] else "NO",
         f"{res['verify']['runs_finished']}/{res['verify']['runs_expected']} runs FINISHED, "
         f"{res['verify']['problems']} problem(s) {res['verify']['first_problems'][:2]}; "
         f"checked in {res['verify']['seconds']:.1f} s"),
        ("machine", f"{res['cores']} cores", f"load average at the end {res['load_average'][0]:.1f}"),
    ]
    for name, value, note in rows:
        print(f"{name:<18} {value:>14}  {note}")


if __name__ == "__main__":
    main()
