"""``mnist-exp`` command line. Heavy libraries (TensorFlow, Keras, MLflow) load inside commands,
so ``mnist-exp --help`` answers at once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import MnistExpError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<root>/mlruns/mlflow.db)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", help="experiments/*.yaml (default: the seed baseline on embedded data)")
    p.add_argument("--data", help="data source: embedded, mnist, an .npz or a folder of IDX files")
    p.add_argument("--epochs", type=int, help="epochs per trial (training.epochs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment key, e.g. --set hp.learning_rate=3e-4 --set data.train_size=500")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mnist-exp",
        description="Hyperparameter experiments for CNNs on MNIST: Keras Tuner sweeps tracked in MLflow.",
    )
    ap.add_argument("--version", action="version", version=f"mnist-exp {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model (the seed baseline by default) as one MLflow run")
    _run_options(p)

    p = sub.add_parser("sweep", help="run a Keras Tuner search; every trial is a nested MLflow run")
    _run_options(p)
    p.add_argument("--name", help="sweep name (default: the experiment's name)")
    p.add_argument("--max-trials", type=int, help="tuner.max_trials")
    p.add_argument("--tuner", choices=["random", "bayesian", "hyperband", "grid"], help="tuner.kind")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="tuner.parallel_trials: N trials at once, each in a worker process with a share of the cores")
    p.add_argument("--overwrite", action="store_true", help="discard an existing sweep of that name and start afresh")

    p = sub.add_parser("compare", help="leaderboard of sweep trials read from MLflow")
    p.add_argument("sweeps", nargs="*", help="sweep names (default: every sweep)")
    p.add_argument("--metric", help="sort by this metric (default: each sweep's objective)")
    p.add_argument("--top", type=int, default=10, help="rows per sweep (default 10)")
    p.add_argument("--csv", help="write the full leaderboard to this CSV file")
    p.add_argument("--plot", help="write a comparison figure (PNG) to this file")
    p.add_argument("--experiment-name", default="mnist-exp", help="MLflow experiment (default mnist-exp)")
    _common(p)

    p = sub.add_parser("promote", help="register a sweep's best trial and move the champion alias to it")
    p.add_argument("sweep", nargs="?", help="sweep name (default: the most recent sweep)")
    p.add_argument("--model-name", default="mnist-cnn")
    p.add_argument("--alias", default="champion")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    p.add_argument("--force", action="store_true", help="promote even if the champion's test accuracy is higher")
    p.add_argument("--experiment-name", default="mnist-exp")
    _common(p)

    p = sub.add_parser("predict", help="classify PNG/JPEG digits (or an .npz of images) with a registered model")
    p.add_argument("images", nargs="+", help="image files or .npz files")
    p.add_argument("--model", default="models:/mnist-cnn@champion", help="model URI (default: the champion)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    _common(p)

    p = sub.add_parser("ui", help="start the MLflow UI on the store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1: quick to start)")
    _common(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        return int(COMMANDS[args.command](args) or 0)
    except MnistExpError as e:
        print(f"mnist-exp {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"mnist-exp {args.command}: interrupted", file=sys.stderr)
        return 130


def _overrides(args) -> list[str]:
    out = []
    if getattr(args, "data", None):
        src = args.data
        if src not in ("embedded", "mnist"):
            src = str(Path(src).resolve())
        out.append(f"data.source={src}")
    if getattr(args, "epochs", None) is not None:
        out.append(f"training.epochs={args.epochs}")
    if getattr(args, "max_trials", None) is not None:
        out.append(f"tuner.max_trials={args.max_trials}")
    if getattr(args, "tuner", None):
        out.append(f"tuner.kind={args.tuner}")
    if getattr(args, "parallel", None) is not None:
        out.append(f"tuner.parallel_trials={args.parallel}")
    if getattr(args, "name", None):
        out.append(f"name={args.name}")
    return out + list(args.overrides)


def _load(args):
    """Experiment, search space and data, all validated before anything is written."""
    from .config import load_experiment
    from .space import load_space, validate_fixed

    exp = load_experiment(args.experiment, _overrides(args))
    space = load_space(exp.search_space)
    validate_fixed(exp.hp, args.experiment or "--set")
    from .data import load_data

    ds = load_data(exp.data, exp.seed)
    return exp, space, ds


def cmd_train(args) -> int:
    exp, space, ds = _load(args)
    from . import tracking
    from .train import run_train

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    print(f"train {exp.name}: {ds.sizes['train']} train / {ds.sizes['val']} val / {ds.sizes['test']} test digits "
          f"from {ds.source}; {exp.training.epochs} epoch(s); store {uri}", flush=True)
    res = run_train(exp, space, ds, uri)
    print(f"run {res.run_id}: test accuracy {res.test_accuracy:.4f}, test loss {res.test_loss:.4f}, "
          f"{res.wall_s:.0f} s. See it: {tracking.ui_command(uri)}")
    return 0


def cmd_sweep(args) -> int:
    exp, space, ds = _load(args)
    from . import tracking
    from .sweep import run_sweep

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    result = run_sweep(exp, space, ds, uri, overwrite=args.overwrite)
    return 0 if result.completed else 1


def cmd_compare(args) -> int:
    from . import compare, tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    return compare.main(uri, args)


def cmd_promote(args) -> int:
    from . import promote, tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    return promote.main(uri, args)


def cmd_predict(args) -> int:
    from . import predict, tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    return predict.main(uri, args)


def cmd_ui(args) -> int:
    from . import tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers)]
    if uri.startswith("sqlite:"):
        artifacts = tracking.local_store_dir(uri) / "artifacts"
        cmd += ["--default-artifact-root", artifacts.as_uri()]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it", flush=True)
    os.execv(sys.executable, cmd)
    return 0


COMMANDS = {
    "train": cmd_train,
    "sweep": cmd_sweep,
    "compare": cmd_compare,
    "promote": cmd_promote,
    "predict": cmd_predict,
    "ui": cmd_ui,
}

if __name__ == "__main__":
    sys.exit(main())
