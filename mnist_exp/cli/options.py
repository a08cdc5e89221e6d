"""Flags several commands share."""

from __future__ import annotations

import argparse


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<root>/mlruns/mlflow.db)")


def run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", help="experiments/*.yaml (default: the seed baseline on embedded data)")
    p.add_argument("--data", help="data source: embedded, mnist, an .npz or a folder of IDX files")
    p.add_argument("--epochs", type=int, help="epochs per trial (training.epochs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment key, e.g. --set hp.learning_rate=3e-4 --set data.train_size=500")
    p.add_argument("--verbose", action="store_true",
                   help="also show Keras's progress bars and Keras Tuner's per-trial tables (default: one line per epoch)")
    common(p)
