"""Search power on one GPU: best.yaml's champion recipe and the seed trained on full MNIST (test accuracy
after every epoch, images/s, time to 99.5%), and best.yaml-sized trials several at a time on the GPU.

    KERAS_BACKEND=jax python scripts/gpu_power.py --data mnist.npz --out gpu_power.json   # no CUDA TensorFlow
    python scripts/gpu_power.py --data mnist.npz --out gpu_power.json                     # TensorFlow with CUDA

Parts, in order, each skipped when --budget-s would be overrun (JSON rewritten after every epoch):
  seed      the seed baseline exactly (build_model()), batch 16, 10 epochs on all 60,000 training digits
  champion  best.yaml run 1's chosen configuration (docs/results-overview.md, "Search power"), one-cycle over --epochs (27,
            the refit's length) on all 60,000 training digits
  share     N processes at once (--share 1,2,4), each running --trials best.yaml-sized one-epoch trials:
            a fresh model, fit on 54,000 digits with the 6,000-digit validation split, test on 10,000
  short     the champion's configuration with a 9-epoch one-cycle schedule
Same model code as the CLI (mnist_exp.model.build_model); Keras's own array input, not the CLI's tf.data
pipeline, so it runs on any Keras backend.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from time_to_accuracy import _hp, _load  # noqa: E402  (this folder is on sys.path: the script's own)

CHAMPION = {  # best.yaml's pinned values + trial 0039's searched ones (run 1, seed 42; printed to 3 figures)
    "conv_blocks": "deep", "filters_1": 32, "filters_2": 64, "filters_3": 128, "dense_units": 128,
    "batch_norm": True, "batch_size": 64, "lr_schedule": "one_cycle", "kernel_size": 3, "pooling": "flatten",
    "warmup_fraction": 0.0, "learning_rate": 0.0198, "dropout_1": 0.2, "dropout_2": 0.5, "activation": "swish",
    "optimizer": "adam", "weight_decay": 1e-5, "label_smoothing": 0.1, "rotation": 2.5, "translation": 0.05,
    "zoom": 0.05,
}
NO_AUG = {"rotation": 0.0, "translation": 0.0, "zoom": 0.0}
T0 = time.perf_counter()


def _left(args) -> float:
    return args.budget_s - (time.perf_counter() - T0)


def curve(args, name: str, overrides: dict, epochs: int, data, res: dict, save) -> None:
    """Train one model epoch by epoch, test after each; the first epoch's time includes compilation."""
    import keras

    from mnist_exp.model.cnn import build_model
    from mnist_exp.spec.levers import hp_value

    x, y, xt, yt = data
    keras.utils.set_random_seed(args.seed)
    hp = _hp(overrides)
    batch = hp_value(hp, "batch_size")
    model = build_model(hp, steps_per_execution=args.spe, steps=epochs * math.ceil(len(x) / batch))
    row = {"hp": overrides, "epochs_planned": epochs, "batch": batch, "n_train": len(x), "epochs": []}
    res["parts"][name] = row
    total = 0.0
    for e in range(epochs):
        if _left(args) < 20:
            row["cut_short"] = f"budget: stopped after {e} epochs"
            break
        t = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=e + 1, initial_epoch=e, verbose=0)
        fit_s = time.perf_counter() - t
        total += fit_s
        acc = float(model.evaluate(xt, yt, batch_size=1024, verbose=0)[1])
        row["epochs"].append({"epoch": e + 1, "fit_s": round(fit_s, 2), "train_s_total": round(total, 2),
                              "test_accuracy": acc})
        print(f"{name} epoch {e + 1}/{epochs}: {fit_s:6.1f} s  test {acc:.4f}  ({total:6.1f} s of training)",
              flush=True)
        save()
    steady = [ep["fit_s"] for ep in row["epochs"][1:]]
    if steady:
        row["images_per_s"] = round(len(x) / (sum(steady) / len(steady)))
    for thr in (0.991, 0.995, 0.996):
        hit = next((ep for ep in row["epochs"] if ep["test_accuracy"] >= thr), None)
        row[f"train_s_to_{thr}"] = hit and hit["train_s_total"]
    row["final_test_accuracy"] = row["epochs"][-1]["test_accuracy"] if row["epochs"] else None
    save()


def share_worker(args) -> None:
    """One of N processes: wait for the go file, then run --trials one-epoch trials; print one JSON line."""
    import keras

    from mnist_exp.model.cnn import build_model

    x, y, xt, yt = _load(args.data)
    if args.n:
        x, y = x[: args.n], y[: args.n]
    nv = len(x) // 10  # best.yaml's validation_split 0.1
    xv, yv, x, y = x[:nv], y[:nv], x[nv:], y[nv:]
    hp = _hp(CHAMPION)
    keras.utils.set_random_seed(args.seed)
    build_model(hp, steps_per_execution=args.spe, steps=10).fit(x[:512], y[:512], batch_size=64, verbose=0)  # warm
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.05)
    times = []
    for _ in range(args.trials):
        t = time.perf_counter()
        keras.utils.set_random_seed(args.seed)
        model = build_model(_hp(CHAMPION), steps_per_execution=args.spe, steps=math.ceil(len(x) / 64))
        model.fit(x, y, batch_size=64, epochs=1, validation_data=(xv, yv), verbose=0)
        acc = float(model.evaluate(xt, yt, batch_size=1024, verbose=0)[1])
        times.append(time.perf_counter() - t)
    print(json.dumps({"trial_s": times, "last_test_accuracy": acc, "end": time.time()}), flush=True)


def share(args, res: dict, save) -> None:
    row = res["parts"].setdefault("share", {"trials_per_process": args.trials, "n_train": (args.n or 60000) * 9 // 10,
                                            "runs": []})
    for n in [int(s) for s in args.share.split(",")]:
        if _left(args) < 30 + 15 * n * args.trials:
            row["cut_short"] = f"budget: not run for {n} processes"
            break
        tmp = Path(args.tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        go = tmp / f"go{n}"
        go.unlink(missing_ok=True)
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        procs = []
        for i in range(n):
            ready = tmp / f"ready{n}_{i}"
            ready.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--worker", "--data", args.data, "--trials", str(args.trials),
                   "--spe", str(args.spe), "--n", str(args.n), *(["--no-aug"] if args.no_aug else []),
                   "--seed", str(args.seed + i), "--ready", str(ready), "--go", str(go)]
            procs.append((ready, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)))
        while not all(r.exists() for r, _ in procs):
            if any(p.poll() is not None for _, p in procs):
                break
            time.sleep(0.1)
        t = time.time()
        go.touch()
        outs = [(p.communicate()[0].strip().splitlines() or [""])[-1] for _, p in procs]
        if any(p.returncode for _, p in procs):
            row["failed"] = f"{n} processes: a worker exited {[p.returncode for _, p in procs]}"
            save()
            break
        outs = [json.loads(o) for o in outs]
        wall = max(o["end"] for o in outs) - t
        trials = n * args.trials
        run = {"processes": n, "wall_s": round(wall, 2), "trials": trials,
               "trials_per_hour": round(trials / wall * 3600), "train_images_per_s": round(trials * row["n_train"] / wall),
               "trial_s": [round(s, 2) for o in outs for s in o["trial_s"]],
               "test_accuracy": [o["last_test_accuracy"] for o in outs]}
        row["runs"].append(run)
        print(f"share {n} process(es) x {args.trials} trials: {wall:6.1f} s, {run['trials_per_hour']} trials/h, "
              f"{run['train_images_per_s']} training images/s, trial s {run['trial_s']}", flush=True)
        save()


def _device() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "no nvidia-smi output"
    except (OSError, subprocess.SubprocessError):
        return "no GPU (nvidia-smi not found)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="full MNIST .npz")
    ap.add_argument("--parts", default="seed,champion,share,short")
    ap.add_argument("--epochs", type=int, default=27, help="champion: the one-cycle schedule's length")
    ap.add_argument("--seed-epochs", type=int, default=10)
    ap.add_argument("--share", default="1,2,4", help="processes at once")
    ap.add_argument("--trials", type=int, default=2, help="share: trials per process")
    ap.add_argument("--n", type=int, default=0, help="use only the first N training digits (smoke runs)")
    ap.add_argument("--spe", type=int, default=32, help="steps_per_execution (no effect on the optimisation)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip or cut parts that would run past this")
    ap.add_argument("--tmp", default="/tmp/gpu_power")
    ap.add_argument("--out", default="gpu_power.json")
    ap.add_argument("--no-aug", action="store_true",
                    help="champion without its augmentation (Keras's image layers are slow under JAX: docs/gpu.md)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.no_aug:
        CHAMPION.update(NO_AUG)
    if args.worker:
        return share_worker(args)
    import keras

    res = {"backend": keras.backend.backend(), "keras": keras.__version__, "device": _device(),
           "python": platform.python_version(), "spe": args.spe,
           "champion_augmentation": not args.no_aug, "parts": {}}
    if res["backend"] == "jax":
        import jax

        res["jax"], res["jax_devices"] = jax.__version__, [str(d) for d in jax.devices()]
    print(json.dumps({k: v for k, v in res.items() if k != "parts"}), flush=True)

    def save():
        Path(args.out).write_text(json.dumps(res, indent=1))

    data = _load(args.data)
    if args.n:
        data = (data[0][: args.n], data[1][: args.n], data[2], data[3])
    for part in args.parts.split(","):
        if part == "seed":
            curve(args, "seed", {}, args.seed_epochs, data, res, save)
        elif part == "champion":
            curve(args, "champion", CHAMPION, args.epochs, data, res, save)
        elif part == "short":
            curve(args, "short", CHAMPION, 9, data, res, save)
        elif part == "share":
            share(args, res, save)
    res["wall_s"] = round(time.perf_counter() - T0, 1)
    save()


if __name__ == "__main__":
    main()
