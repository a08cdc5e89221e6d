"""``mnist-exp worker --chief HOST:PORT``: train a sweep's trials for a chief on this or another machine.

A worker needs the package, the data and two addresses (the chief's; the tracking server's, which the
chief tells it when the sweep's store is a server). Everything else comes from the chief's
``Describe``: the experiment, the search space's text, the parent run, the data fingerprint. Keras
Tuner's per-trial checkpoints stay in a temporary folder of this machine; runs, models and plots go to
the tracking store. Its id (``--id``, default the host name) is its Keras Tuner tuner id: a worker
restarted with the same id gets back the trial it held, if its lease has not expired.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from mnist_exp import tracking
from mnist_exp.model import training
from mnist_exp.model.data import load_data
from mnist_exp.runtime import signals
from mnist_exp.runtime.errors import ConfigError, DataError, TrackingUnavailable
from mnist_exp.runtime.terminal import import_tensorflow
from mnist_exp.search.tracked_tuner import SweepContext, make_tuner
from mnist_exp.search.trial_failures import ChiefGone, Superseded
from mnist_exp.search.distributed import wire
from mnist_exp.spec import names
from mnist_exp.spec.experiment import experiment_from_dict
from mnist_exp.spec.space import load_space
from mnist_exp.tracking import liveness, store


class Lease:
    """What the lease-renewal thread knows, shared with the training callbacks (Keras Tuner deep-copies
    callbacks: this object is shared, not copied)."""

    def __init__(self):
        self.trial_id: str | None = None
        self.lost: str | None = None  # trial id whose lease the chief says is gone
        self.last_ok = time.monotonic()

    def __deepcopy__(self, memo):
        return self


def default_id() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "worker"
    return host if host[0].isalnum() else f"w{host}"


def check_id(worker: str) -> str:
    names.check(worker, "--id", key=None)
    if "chief" in worker:  # Keras Tuner takes any tuner id containing "chief" for the chief
        raise ConfigError(f"--id: must not contain 'chief' (got {worker!r})")
    return worker


def connect(address: str, token: str, worker: str, wait_s: float):
    """(channel, description) of the chief at ``address``; one line if it does not answer in ``wait_s``.
    On the channel returned no call waits longer than the lease: a worker of a dead chief stops that soon."""
    import grpc

    host, port = wire.parse_address(address, "--chief")
    chan = wire.channel(host, port, token, worker, wait_s)
    try:
        desc = wire.json_method(chan, "Describe")({}, timeout=wait_s, wait_for_ready=True)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise ConfigError(f"--chief {address}: refused: {e.details()}") from None
        raise TrackingUnavailable(f"--chief {address}: no chief answered within {wait_s:.0f} s "
                                  f"({e.code().name})") from None
    if desc.get("protocol") != wire.PROTOCOL:
        raise ConfigError(f"--chief {address}: speaks protocol {desc.get('protocol')} (mnist-exp "
                          f"{desc.get('version')}), this worker {wire.PROTOCOL}: install the chief's release")
    chan.close()
    return wire.channel(host, port, token, worker, float(desc["lease_s"])), desc


def sweep_from(desc: dict, address: str, data: str | None, workdir: Path):
    """(experiment, search space) as the chief runs them; the space file is written under ``workdir``."""
    where = f"chief {address}"
    exp = experiment_from_dict(desc["experiment"], where=where)
    space_path = None
    if desc.get("space_yaml") is not None:
        space_path = workdir / desc.get("space_name", "space.yaml")
        space_path.write_text(desc["space_yaml"], encoding="utf-8")
    exp = replace(exp, search_space=str(space_path) if space_path else None)
    if data:
        src = data if data in ("embedded", "mnist") else str(Path(data).resolve())
        exp = replace(exp, data=replace(exp.data, source=src))
    return exp, load_space(exp.search_space)


def tracking_uri(arg: str | None, desc: dict, address: str) -> str:
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI") or desc.get("tracking_uri")
    if not uri:
        raise ConfigError(f"--tracking-uri: the sweep's store at chief {address} is "
                          f"{desc.get('store', 'local to its machine')}: give a tracking server both can reach")
    return uri


def main(args) -> int:
    token = wire.token_from_env("a worker")
    worker = check_id(args.id or default_id())
    chan, desc = connect(args.chief, token, worker, args.wait)
    workdir = Path(tempfile.gettempdir()) / "mnist-exp-worker" / f"{desc['name']}-{desc['parent_run_id'][:8]}" / worker
    workdir.mkdir(parents=True, exist_ok=True)
    exp, space = sweep_from(desc, args.chief, args.data, workdir)

    ds = load_data(exp.data, exp.seed)
    if ds.fingerprint != desc["data_fingerprint"]:
        raise DataError(f"{exp.data.source}: not the sweep's data (fingerprint {ds.fingerprint[:12]}, the sweep's "
                        f"{desc['data_fingerprint'][:12]}): --data must name the same digits")
    uri = store.resolve_tracking_uri(tracking_uri(args.tracking_uri, desc, args.chief))
    store.prepare(uri, write=True, experiment=exp.mlflow_experiment)
    return _work(args, chan, desc, exp, space, ds, uri, worker, workdir)


def _work(args, chan, desc, exp, space, ds, uri, worker, workdir) -> int:
    import_tensorflow()
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    import keras

    try:
        liveness.reap(uri, "mnist-exp worker")  # this machine's runs of dead processes (a restarted worker's own)
    except Exception as e:
        print(f"worker {worker}: warning: runs of dead processes not checked: {type(e).__name__}: {e}"[:300],
              file=sys.stderr)
    experiment_id = tracking.configure(uri, exp.mlflow_experiment)
    if experiment_id != desc["experiment_id"]:
        raise ConfigError(f"--tracking-uri {uri}: not the sweep's store (experiment {exp.mlflow_experiment} is "
                          f"{experiment_id} here, {desc['experiment_id']} at the chief)")
    try:
        tracking.get_run(desc["parent_run_id"])
    except Exception:
        raise ConfigError(f"--tracking-uri {uri}: parent run {desc['parent_run_id']} of sweep {exp.name} is not "
                          "in this store: give the sweep's tracking server") from None
    # Each worker its own stream of random numbers, the same across its restarts.
    keras.utils.set_random_seed((exp.seed + sum(worker.encode()) * 1009) % 2**32)
    lease = Lease()
    sw = SweepContext(exp, ds, experiment_id, desc["parent_run_id"], arrays=training.fit_arrays(ds),
                             worker=worker)
    os.environ["KERASTUNER_TUNER_ID"] = worker  # Keras Tuner reads its tuner id here
    for k in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):  # the oracle is swapped in below, ours
        os.environ.pop(k, None)
    tuner = make_tuner(sw, space.to_hyperparameters(fixed=exp.hp), workdir, verbose=args.verbose,
                              mixins=(WorkerTunerMixin,))
    tuner.attach_chief(ChiefOracle(tuner.oracle, chan, worker), lease)
    print(f"worker {worker}: sweep {exp.name} from chief {args.chief}; store {uri}; checkpoints in {workdir}",
          flush=True)
    with signals.handled():
        _renew_lease(chan, lease, worker, desc, args.chief)
        if args.chief_pid:
            watch_parent(args.chief_pid)
        x, y, val = sw.arrays
        try:
            tuner.search(x, y, validation_data=val, epochs=exp.training.epochs, verbose=args.verbose)
        except ChiefGone as e:
            print(f"worker {worker}: stopped: {e}; its trial runs again", file=sys.stderr, flush=True)
            return 1
    print(f"worker {worker}: the chief has no more trials; done", flush=True)
    return 0


def _renew_lease(chan, lease: Lease, worker: str, desc: dict, address: str) -> None:
    """Renew the lease every ``renew_s``. A chief that says stop, or that has not answered for twice
    the lease (it has given the trial away by then), stops this worker: SIGTERM to itself, so the trial's
    run ends KILLED at a safe point; a second one after a grace period forces it, then a hard exit."""
    beat = wire.json_method(chan, "Renew")
    every, lease_s = desc["renew_s"], desc["lease_s"]

    def loop():
        while True:
            time.sleep(every)
            try:
                answer = beat({"trial_id": lease.trial_id}, timeout=max(every, 2.0))
            except Exception:
                if time.monotonic() - lease.last_ok > 2 * lease_s:
                    print(f"worker {worker}: chief {address} silent for {2 * lease_s:.0f} s; stopping", flush=True)
                    break
                continue
            lease.last_ok = time.monotonic()
            if answer.get("lost") and lease.trial_id and lease.lost != lease.trial_id:
                lease.lost = lease.trial_id
                print(f"worker {worker}: trial {lease.trial_id} was given to another worker (lease expired); "
                      "stopping it", flush=True)
            if answer.get("stop"):
                print(f"worker {worker}: the chief is stopping; stopping", flush=True)
                break
        _stop_self()

    threading.Thread(target=loop, name="lease-renewal", daemon=True).start()


def _stop_self(grace_s: float = 15.0) -> None:
    for _ in range(2):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
    os._exit(137)


def watch_parent(pid: int, poll_s: float = 1.0, grace_s: float = 15.0) -> None:
    """A local worker whose chief process is gone (kill -9) stops, as above, without waiting out the lease."""

    def watch():
        while os.getppid() == pid:
            time.sleep(poll_s)
        _stop_self(grace_s)

    threading.Thread(target=watch, name="watch-chief", daemon=True).start()


# --- the worker's tuner and oracle client --------------------------------------------------------------


class WorkerTunerMixin:
    """Before the mixins of tracked_tuner.make_tuner: a worker's trial commits only with its chief's consent."""

    lease: Lease

    def attach_chief(self, oracle, lease: Lease) -> None:
        """Ask the chief for trials (``oracle``, a ChiefOracle) and hold them on ``lease``."""
        self.oracle, self.lease = oracle, lease

    def _is_worker(self):
        return True  # Keras Tuner decides this from the environment, which no longer names the chief

    def on_trial_begin(self, trial):
        self.lease.trial_id, self.lease.lost = trial.trial_id, None
        super().on_trial_begin(trial)

    def extra_callbacks(self) -> list:
        return [_LeaseCheck(self.lease)]

    def claim(self, trial_id: str) -> None:
        if self.lease.lost == trial_id or not self.oracle.claim(trial_id):
            raise Superseded(f"trial {trial_id}: the lease expired and the trial was given to another worker")

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)
        except Superseded as e:  # the chief refused this report: the attempt is recorded as superseded
            print(f"[sweep {self.sweep.exp.name} {self.tuner_id}] {e}", flush=True)
            signals.defer(False)
            signals.check()
        finally:
            self.lease.trial_id = None


def _LeaseCheck(lease: Lease):
    import keras

    class LeaseCheck(keras.callbacks.Callback):
        """Stops training once the chief has given this trial away (its result would be refused)."""

        def __init__(self, lease):
            super().__init__()
            self.lease = lease

        def on_train_batch_end(self, batch, logs=None):
            if self.lease.lost is not None and self.lease.lost == self.lease.trial_id:
                self.model.stop_training = True

    return LeaseCheck(lease)


def ChiefOracle(local_oracle, chan, worker: str):
    """Keras Tuner's OracleClient over our authenticated channel, with the chief's refusals and silences
    turned into Superseded and ChiefGone."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_client import OracleClient
    from keras_tuner.src.engine import trial as trial_module

    class Stub:
        def __init__(self, stub):
            self._stub = stub

        def __getattr__(self, name):
            call = getattr(self._stub, name)

            def guarded(*a, **kw):
                try:
                    return call(*a, **kw)
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        raise Superseded(e.details()) from None
                    raise ChiefGone(f"the chief did not answer {name} ({e.code().name}: {e.details()})") \
                        from None

            return guarded

    class Client(OracleClient):
        def __init__(self):  # OracleClient's own opens an unauthenticated channel from the environment
            self._oracle = local_oracle
            self.stub = Stub(protos.get_service_grpc().OracleStub(chan))
            self.tuner_id = worker
            self.multi_worker = False
            self.should_report = True
            self._claim = wire.json_method(chan, "Claim")

        def create_trial(self, tuner_id):
            while True:
                trial = super().create_trial(tuner_id)
                if trial.status != trial_module.TrialStatus.IDLE:
                    return trial
                time.sleep(1.0)  # Keras Tuner's loop asks again at once: not a busy loop against the chief

        def claim(self, trial_id: str) -> bool:
            try:
                return bool(self._claim({"trial_id": trial_id}).get("ok"))
            except grpc.RpcError as e:
                raise ChiefGone(f"the chief did not answer Claim ({e.code().name})") from None

    return Client()
