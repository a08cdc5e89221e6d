"""Several trials at once: Keras Tuner's own chief and workers, on one machine.

``mnist-exp sweep --parallel N`` makes the launching process Keras Tuner's *chief*: it holds the
oracle and serves it over gRPC with Keras Tuner's ``OracleServicer``, and starts N *worker*
processes (``python -m mnist_exp.parallel …``). Each worker rebuilds the experiment from the
sweep's state file and the parent run id (nothing is passed from the chief's memory), asks the
chief for trials, trains them with a share of the cores and logs each as a nested MLflow run.
Workers on other machines would do the same given the chief's address and one tracking server.

The chief's loop is ours, not ``keras_tuner``'s ``start_server``: that one polls every 20 s
before exiting, and knows nothing of workers that die.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV_IP, ENV_PORT, ENV_ID = "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"


def worker_ids(n: int) -> list[str]:
    return [f"tuner{i}" for i in range(n)]


def threads_per_worker(n: int, configured: int | None) -> int:
    """Cores shared out: 2 workers on 2 cores get 1 thread each (TF's default would give each 2)."""
    return configured or max(1, (os.cpu_count() or 1) // n)


class ChiefEnvironment:
    """Keras Tuner decides chief/worker from the environment at Tuner construction."""

    def __init__(self, ip: str, port: int):
        self.values = {ENV_IP: ip, ENV_PORT: str(port), ENV_ID: "chief"}
        self.saved: dict = {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_server(oracle, ip: str = "127.0.0.1"):
    """Keras Tuner's OracleServicer on a free port. Returns (server, port)."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    protos.get_service_grpc().add_OracleServicer_to_server(OracleServicer(oracle), server)
    port = server.add_insecure_port(f"{ip}:0")
    server.start()
    return server, port


def launch_workers(uri: str, sweep: str, n: int, threads: int, port: int, ip: str = "127.0.0.1", verbose: int = 0):
    """``verbose``: the workers' fit verbosity (0, or 2: Keras's own line per epoch); every worker prints
    our one line per epoch regardless."""
    procs = {}
    for i, tid in enumerate(worker_ids(n)):
        env = {**os.environ, ENV_IP: ip, ENV_PORT: str(port), ENV_ID: tid, "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, "-m", "mnist_exp.parallel", "--tracking-uri", uri, "--sweep", sweep,
               "--threads", str(threads), "--seed-offset", str(i), "--verbose", str(verbose),
               "--chief-pid", str(os.getpid())]
        # Own session: a terminal's Ctrl-C reaches the chief only, which stops each worker once.
        procs[tid] = subprocess.Popen(cmd, env=env, start_new_session=True)
    return procs


def wait_workers(procs: dict, poll_s: float = 0.5) -> dict[str, int]:
    """Block until every worker has exited; their exit codes by tuner id."""
    codes: dict[str, int] = {}
    while len(codes) < len(procs):
        for tid, p in procs.items():
            if tid not in codes and p.poll() is not None:
                codes[tid] = p.returncode
                if p.returncode:
                    print(f"worker {tid} exited with code {p.returncode}", file=sys.stderr, flush=True)
        time.sleep(poll_s)
    return codes


def stop_workers(procs: dict, grace_s: float = 60.0) -> None:
    """SIGTERM (each worker marks its running trial KILLED), then SIGKILL after grace_s."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- the worker process --------------------------------------------------------------------------


def worker_main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mnist_exp.parallel", description="a Keras Tuner worker of a sweep")
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--verbose", type=int, default=0, choices=[0, 2], help="Keras's fit verbosity (2: its line per epoch)")
    ap.add_argument("--chief-pid", type=int, help="stop (trial KILLED) when this parent process is gone")
    args = ap.parse_args(argv)
    from .errors import MnistExpError

    try:
        return _work(args)
    except MnistExpError as e:
        print(f"worker {os.environ.get(ENV_ID)}: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        from .tuners import StoreUnavailable

        if not isinstance(e, StoreUnavailable):
            raise
        print(f"worker {os.environ.get(ENV_ID)}: stopped: {e}; its trial runs again on resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        from .interrupt import exit_code

        return exit_code(e)  # 128 + signal, as the CLI: the chief's SIGTERM gives 143


def _work(args) -> int:
    from . import state as state_mod
    from .config import experiment_from_dict
    from .data import load_data
    from .errors import ConfigError, DataError
    from .space import load_space

    state_path = state_mod.state_path(args.tracking_uri, args.sweep)
    state = state_mod.read(state_path)  # the chief wrote it in the current format before starting workers
    if state is None:
        raise ConfigError(f"{state_path}: no sweep state (start the sweep with mnist-exp sweep first)")
    exp = experiment_from_dict(state["experiment"], where=str(state_path))
    space = load_space(exp.search_space)
    changed = state_mod.changed_sections(state, exp, space)
    if changed:
        raise ConfigError(f"{state_path}: {', '.join(changed)} changed on disk since the sweep started")
    ds = load_data(exp.data, exp.seed)
    if ds.fingerprint != state.get("data_fingerprint", ds.fingerprint):
        raise DataError(f"{exp.data.source}: data differ from the sweep's (fingerprint {ds.fingerprint[:12]})")

    from .progress import import_tensorflow

    import_tensorflow()  # without its C++ start-up notices, once per worker
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from . import tracking, training, tuners

    tf.get_logger().setLevel("ERROR")
    import keras

    keras.utils.set_random_seed(exp.seed + 1000 * (1 + args.seed_offset))
    experiment_id = tracking.configure(args.tracking_uri, exp.mlflow_experiment)
    sw = tuners.SweepContext(exp, ds, experiment_id, state["parent_run_id"], arrays=training.fit_arrays(ds),
                             worker=os.environ.get(ENV_ID))
    tuner = tuners.make_tuner(sw, space.to_hyperparameters(fixed=exp.hp), Path(state_path).parent.parent,
                              verbose=args.verbose)
    from . import interrupt

    with interrupt.handled():
        if args.chief_pid:
            watch_parent(args.chief_pid)
        x, y, val = sw.arrays
        tuner.search(x, y, validation_data=val, epochs=exp.training.epochs, verbose=args.verbose)
    return 0


def watch_parent(pid: int, poll_s: float = 1.0, grace_s: float = 15.0) -> None:
    """A chief killed outright (SIGKILL) cannot stop its workers, and their calls to its gone oracle
    would wait forever: each worker SIGTERMs itself once its parent is no longer ``pid``. Inside a
    trial that signal waits for a safe point, which a worker blocked on the gone oracle never reaches,
    so a second one follows after ``grace_s`` (it forces, interrupt.py), and then a hard exit (the
    trial's run, left RUNNING, is marked KILLED when the sweep resumes)."""
    import threading

    def watch():
        while os.getppid() == pid:
            time.sleep(poll_s)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace_s)
        os._exit(137)

    threading.Thread(target=watch, name="watch-chief", daemon=True).start()


if __name__ == "__main__":
    sys.exit(worker_main())
