"""An MLflow server as mnist-exp starts it (MLflow's job runner off: mnist_exp.server.launch.JOB_RUNNER_OFF) against
MLflow's default (the runner on), side by side in one run: seconds until ``/health`` answers, then, ``--settle`` s
later, the processes of the server's tree, the CPU seconds they have used and their resident memory.

    python benchmarks/server_start.py --rounds 3 --out benchmarks/server-start.json

Each round starts both, one after the other (order alternating), on a fresh sqlite store, as ``mnist-exp ui`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (machine())

from mnist_exp.server.launch import JOB_RUNNER_OFF  # noqa: E402

VARIANTS = {"job runner off (mnist-exp)": JOB_RUNNER_OFF, "job runner on (MLflow's default)": {}}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(env_extra: dict, settle_s: float) -> dict:
    import psutil

    folder = Path(tempfile.mkdtemp(prefix="server-start-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"} | env_extra
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("mlflow server exited") from None
                time.sleep(0.1)
        up_s = time.monotonic() - started
        time.sleep(settle_s)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        cpu = rss = 0.0
        for p in tree:
            try:
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        return {"health_s": round(up_s, 2), "processes": len(tree), "cpu_s": round(cpu, 1), "rss_mib": round(rss / 2**20)}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after /health before the tree is measured")
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
            rows[name].append(one_start(VARIANTS[name], args.settle))
            print(f"round {r + 1} {name}: {rows[name][-1]}", flush=True)
    summary = {name: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for name, runs in rows.items()}
    off, on = (summary[n] for n in VARIANTS)
    print(f"median: off {off} | on {on} | CPU on/off {on['cpu_s'] / off['cpu_s']:.1f}x, "
          f"memory on/off {on['rss_mib'] / off['rss_mib']:.1f}x", flush=True)
    if args.out:
        info = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"),
                "command": "python benchmarks/server_start.py " + " ".join(sys.argv[1:]),
                "settle_s": args.settle, "median": summary, "rounds": rows}
        Path(args.out).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
