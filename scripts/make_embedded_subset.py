"""Rebuild mnist_exp/resources/mnist_subset.npz: 10,000 train + 2,000 test real MNIST digits.

Stratified by class with a fixed seed, so the output is byte-for-byte reproducible:

    python scripts/make_embedded_subset.py ../shared/data/mnist.npz
"""

import argparse
import io
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from mnist_exp.model.data import EMBEDDED_PATH, stratified_indices

SEED, N_TRAIN, N_TEST = 20261125, 10_000, 2_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="full MNIST .npz in Keras's layout")
    ap.add_argument("--out", default=str(EMBEDDED_PATH))
    args = ap.parse_args()
    with np.load(args.source) as z:
        x_tr, y_tr, x_te, y_te = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    rng = np.random.default_rng(SEED)
    tr = np.sort(stratified_indices(y_tr, N_TRAIN, rng))
    te = np.sort(stratified_indices(y_te, N_TEST, rng))
    arrays = {"x_train": x_tr[tr], "y_train": y_tr[tr], "x_test": x_te[te], "y_test": y_te[te]}
    # Write the zip by hand with a fixed timestamp: np.savez_compressed stamps the current time.
    with zipfile.ZipFile(args.out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    digest = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    counts = np.bincount(arrays["y_train"], minlength=10).tolist()
    print(f"wrote {args.out}: {N_TRAIN} train / {N_TEST} test, train class counts {counts}, sha256 {digest}")


if __name__ == "__main__":
    main()
