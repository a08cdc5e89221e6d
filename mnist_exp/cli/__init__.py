"""``mnist-exp`` command line: flags in, the API (``api.py``) called, lines and exit codes out.

Every command imports what it needs inside its function (TensorFlow, Keras and MLflow come with the API), so
``mnist-exp --help`` answers at once: the imports below the module's top are there for that reason alone."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mnist_exp._version import __version__
from mnist_exp.runtime.errors import ConfigError, DiskFull, MnistExpError
from mnist_exp.spec.experiment import TUNER_KINDS
from mnist_exp.cli.examples import add_examples
from mnist_exp.cli.options import common as _common
from mnist_exp.cli.options import run_options as _run_options
from mnist_exp.cli.server_commands import cmd_server, cmd_server_users, cmd_ui, server_parsers as _server_parsers


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mnist-exp",
        description="Hyperparameter experiments for CNNs on MNIST: Keras Tuner sweeps tracked in MLflow.",
    )
    ap.add_argument("--version", action="version", version=f"mnist-exp {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model (the seed baseline by default) as one MLflow run")
    _run_options(p)
    _sweep_parser(sub)
    _worker_parser(sub)
    _results_parsers(sub)
    _server_parsers(sub)
    add_examples(ap)  # every command's --help ends with its examples (examples.py)
    return ap


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a Keras Tuner search; every trial is a nested MLflow run")
    _run_options(p)
    p.add_argument("--name", help="sweep name (default: the experiment's name)")
    p.add_argument("--max-trials", type=int, help="tuner.max_trials")
    p.add_argument("--tuner", choices=TUNER_KINDS, help="tuner.kind")
    p.add_argument("--budget", metavar="DURATION",
                   help="tuner.budget: wall-clock limit such as 2h, 90m, 1h30m; no trial starts that would not end in it")
    p.add_argument("--refit", action="store_true", default=None,
                   help="tuner.refit: retrain the best configuration on train + validation digits as its own run")
    p.add_argument("--warm-start", metavar="SWEEP[,SWEEP]",
                   help="tuner.warm_start: begin with the best configurations of these earlier sweeps")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="tuner.parallel_trials: N trials at once, each in a worker process with a share of the cores "
                        "(with --serve: N local workers, 0 allowed)")
    p.add_argument("--serve", metavar="[HOST:]PORT",
                   help="be the chief that workers on other machines join (mnist-exp worker), listening on that "
                        "address only (PORT alone: loopback); needs $MNIST_EXP_TOKEN")
    p.add_argument("--tls-cert", metavar="PEM", help="with --serve: workers connect over TLS, to this certificate "
                                                     "(chain); workers give its CA with --tls-ca")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--lease-timeout", type=float, default=30.0, metavar="S",
                   help="a worker silent this long loses its trial to another worker (default 30)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing sweep of that name and start afresh")


def _worker_parser(sub) -> None:
    p = sub.add_parser("worker", help="train a sweep's trials for its chief (mnist-exp sweep --serve), on any machine")
    p.add_argument("--tracking-uri", help="the sweep's tracking server (default: $MLFLOW_TRACKING_URI, else the one the "
                                          "chief uses when that is a server)")
    p.add_argument("--chief", required=True, metavar="HOST:PORT", help="the chief's address (its --serve)")
    p.add_argument("--tls-ca", metavar="PEM", help="connect over TLS, trusting the chief's certificate if this CA "
                                                   "signed it (a chief started with --tls-cert)")
    p.add_argument("--data", help="where this machine has the sweep's data (checked against the sweep's fingerprint)")
    p.add_argument("--id", help="this worker's id, stable across its restarts (default: the host name)")
    p.add_argument("--threads", type=int, help="TensorFlow threads (default: all cores)")
    p.add_argument("--wait", type=float, default=60.0, metavar="S", help="wait this long for the chief (default 60)")
    p.add_argument("--verbose", action="store_true", help="Keras's own line per epoch as well")
    p.add_argument("--chief-pid", type=int, help=argparse.SUPPRESS)  # local workers: stop when the chief is gone


def _results_parsers(sub) -> None:
    p = sub.add_parser("compare", help="leaderboard of sweep trials read from MLflow")
    p.add_argument("sweeps", nargs="*", help="sweep names (default: every sweep)")
    p.add_argument("--metric", help="sort by this metric (default: each sweep's objective)")
    p.add_argument("--top", type=int, default=10, help="rows per sweep (default 10)")
    p.add_argument("--csv", help="write the full leaderboard to this CSV file")
    p.add_argument("--plot", help="write a comparison figure (PNG) to this file")
    p.add_argument("--importance", action="store_true",
                   help="which hyperparameters mattered for each sweep's objective (fANOVA; 8 trials or more)")
    p.add_argument("--experiment-name", default="mnist-exp", help="MLflow experiment (default mnist-exp)")
    _common(p)

    p = sub.add_parser("promote", help="register a sweep's best trial and move the champion alias to it")
    p.add_argument("sweep", nargs="?", help="sweep name (default: the most recent sweep)")
    p.add_argument("--model-name", default="mnist-cnn", help="the registered model (default mnist-cnn)")
    p.add_argument("--alias", default="champion", help="the alias moved to the new version (default champion)")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    p.add_argument("--force", action="store_true", help="promote even if the champion's test accuracy is higher")
    p.add_argument("--ensemble", type=int, metavar="K", default=None,
                   help="average up to K trials, chosen on validation, as one model (default: the sweep's "
                        "tuner.ensemble; 1: the best trial alone)")
    p.add_argument("--experiment-name", default="mnist-exp", help="MLflow experiment (default mnist-exp)")
    _common(p)

    p = sub.add_parser("gc", help="delete the models and plots of a sweep's trials but the best K (params, metrics, "
                                  "tags and registered models kept)")
    p.add_argument("sweep", help="sweep name")
    p.add_argument("--keep-top", type=int, metavar="K", required=True, help="keep the K best trials whole")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted and the bytes, change nothing")
    p.add_argument("--experiment-name", default="mnist-exp", help="MLflow experiment (default mnist-exp)")
    _common(p)

    p = sub.add_parser("relocate", help="make a local store moved or copied to another folder usable there "
                                        "(backup, rewrite its recorded artifact locations, verify)")
    _common(p)

    p = sub.add_parser("predict", help="classify PNG/JPEG digits (or an .npz of images) with a registered model")
    p.add_argument("images", nargs="+", help="image files or .npz files")
    p.add_argument("--model", default="models:/mnist-cnn@champion", help="model URI (default: the champion)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    _common(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        return int(COMMANDS[args.command](args) or 0)
    except MnistExpError as e:
        print(f"mnist-exp {args.command}: error: {e}", file=sys.stderr)
        if isinstance(e, DiskFull) and argv is None:
            # A checkpoint half-written on a full disk makes h5py crash (SIGSEGV) when the interpreter
            # finalises it; everything is recorded by now, so leave without finalising.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.exit_code)
        return e.exit_code
    except Exception as e:
        code = _refused_by_server(args.command, e)
        if code is None:
            raise
        return code
    except KeyboardInterrupt as e:
        from mnist_exp.runtime import signals

        try:
            print(f"mnist-exp {args.command}: interrupted", file=sys.stderr)
        except OSError:  # stderr gone with the terminal
            pass
        return signals.exit_code(e)  # 128 + signal: SIGINT 130, SIGTERM 143, SIGHUP 129


def _refused_by_server(command: str, e: Exception) -> int | None:
    """A tracking server with auth that refused the user (401: exit 2) or the request (403: exit 1), said in
    one line; None for any other error."""
    if not type(e).__module__.startswith("mlflow"):
        return None
    from mnist_exp.tracking import server_store

    status = server_store.http_status(e)
    if status is None:
        return None
    import mlflow

    uri = mlflow.get_tracking_uri()
    line = (server_store.unauthenticated(uri) if status == 401
            else server_store.permission_denied(uri, "promote" if command == "promote" else "run"))
    print(f"mnist-exp {command}: error: {line}", file=sys.stderr)
    return 2 if status == 401 else 1


def _overrides(args) -> list[str]:
    """The flags that set experiment keys, as overrides whose errors name the flag the user typed."""
    from mnist_exp.spec.experiment import Override

    out = []
    if getattr(args, "data", None):
        src = args.data
        if src not in ("embedded", "mnist"):
            src = str(Path(src).resolve())
        out.append(Override(f"data.source={src}", f"--data {args.data}"))
    if getattr(args, "epochs", None) is not None:
        out.append(Override(f"training.epochs={args.epochs}", f"--epochs {args.epochs}"))
    if getattr(args, "max_trials", None) is not None:
        out.append(Override(f"tuner.max_trials={args.max_trials}", f"--max-trials {args.max_trials}"))
    if getattr(args, "tuner", None):
        out.append(Override(f"tuner.kind={args.tuner}", f"--tuner {args.tuner}"))
    if getattr(args, "budget", None) is not None:
        out.append(Override(f"tuner.budget={args.budget}", f"--budget {args.budget}"))
    if getattr(args, "refit", None):
        out.append(Override("tuner.refit=true", "--refit"))
    if getattr(args, "warm_start", None):
        out.append(Override(f"tuner.warm_start={json.dumps(args.warm_start)}", f"--warm-start {args.warm_start}"))
    if getattr(args, "parallel", None) is not None:
        out.append(Override(f"tuner.parallel_trials={args.parallel}", f"--parallel {args.parallel}"))
    return out + list(args.overrides)


def cmd_train(args) -> int:
    from mnist_exp import api  # here, not at the top: --help stays instant

    api.train(args.experiment, _overrides(args), args.tracking_uri, verbose=args.verbose)
    return 0


def cmd_sweep(args) -> int:
    local_workers = _local_workers(args)
    if args.serve is not None:
        from mnist_exp.search.distributed import wire

        wire.parse_address(args.serve, "--serve")
        wire.token_from_env("--serve")
    if not 1 <= args.lease_timeout <= 86400:
        raise ConfigError(f"--lease-timeout: must be 1-86400 seconds (got {args.lease_timeout})")
    from mnist_exp import api  # here, not at the top: --help stays instant

    result = api.sweep(args.experiment, _overrides(args), name=args.name, tracking_uri=args.tracking_uri,
                       overwrite=args.overwrite, verbose=args.verbose, serve=args.serve,
                       local_workers=local_workers, lease_s=args.lease_timeout, tls_cert=args.tls_cert,
                       tls_key=args.tls_key)
    return 0 if result.completed else 1


def _local_workers(args) -> int | None:
    """--parallel with --serve counts local workers (0 allowed); without --serve it is tuner.parallel_trials."""
    if args.serve is None:
        return None
    n = args.parallel
    if n is not None and n < 0:
        raise ConfigError(f"--parallel: must be >= 0 with --serve (got {n})")
    if n == 0:
        args.parallel = None  # not an experiment setting: tuner.parallel_trials stays as the file says
    return n


def cmd_worker(args) -> int:
    from mnist_exp.search.distributed import worker

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: must be >= 1 (got {args.threads})")
    return worker.main(args)


def cmd_compare(args) -> int:
    from mnist_exp import api  # here, not at the top: --help stays instant
    from mnist_exp.results import compare

    compare.check_args(args)  # before the store is opened (or its folder created)
    uri = api.open_store(args.tracking_uri, write=False, experiment=args.experiment_name, command="compare")
    return compare.main(uri, args)


def cmd_promote(args) -> int:
    from mnist_exp import api  # here, not at the top: --help stays instant
    from mnist_exp.results.promote import PromotionRefused

    try:
        p = api.promote(args.sweep, args.model_name, args.alias, force=args.force, dry_run=args.dry_run,
                        tracking_uri=args.tracking_uri, experiment=args.experiment_name, ensemble=args.ensemble)
    except PromotionRefused as e:
        print(f"mnist-exp promote: refused: {e}", file=sys.stderr)
        return 1
    what = (f"ensemble of {len(p.members)} models" if p.members else
            f"trial {p.trial_id}'s refit on all training digits" if p.refit else f"trial {p.trial_id}")
    print(f"{p.sweep} {what} (run {p.run_id}): {p.objective}={p.objective_value:.4f}, "
          f"test accuracy {p.test_accuracy:.4f}")
    print(p.version if args.dry_run else f"{p.model_uri} -> version {p.version}")
    return 0


def cmd_gc(args) -> int:
    from mnist_exp import api  # here, not at the top: --help stays instant

    c, freed = api.gc(args.sweep, args.keep_top, dry_run=args.dry_run, tracking_uri=args.tracking_uri,
                      experiment=args.experiment_name)
    for run_id, why in sorted(c.kept.items(), key=lambda kv: kv[1]):
        print(f"keep   run {run_id}: {why}")
    for item in c.items:
        print(f"{'would delete' if args.dry_run else 'deleted'} trial {item.trial} (run {item.run_id}): "
              f"model and plots, {item.bytes / 1e6:.1f} MB")
    total = c.bytes if args.dry_run else freed
    print(f"sweep {c.sweep}: {len(c.items)} trial(s), {total / 1e6:.1f} MB {'would be ' if args.dry_run else ''}freed")
    return 0


def cmd_relocate(args) -> int:
    from mnist_exp import api  # here, not at the top: --help stays instant

    r = api.relocate(args.tracking_uri)
    if not r.old:
        print(f"nothing to do: the store records its own folder; {r.models_checked} registered model(s) found")
        return 0
    done = ", ".join(f"{n} {col}" for col, n in r.rewritten.items())
    print(f"relocated from {', '.join(r.old)}: {done}; backup {r.backup}; verified: the store records its own "
          f"folder, {r.models_checked} registered model(s) found")
    return 0


def cmd_predict(args) -> int:
    from mnist_exp import api  # here, not at the top: --help stays instant
    from mnist_exp.model import predict

    images = predict.load_all(args.images)  # every file read and checked before the store is touched
    needs_model = any(reason is None for *_, reason in images)  # images without a digit are not classified
    uri = api.open_store(args.tracking_uri, write=False) if needs_model else ""
    return predict.main(uri, args, images)


COMMANDS = {
    "train": cmd_train,
    "sweep": cmd_sweep,
    "worker": cmd_worker,
    "compare": cmd_compare,
    "promote": cmd_promote,
    "predict": cmd_predict,
    "ui": cmd_ui,
    "server": cmd_server,
    "gc": cmd_gc,
    "relocate": cmd_relocate,
    "server-users": cmd_server_users,
}

if __name__ == "__main__":
    sys.exit(main())
