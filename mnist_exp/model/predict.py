"""``mnist-exp predict``: bring any digit image to MNIST form and classify it with a registered model.

MNIST form, as MNIST was made: grey-scale, light digit on dark ground, the digit's
bounding box scaled to fit 20x20 (aspect kept), then placed in 28x28 with its centre
of mass at the centre. A transparent background is composited first (onto the shade that
contrasts with the drawing), so a dark digit on a transparent PNG reads as that digit.

An image with no digit (fully transparent, one uniform colour, or nothing standing out from
its background) is not given to the model: its line says ``no digit found (<reason>)`` and its
JSON object has ``"digit_found": false``, a ``"reason"`` and null label/probabilities.

Exit codes: 0 every image classified; 1 some image(s) had no digit (the others are still
printed); 2 a file is missing, unreadable or larger than MAX_PIXELS (nothing printed).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from mnist_exp.runtime.errors import DataError
from mnist_exp.runtime.terminal import import_tensorflow

# Larger images are refused before they are decoded (a 20000x20000 PNG is 400 million pixels
# and Pillow's "decompression bomb" traceback); a photo of a digit needs far fewer than 8000x8000.
MAX_PIXELS = 64_000_000
FAINT = 0.05  # a "digit" standing out from its ground by less than 5% of full scale is none
BLANK, UNIFORM, TRANSPARENT = "nothing stands out from the background", "blank image", "fully transparent"


def to_mnist(img: np.ndarray) -> np.ndarray:
    """Any-size grey-scale image (uint8 or float) -> float32 (28, 28) in [0, 1], MNIST-style
    (all zeros when there is no digit: see ``mnist_form``)."""
    return mnist_form(img)[0]


def mnist_form(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(28x28 MNIST-form image, None), or (zeros, why there is no digit)."""
    from PIL import Image

    a = img.astype(np.float32)
    if a.size == 0:
        return np.zeros((28, 28), np.float32), UNIFORM
    if a.max() > 1.0:
        a /= 255.0
    if float(a.max() - a.min()) <= FAINT:  # one colour, whatever it is (JPEG noise included)
        return np.zeros((28, 28), np.float32), UNIFORM
    if np.median(_border(a)) > 0.5:  # dark digit on light ground: invert
        a = 1.0 - a
    a = np.clip(a - np.median(_border(a)), 0.0, 1.0)  # ground to 0
    if a.max() <= FAINT:
        return np.zeros((28, 28), np.float32), BLANK
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
    return _shift(canvas, dy, dx), None


def composite(rgba: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """(h, w, 4) uint8 RGBA -> grey-scale float image in [0, 1] with the transparency composited onto
    the shade that contrasts with what is drawn (white under a dark digit, black under a light one);
    (None, TRANSPARENT) when nothing is drawn."""
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    if alpha.max() == 0:
        return None, TRANSPARENT
    r, g, b = (rgba[..., i].astype(np.float32) / 255.0 for i in range(3))
    grey = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601, as Pillow's convert("L")
    drawn = float((alpha * grey).sum() / alpha.sum())
    ground = 1.0 if drawn < 0.5 else 0.0
    return alpha * grey + (1.0 - alpha) * ground, None


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def load_all(paths: list[str]) -> list[tuple[str, np.ndarray, str | None]]:
    """Every image of every file, read and checked (DataError on the first bad file)."""
    return [item for path in paths for item in load_images(path)]


def load_images(path: str) -> list[tuple[str, np.ndarray, str | None]]:
    """(label, 28x28 float image, why there is no digit or None) from a PNG/JPEG file or an .npz of images."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.suffix.lower() == ".npz":
        return _load_npz(p)
    from PIL import Image, UnidentifiedImageError

    bomb_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below, with the file's name, instead of Pillow's traceback
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{path}: image of {w}x{h} pixels is too large (limit {MAX_PIXELS:,} pixels); "
                                "crop or scale it down")
            im.load()
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                grey, reason = composite(np.asarray(im.convert("RGBA")))
            else:
                grey, reason = np.asarray(im.convert("L")), None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({(str(e).splitlines() or ['?'])[0]})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    if reason:
        return [(str(path), np.zeros((28, 28), np.float32), reason)]
    return [(str(path), *mnist_form(grey))]


def _load_npz(p: Path) -> list[tuple[str, np.ndarray, str | None]]:
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
    if x.shape[1] * x.shape[2] > MAX_PIXELS:
        raise DataError(f"{p}: {key}: images of {x.shape[2]}x{x.shape[1]} pixels are too large "
                        f"(limit {MAX_PIXELS:,} pixels)")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool) or (
            np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all()):
        raise DataError(f"{p}: {key}: expected finite numeric pixels (dtype {x.dtype})")
    return [(f"{p}[{i}]", *mnist_form(img)) for i, img in enumerate(x)]


def classify(uri: str, model_uri: str, images: list[tuple[str, np.ndarray, str | None]]) -> list[dict]:
    """One answer per image (``load_all``'s order): file, digit_found, reason, label, probability,
    probabilities. Images without a digit are not classified."""
    digits = [img for _, img, reason in images if reason is None]
    probs = iter(_classify(uri, model_uri, digits) if digits else ())
    out = []
    for name, _, reason in images:
        if reason:
            out.append({"file": name, "digit_found": False, "reason": reason, "label": None, "probability": None,
                        "probabilities": None})
            continue
        p = next(probs)
        label = int(p.argmax())
        out.append({"file": name, "digit_found": True, "label": label, "probability": round(float(p[label]), 6),
                    "probabilities": [round(float(v), 6) for v in p]})
    return out


def main(uri: str, args, images=None) -> int:
    """Classify; exit 0, or 1 when some image had no digit (module docstring)."""
    if images is None:
        images = load_all(args.images)  # all read before the model loads
    answers = classify(uri, args.model, images)
    for answer in answers:
        if args.json:
            print(json.dumps(answer))
        elif answer["digit_found"]:
            print(f"{answer['file']}: {answer['label']} ({answer['probability']:.3f})")
        else:
            print(f"{answer['file']}: no digit found ({answer['reason']})")
    sys.stdout.flush()
    return 0 if all(a["digit_found"] for a in answers) else 1


def _classify(uri: str, model_uri: str, digits: list[np.ndarray]) -> np.ndarray:
    import_tensorflow()  # without its C++ start-up notices
    import keras
    import mlflow

    mlflow.set_tracking_uri(uri)
    x = np.stack(digits)[..., None].astype(np.float32)
    with contextlib.redirect_stdout(sys.stderr):  # anything printed while loading would break --json output
        try:
            model = mlflow.pyfunc.load_model(model_uri)
        except Exception as e:
            raise DataError(f"{model_uri}: cannot load the model ({(str(e).splitlines() or ['?'])[0]})") from None
        # MLflow's Keras flavour calls predict() with Keras's default bar ("8/1": the model keeps its
        # steps_per_execution); Keras's own switch sends it to absl logging at INFO, not shown.
        interactive = keras.utils.is_interactive_logging_enabled()
        keras.utils.disable_interactive_logging()
        try:
            return np.asarray(model.predict(x))
        finally:
            if interactive:
                keras.utils.enable_interactive_logging()
