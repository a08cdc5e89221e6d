"""Mixed precision on a GPU: mnist-exp's own model (model.build_model), float32 against mixed_float16
and mixed_bfloat16, at batch 16 and 128, on the embedded digits. Prints a table and writes JSON.

    KERAS_BACKEND=jax python scripts/gpu_check.py --out gpu.json     # where TensorFlow has no GPU build
    python scripts/gpu_check.py --out gpu.json                       # TensorFlow with CUDA

Keras 3 runs the same model code on TensorFlow or JAX; the lent GPU machines carry JAX, not a
CUDA build of TensorFlow, so the measured run used JAX (see docs/gpu.md).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--spe", type=int, default=32, help="steps_per_execution")
    args = ap.parse_args()
    import keras
    import numpy as np

    from mnist_exp.model.data import EMBEDDED_PATH, one_hot, to_model_inputs
    from mnist_exp.model.cnn import build_model

    with np.load(EMBEDDED_PATH) as z:
        x, y = to_model_inputs(z["x_train"]), one_hot(z["y_train"])
        xt, yt = to_model_inputs(z["x_test"]), one_hot(z["y_test"])
    devices = _devices()
    res = {"backend": keras.backend.backend(), "keras": keras.__version__, "devices": devices,
           "python": platform.python_version(), "n_train": len(x), "epochs": args.epochs, "spe": args.spe, "rows": []}
    print(f"backend {res['backend']}, devices {devices}, {len(x)} digits x {args.epochs} epochs, spe {args.spe}")
    for batch in (16, 128):
        for policy in (None, "mixed_float16", "mixed_bfloat16"):
            import keras_tuner as kt

            hp = kt.HyperParameters()
            hp.Fixed("batch_size", batch)
            keras.utils.set_random_seed(0)
            model = build_model(hp, steps_per_execution=args.spe, mixed_precision=policy)
            model.fit(x[:2048], y[:2048], batch_size=batch, epochs=1, verbose=0)  # compile, untimed
            t0 = time.perf_counter()
            hist = model.fit(x, y, batch_size=batch, epochs=args.epochs, verbose=0)
            wall = time.perf_counter() - t0
            loss, acc = model.evaluate(xt, yt, batch_size=512, verbose=0)
            row = {"batch": batch, "policy": policy or "float32", "images_per_s": len(x) * args.epochs / wall,
                   "test_accuracy": float(acc), "final_train_loss": float(hist.history["loss"][-1])}
            res["rows"].append(row)
            print(f"batch {batch:>3}  {row['policy']:<15} {row['images_per_s']:>9.0f} images/s  "
                  f"test acc {row['test_accuracy']:.4f}  train loss {row['final_train_loss']:.4f}", flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


def _devices() -> list[str]:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
