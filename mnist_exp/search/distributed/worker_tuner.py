"""A worker's side of the search: Keras Tuner's tuner over an oracle that asks the chief, trials committed only
with the chief's consent."""

from __future__ import annotations

import os
import sys
import time

import keras

from mnist_exp import tracking
from mnist_exp.model import training
from mnist_exp.runtime import signals
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.search.distributed import wire
from mnist_exp.search.distributed.worker_lease import Lease, renew_lease, watch_parent
from mnist_exp.search.tracked_tuner import SweepContext, make_tuner
from mnist_exp.search.trial_failures import ChiefGone, Superseded
from mnist_exp.tracking import liveness


def work(args, chan, desc, exp, space, ds, uri, worker, workdir) -> int:
    """Train the chief's trials until it has none left (0) or stops answering (1)."""
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
        renew_lease(chan, lease, worker, desc, args.chief)
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
        """Stops training at the end of the epoch once the chief has given this trial away (its result would be
        refused; the worker that has it now continues from this attempt's checkpoint). Epoch-level: a batch hook
        would cost every step a Python call."""

        def __init__(self, lease):
            super().__init__()
            self.lease = lease

        def on_epoch_end(self, epoch, logs=None):
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
