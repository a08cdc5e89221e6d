"""Data sources behind one interface: ``load_data(DataConfig, seed) -> Dataset``.

Sources: ``embedded`` (a stratified real-MNIST subset shipped in the package),
``mnist`` (Keras's loader and cache), or a path to an ``.npz`` in Keras's layout
or to a folder of IDX files. Every fault is a one-line ``DataError``.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_exp.runtime.errors import DataError
from mnist_exp.spec.experiment import MIN_SPLIT, DataConfig, training_too_small, validation_count

EMBEDDED_PATH = Path(__file__).parents[1] / "resources" / "mnist_subset.npz"
KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
TEST_SUBSET_SEED = 0
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Dataset:
    """Images are uint8 (n, 28, 28); labels uint8 (n,). Validation is carved from train."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # "embedded", "mnist" or the resolved path
    source_uri: str  # where MLflow's dataset source points
    fingerprint: str  # sha256 over every array used
    test_fingerprint: str  # sha256 over the test arrays alone: promotion compares on it

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def load_data(cfg: DataConfig, seed: int = 42) -> Dataset:
    """Load, validate, subset and split. Example: ``load_data(DataConfig(train_size=500))``."""
    arrays, where, uri = _load_source(cfg.source)
    _validate(arrays, where)
    rng = np.random.default_rng(seed)
    x_tr, y_tr = arrays["x_train"], arrays["y_train"]
    x_te, y_te = arrays["x_test"], arrays["y_test"]
    if cfg.train_size is not None:
        x_tr, y_tr = _take(x_tr, y_tr, stratified_indices(y_tr, cfg.train_size, rng, where, "train_size"))
    if cfg.test_size is not None:
        # A fixed seed, not the experiment's: sweeps with other seeds are then tested on the same digits,
        # so their test accuracies (and promotion) compare like with like.
        test_rng = np.random.default_rng(TEST_SUBSET_SEED)
        x_te, y_te = _take(x_te, y_te, stratified_indices(y_te, cfg.test_size, test_rng, where, "test_size"))
    x_va, y_va = x_tr[:0], y_tr[:0]
    n_val = validation_count(len(y_tr), cfg.validation_split)
    if len(y_tr) - n_val < MIN_SPLIT:  # an empty or near-empty training set fails deep inside TensorFlow
        key = "data.train_size" if cfg.train_size is not None else "x_train"
        raise DataError(f"{where}: {key}: {training_too_small(len(y_tr), cfg.validation_split)}")
    if n_val:
        val_idx = stratified_indices(y_tr, n_val, rng, where, "validation_split")
        keep = np.ones(len(y_tr), bool)
        keep[val_idx] = False
        x_va, y_va = x_tr[val_idx], y_tr[val_idx]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    return Dataset(
        x_tr, y_tr, x_va, y_va, x_te, y_te,
        source=cfg.source if cfg.source in ("embedded", "mnist") else where,
        source_uri=uri,
        fingerprint=fingerprint(x_tr, y_tr, x_va, y_va, x_te, y_te),
        test_fingerprint=fingerprint(x_te, y_te),
    )


def fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator, where="", key="size") -> np.ndarray:
    """n indices whose class mix follows y's (largest-remainder allocation), in random order."""
    if n > len(y):
        raise DataError(f"{where}: {key}: asks for {n} digits but the source has {len(y)}")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / len(y)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: n - take.sum()]:
        take[i] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return rng.permutation(np.concatenate(picked))


def _take(x, y, idx):
    return x[idx], y[idx]


def _load_source(source: str) -> tuple[dict, str, str]:
    if source == "embedded":
        return _read_npz(EMBEDDED_PATH), str(EMBEDDED_PATH), str(EMBEDDED_PATH)
    if source == "mnist":
        return _load_keras_mnist(), "keras mnist", KERAS_MNIST_URL
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or folder")
    if path.is_dir():
        return _read_idx_folder(path), str(path), str(path.resolve())
    return _read_npz(path), str(path), str(path.resolve())


def _load_keras_mnist() -> dict:
    import keras

    try:
        (x_tr, y_tr), (x_te, y_te) = keras.datasets.mnist.load_data()
    except Exception as e:  # the downloader raises several types when offline
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"mnist: Keras could not load MNIST ({msg}); offline, point at a local copy with "
            "--data PATH (an mnist.npz or a folder of IDX files)"
        ) from None
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)} (an .npz needs {', '.join(NPZ_KEYS)})")
            return {k: z[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({_first_line(e)})") from None


def _read_idx_folder(folder: Path) -> dict:
    out = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")
        out[key] = read_idx(found, images=key.startswith("x_"))
    return out


def read_idx(path: Path, images: bool) -> np.ndarray:
    """Read one IDX file (optionally gzipped): images (n, rows, cols) or labels (n,)."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({_first_line(e)})") from None
    want_dims = 3 if images else 1
    if len(raw) < 4 + 4 * want_dims:
        raise DataError(f"{path}: truncated IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if ndim != want_dims:
        kind = "images" if images else "labels"
        raise DataError(f"{path}: IDX {kind} need {want_dims} dimension(s), the file has {ndim}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(dims))
    if len(body) != expected:
        raise DataError(f"{path}: truncated or padded IDX data ({len(body)} bytes, header says {expected})")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _validate(a: dict, where: str) -> None:
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{where}: x_{split}: shape {x.shape}, expected (n, 28, 28)")
        if x.dtype != np.uint8:
            raise DataError(f"{where}: x_{split}: dtype {x.dtype}, expected uint8 pixels 0-255")
        if y.ndim != 1:
            raise DataError(f"{where}: y_{split}: shape {y.shape}, expected (n,)")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{split}: dtype {y.dtype}, expected integer labels")
        if len(x) != len(y):
            raise DataError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"{where}: {split} split is empty")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{where}: y_{split}: labels outside 0-9 (found {y.min()}..{y.max()})")
    for k in ("y_train", "y_test"):
        a[k] = a[k].astype(np.uint8)


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def to_model_inputs(x: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 28, 28, 1) scaled to [0, 1], as the seed does."""
    return (x.astype("float32") / 255.0)[..., None]


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype="float32")[y]
