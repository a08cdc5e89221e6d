"""One or two example lines ending each command's --help (and ``mnist-exp --help``): what a newcomer types first."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("mnist-exp sweep experiments/quick.yaml && mnist-exp promote quick",
         "mnist-exp COMMAND --help"),
    "train": ("mnist-exp train",
              "mnist-exp train experiments/quick.yaml --set hp.learning_rate=3e-4 --epochs 3"),
    "sweep": ("mnist-exp sweep experiments/quick.yaml",
              "mnist-exp sweep experiments/best.yaml --data ~/mnist.npz --budget 1h --name best-1h"),
    "worker": ("export MNIST_EXP_TOKEN=$(cat ~/.mnist-exp-token)   # the chief's token, never on a command line",
               "mnist-exp worker --chief 10.0.0.5:8470 --tls-ca ca.pem --data ~/mnist.npz"),
    "compare": ("mnist-exp compare quick --plot quick.png",
                "mnist-exp compare best --importance --csv best.csv"),
    "promote": ("mnist-exp promote quick",
                "mnist-exp promote best --ensemble 5 --dry-run"),
    "gc": ("mnist-exp gc best --keep-top 10 --dry-run",),
    "relocate": ("mnist-exp relocate",
                 "mnist-exp relocate --tracking-uri sqlite:////data/moved/mlruns/mlflow.db"),
    "predict": ("mnist-exp predict my_digit.png",
                "mnist-exp predict --model models:/mnist-cnn/3 digits.npz --json"),
    "ui": ("mnist-exp ui",
           "mnist-exp ui --no-browser --port 5050"),
    "server": ("mnist-exp server /srv/mlflow --host 0.0.0.0 --tls-cert server.pem --tls-key server.key",),
    "server-users": ("mnist-exp server-users /srv/mlflow add ana --level run",
                     "mnist-exp server-users /srv/mlflow list"),
    "server-users add": ("mnist-exp server-users /srv/mlflow add ana --level run",),
    "server-users grant": ("mnist-exp server-users /srv/mlflow grant ana promote",),
    "server-users passwd": ("mnist-exp server-users /srv/mlflow passwd ana",),
    "server-users remove": ("mnist-exp server-users /srv/mlflow remove ana",),
    "server-users list": ("mnist-exp server-users /srv/mlflow list",),
}


def add_examples(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """End the help of ``parser`` and of every command under it with its examples (KeyError: a command without)."""
    parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[prefix.strip()])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for sub in [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]:
        for name, p in sub.choices.items():
            add_examples(p, f"{prefix}{name} ")
