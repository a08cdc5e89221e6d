"""``mnist-exp predict``: bring any digit image to MNIST form and classify it with a registered model.

MNIST form, as MNIST was made: grey-scale, light digit on dark ground, the digit's
bounding box scaled to fit 20x20 (aspect kept), then placed in 28x28 with its centre
of mass at the centre.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from .errors import DataError


def to_mnist(img: np.ndarray) -> np.ndarray:
    """Any-size grey-scale image (uint8 or float) -> float32 (28, 28) in [0, 1], MNIST-style."""
    from PIL import Image

    a = img.astype(np.float32)
    if a.max() > 1.0:
        a /= 255.0
    if np.median(_border(a)) > 0.5:  # dark digit on light ground: invert
        a = 1.0 - a
    a = np.clip(a - np.median(_border(a)), 0.0, 1.0)  # ground to 0
    if a.max() <= 0.05:
        return np.zeros((28, 28), np.float32)
    a /= a.max()
    rows, cols = np.flatnonzero(a.max(axis=1) > 0.1), np.flatnonzero(a.max(axis=0) > 0.1)
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float32) / 255
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    ys, xs = np.indices(canvas.shape)
    total = canvas.sum()
    # MNIST puts the centre of mass at pixel (14, 14), as measured on its digits.
    dy, dx = round(14.0 - (ys * canvas).sum() / total), round(14.0 - (xs * canvas).sum() / total)
    return _shift(canvas, dy, dx)


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def load_images(path: str) -> list[tuple[str, np.ndarray]]:
    """(label, 28x28 float image) pairs from a PNG/JPEG file or an .npz of images."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.suffix.lower() == ".npz":
        return _load_npz(p)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            grey = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({(str(e).splitlines() or ['?'])[0]})") from None
    return [(str(path), to_mnist(grey))]


def _load_npz(p: Path) -> list[tuple[str, np.ndarray]]:
    try:
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("x", "images", "x_test") if k in z.files), z.files[0] if z.files else None)
            if key is None:
                raise DataError(f"{p}: empty .npz")
            x = z[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{p}: not a readable .npz ({(str(e).splitlines() or ['?'])[0]})") from None
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise DataError(f"{p}: {key}: shape {x.shape}, expected (n, height, width) images")
    return [(f"{p}[{i}]", to_mnist(img)) for i, img in enumerate(x)]


def main(uri: str, args) -> int:
    import mlflow

    images = [pair for path in args.images for pair in load_images(path)]  # all read before the model loads
    mlflow.set_tracking_uri(uri)
    x = np.stack([img for _, img in images])[..., None].astype(np.float32)
    with contextlib.redirect_stdout(sys.stderr):  # Keras's progress bar would break --json output
        try:
            model = mlflow.pyfunc.load_model(args.model)
        except Exception as e:
            raise DataError(f"{args.model}: cannot load the model ({(str(e).splitlines() or ['?'])[0]})") from None
        probs = np.asarray(model.predict(x))
    for (name, _), p in zip(images, probs):
        label = int(p.argmax())
        if args.json:
            print(json.dumps({"file": name, "label": label, "probability": round(float(p[label]), 6),
                              "probabilities": [round(float(v), 6) for v in p]}))
        else:
            print(f"{name}: {label} ({p[label]:.3f})")
    sys.stdout.flush()
    return 0
