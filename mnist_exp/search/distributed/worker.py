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
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

from mnist_exp.model.data import load_data
from mnist_exp.runtime.errors import ConfigError, DataError, TrackingUnavailable
from mnist_exp.runtime.terminal import import_tensorflow
from mnist_exp.search.distributed import wire
from mnist_exp.spec import names
from mnist_exp.spec.experiment import experiment_from_dict
from mnist_exp.spec.space import load_space
from mnist_exp.tracking import store


def default_id() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "worker"
    return host if host[0].isalnum() else f"w{host}"


def check_id(worker: str) -> str:
    names.check(worker, "--id", key=None)
    if "chief" in worker:  # Keras Tuner takes any tuner id containing "chief" for the chief
        raise ConfigError(f"--id: must not contain 'chief' (got {worker!r})")
    return worker


def connect(address: str, token: str, worker: str, wait_s: float, ca_path: str | None = None):
    """(channel, description) of the chief at ``address``; one line if it does not answer in ``wait_s``, or speaks
    another transport (TLS, or a certificate ``ca_path`` does not vouch for). On the channel returned no call
    waits longer than the lease: a worker of a dead chief stops that soon."""
    import grpc

    host, port = wire.parse_address(address, "--chief")
    ca = wire.client_ca(ca_path)
    wire.check_transport(host, port, ca, ca_path, address, wait_s)
    chan = wire.channel(host, port, token, worker, wait_s, ca)
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
    return wire.channel(host, port, token, worker, float(desc["lease_s"]), ca), desc


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
    chan, desc = connect(args.chief, token, worker, args.wait, args.tls_ca)
    workdir = Path(tempfile.gettempdir()) / "mnist-exp-worker" / f"{desc['name']}-{desc['parent_run_id'][:8]}" / worker
    workdir.mkdir(parents=True, exist_ok=True)
    exp, space = sweep_from(desc, args.chief, args.data, workdir)

    ds = load_data(exp.data, exp.seed)
    if ds.fingerprint != desc["data_fingerprint"]:
        raise DataError(f"{exp.data.source}: not the sweep's data (fingerprint {ds.fingerprint[:12]}, the sweep's "
                        f"{desc['data_fingerprint'][:12]}): --data must name the same digits")
    uri = store.resolve_tracking_uri(tracking_uri(args.tracking_uri, desc, args.chief))
    store.prepare(uri, write=True, experiment=exp.mlflow_experiment)
    import_tensorflow()  # quietly (no C++ start-up notices), and only once the chief has answered
    import tensorflow as tf

    if args.threads:  # before TensorFlow runs anything
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    from mnist_exp.search.distributed import worker_tuner  # Keras Tuner and Keras: after the lines above

    return worker_tuner.work(args, chan, desc, exp, space, ds, uri, worker, workdir)


