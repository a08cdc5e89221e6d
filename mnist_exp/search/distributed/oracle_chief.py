"""The chief of a sweep across processes or machines: Keras Tuner's oracle served over gRPC, with leases.

Keras Tuner's own ``OracleServicer`` does the search; around it this adds what its distributed mode
lacks (its issue tracker: no liveness check, workers hanging on a dead chief, no authentication):

- every call must carry the shared token (wire.TOKEN_KEY) or is refused UNAUTHENTICATED;
- a worker holds its trial on a lease: any call from it renews it, ``Renew`` every few seconds. A
  worker silent for ``lease_s`` loses its trial to the retry queue and its run is marked KILLED (the worker
  that gets the trial next reopens that run and continues from its checkpoint, search/trial_resume.py);
  whatever the silent worker reports for that trial later is refused, and it writes nothing more to the run,
  so its result is never a second finished trial;
- ``Claim`` asks, just before a worker marks its run FINISHED (the commit point, tracked_tuner.py), whether it
  still holds the trial: a claim and a revocation are serialised by one lock, so exactly one side wins;
- ``Describe`` gives the sweep's definition (experiment, search space text, parent run, data
  fingerprint, tracking URI), so a worker elsewhere needs no file of this machine;
- with TLS (``wire.ServerTLS``) the served address speaks TLS only; this machine's own workers reach the chief
  on a second, plaintext port on loopback (``local_port``), the token still required.
"""

from __future__ import annotations

import hmac
import sys
import threading
import time
from concurrent import futures

from mnist_exp import tracking
from mnist_exp._version import __version__
from mnist_exp.runtime.errors import ConfigError
from mnist_exp.search.distributed import wire
from mnist_exp.tracking import keys


class Chief:
    def __init__(self, oracle, sw, uri: str, description: dict, token: str, lease_s: float = 30.0):
        self.oracle, self.sw, self.uri = oracle, sw, uri
        self.token = token.encode()
        self.lease_s = lease_s
        self.renew_s = max(0.5, min(5.0, lease_s / 6))
        self.description = {**description, "lease_s": lease_s, "renew_s": self.renew_s,
                            "version": __version__, "protocol": wire.PROTOCOL}
        self.lock = threading.Lock()  # the workers' registry; claims and revocations
        # A resumed chief gives the workers that held trials when it stopped one lease to come back for them.
        now = time.monotonic()
        self.seen: dict[str, float] = {tid: now for tid in oracle.ongoing_trials}
        self.stop_triggered = False
        self.stopping = False
        self._stop = threading.Event()
        self.server = None
        self.port = 0
        self.local_port = 0  # where this machine's workers connect (the served port itself without TLS)

    # --- serving ------------------------------------------------------------------------------------

    def start(self, host: str, port: int, tls: wire.ServerTLS | None = None) -> int:
        import grpc
        from keras_tuner.src import protos

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                  interceptors=[_TokenCheck(self)])
        protos.get_service_grpc().add_OracleServicer_to_server(_GuardedOracleServicer(self), self.server)
        handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(self, f"rpc_{name.lower()}"),
                                                              request_deserializer=wire.loads,
                                                              response_serializer=wire.dumps)
                    for name in wire.METHODS}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, handlers),))
        try:
            if tls is None:
                self.port = self.local_port = self.server.add_insecure_port(wire.target(host, port))
            else:
                creds = grpc.ssl_server_credentials([(tls.key, tls.cert)])
                self.port = self.server.add_secure_port(wire.target(host, port), creds)
                self.local_port = self.server.add_insecure_port("127.0.0.1:0")
                if not self.local_port:
                    raise RuntimeError("no loopback port for this machine's workers")
        except RuntimeError as e:  # grpc raises instead of returning 0 on some failures
            raise ConfigError(f"--serve {wire.target(host, port)}: cannot listen there ({e})") from None
        if not self.port:
            raise ConfigError(f"--serve {wire.target(host, port)}: cannot listen there (address in use, or not "
                              "an address of this machine)")
        self.server.start()
        threading.Thread(target=self._watch_leases, name="chief-leases", daemon=True).start()
        return self.port

    def announce_stop(self) -> None:
        """Workers hear "stop" with their next renewal."""
        self.stopping = True

    def stop(self, grace_s: float = 0.0) -> None:
        """Tell workers to stop (their next renewal hears it), give them ``grace_s``, then close."""
        self.announce_stop()
        deadline = time.monotonic() + grace_s
        while grace_s and time.monotonic() < deadline and self.live_workers():
            time.sleep(0.2)
        self._stop.set()
        if self.server is not None:
            self.server.stop(grace=1)

    def oracle_said_stop(self) -> None:
        self.stop_triggered = True

    def done(self) -> bool:
        """Keras Tuner's own end condition (oracle_chief.exit_chief): the oracle said stop, nothing is
        running and every worker that asked has been told to stop (or lost its lease)."""
        o = self.oracle
        return self.stop_triggered and not o.ongoing_trials and not o.tuner_ids

    def live_workers(self) -> list[str]:
        now = time.monotonic()
        with self.lock:
            return [w for w, t in self.seen.items() if now - t <= self.lease_s]

    # --- the registry ------------------------------------------------------------------------------

    def touch(self, worker: str | None) -> None:
        if worker:
            with self.lock:
                if worker not in self.seen:
                    print(f"[sweep {self.sw.exp.name}] worker {worker} joined", flush=True)
                self.seen[worker] = time.monotonic()

    def _watch_leases(self) -> None:
        while not self._stop.wait(min(1.0, self.renew_s)):
            try:
                self._expire_silent()
            except Exception as e:  # e.g. the tracking server did not take the state: the sweep stops on it
                print(f"[sweep {self.sw.exp.name}] warning: leases not checked: {type(e).__name__}: {str(e)[:200]}",
                      file=sys.stderr, flush=True)

    def _expire_silent(self) -> None:
        """Silent workers lose their trials (to the retry queue) and their runs end KILLED."""
        now = time.monotonic()
        with self.lock:
            silent = [w for w, t in self.seen.items() if now - t > self.lease_s]
            lost = []
            for w in silent:
                del self.seen[w]
                trial = self.oracle.revoke(w)
                if trial is not None:
                    lost.append((w, trial.trial_id))
        for w, trial_id in lost:
            print(f"[sweep {self.sw.exp.name}] worker {w} silent for more than {self.lease_s:.0f} s: "
                  f"trial {trial_id} goes back to the queue", flush=True)
            self._kill_runs(w, trial_id)

    def _kill_runs(self, worker: str, trial_id: str) -> None:
        """The silent worker's run of the trial ends KILLED: the trial is run again by another worker."""
        try:
            for run in tracking.trial_runs(self.sw.experiment_id, self.sw.parent_run_id, trial_id=trial_id):
                if run.info.status == keys.RUNNING and run.data.tags.get(keys.TAG_TUNER_ID) == worker:
                    tracking.set_tags({keys.TAG_ERROR: f"lease expired: worker {worker} silent for more than "
                                                           f"{self.lease_s:.0f} s; the trial runs again"},
                                      run_id=run.info.run_id)
                    tracking.set_status(run.info.run_id, keys.KILLED)
        except Exception as e:  # the store is down: the next command reaps the run (liveness.py)
            print(f"[sweep {self.sw.exp.name}] warning: run of trial {trial_id} not marked KILLED: "
                  f"{type(e).__name__}: {str(e)[:200]}", file=sys.stderr, flush=True)

    # --- mnist_exp.Sweep methods -----------------------------------------------------------------------

    def rpc_describe(self, request, context):
        return self.description

    def rpc_renew(self, request, context):
        worker = _caller(context)
        trial_id = (request or {}).get("trial_id")
        lost = bool(trial_id) and not self.oracle.holds(worker, trial_id)
        return {"stop": self.stopping, "lost": lost}

    def rpc_claim(self, request, context):
        worker, trial_id = _caller(context), (request or {}).get("trial_id")
        with self.lock:  # against _watch_leases: a trial is either claimed by its holder or revoked, not both
            self.seen[worker] = time.monotonic()
            ok = self.oracle.holds(worker, trial_id)
        return {"ok": ok}


def _caller(context) -> str:
    return dict(context.invocation_metadata()).get(wire.WORKER_KEY, "")


def _refused(why: str):
    import grpc

    def deny(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    return grpc.unary_unary_rpc_method_handler(deny)


def _TokenCheck(chief: Chief):
    import grpc

    class TokenCheck(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            md = dict(details.invocation_metadata or ())
            if not hmac.compare_digest(md.get(wire.TOKEN_KEY, "").encode(), chief.token):
                return _refused(f"wrong or missing token: set {wire.TOKEN_ENV} to the chief's")
            chief.touch(md.get(wire.WORKER_KEY))
            return continuation(details)

    return TokenCheck()


def _GuardedOracleServicer(chief: Chief):
    """Keras Tuner's servicer, with each trial's reports accepted from its holder only."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer
    from keras_tuner.src.engine import trial as trial_module

    service = protos.get_service()

    class Guarded(OracleServicer):
        def CreateTrial(self, request, context):
            caller = _caller(context)
            if request.tuner_id != caller:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"worker {caller} asked for tuner {request.tuner_id}")
            trial = self.oracle.create_trial_for(caller)
            if trial.status == trial_module.TrialStatus.STOPPED:
                chief.oracle_said_stop()
            return service.CreateTrialResponse(trial=trial.to_proto())

        def UpdateTrial(self, request, context):
            trial = self.oracle.update_trial_from(_caller(context), request.trial_id, request.metrics, step=request.step)
            if trial is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, _not_yours(_caller(context), request.trial_id))
            return service.UpdateTrialResponse(trial=trial.to_proto())

        def EndTrial(self, request, context):
            trial = trial_module.Trial.from_proto(request.trial)
            if not self.oracle.end_trial_from(_caller(context), trial):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, _not_yours(_caller(context), trial.trial_id))
            return service.EndTrialResponse()

    return Guarded(chief.oracle)


def _not_yours(worker: str, trial_id: str) -> str:
    return (f"trial {trial_id} is no longer held by worker {worker}: its lease expired and the trial went back "
            "to the queue")
