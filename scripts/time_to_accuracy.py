"""Choosing a time-to-99.2% recipe: test accuracy after every epoch (on a GPU, where an epoch takes
seconds) and training speed on this machine (a short timed fit), for a few candidate recipes.

    KERAS_BACKEND=jax python scripts/time_to_accuracy.py curves --data mnist.npz --epochs 7 --out curves.json
    python scripts/time_to_accuracy.py speed --data ../shared/data/mnist.npz --out speed.json

Accuracy per epoch does not depend on the hardware (up to seed noise), speed does: the two together
estimate the wall time a recipe needs on the 2-core machine; `mnist-exp sweep experiments/fast.yaml`
then measures it for real (docs/performance-overview.md, part (g)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# hp overrides on the baseline; every recipe keeps the baseline's architecture
RECIPES = {
    "bn32": {"batch_norm": True, "batch_size": 32},
    "bn64": {"batch_norm": True, "batch_size": 64, "learning_rate": 2e-3},
    "bn128": {"batch_norm": True, "batch_size": 128, "learning_rate": 3e-3},
    "plain32": {"batch_size": 32},
    "bn64_f64": {"batch_norm": True, "batch_size": 64, "learning_rate": 2e-3, "filters_1": 64},
    "plain64_d25": {"batch_size": 64, "learning_rate": 2e-3, "dropout_1": 0.25, "dropout_2": 0.25},
}


def _hp(overrides: dict):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for k, v in overrides.items():
        hp.Fixed(k, v)
    return hp


def _load(path: str):
    import numpy as np

    from mnist_exp.model.data import one_hot, to_model_inputs

    with np.load(path) as z:
        return (to_model_inputs(z["x_train"]), one_hot(z["y_train"]), to_model_inputs(z["x_test"]),
                one_hot(z["y_test"]))


def curves(args, names) -> dict:
    import keras

    from mnist_exp.model.cnn import build_model

    x, y, xt, yt = _load(args.data)
    out = {}
    for name in names:
        keras.utils.set_random_seed(args.seed)
        hp = _hp(RECIPES[name])
        model = build_model(hp, steps_per_execution=args.spe)
        accs = []
        for _ in range(args.epochs):
            model.fit(x, y, batch_size=hp.get("batch_size"), epochs=1, verbose=0)
            accs.append(float(model.evaluate(xt, yt, batch_size=1024, verbose=0)[1]))
        out[name] = accs
        print(name, " ".join(f"{a:.4f}" for a in accs), flush=True)
        if args.out:  # after each recipe: a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps({"partial": True, "result": out}, indent=1))
    return out


def speed(args, names) -> dict:
    import keras

    from mnist_exp.model.training import CNNHyperModel

    x, y, _, _ = _load(args.data)
    x, y = x[: args.n], y[: args.n]
    out = {}
    for name in names:
        keras.utils.set_random_seed(args.seed)
        hp = _hp(RECIPES[name])
        hm = CNNHyperModel(n_train=len(x))  # the suite's own training path (input pipeline, spe 8)
        model = hm.build(hp)
        hm.fit(hp, model, x[:1024], y[:1024], epochs=1, verbose=0)  # trace, untimed
        t0 = time.perf_counter()
        hm.fit(hp, model, x, y, epochs=1, verbose=0)
        out[name] = len(x) / (time.perf_counter() - t0)
        print(f"{name:<12} {out[name]:6.0f} images/s  -> {60000 / out[name]:5.0f} s per 60,000-digit epoch", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("curves", "speed"))
    ap.add_argument("--data", required=True, help="full MNIST .npz")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--n", type=int, default=6000, help="speed: digits in the timed epoch")
    ap.add_argument("--spe", type=int, default=32, help="curves: steps_per_execution (no effect on the optimisation)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out")
    args = ap.parse_args()
    import keras

    names = args.recipes.split(",")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    res = {"what": args.what, "backend": keras.backend.backend(), "recipes": {n: RECIPES[n] for n in names},
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "keras": keras.__version__},
           "date": time.strftime("%Y-%m-%d"), "command": "python scripts/time_to_accuracy.py " + " ".join(sys.argv[1:]),
           "result": (curves if args.what == "curves" else speed)(args, names)}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
