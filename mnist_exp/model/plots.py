"""Figures for runs and sweeps. Each function returns a matplotlib Figure; tracking logs it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def log_x_axis(ax) -> None:
    """A logarithmic x axis labelled only at 1, 2 and 5 times each power of ten, compactly ("2e-04"): matplotlib's
    default labels the minor ticks of a range within one decade, and they overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def learning_curves(history: dict[str, list[float]], first_epoch: int = 1):
    """Loss and accuracy per epoch, train against validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        epochs = np.arange(first_epoch, first_epoch + len(history.get(metric, [])))
        ax.plot(epochs, history.get(metric, []), "o-", label=f"train {metric}")
        if history.get(f"val_{metric}"):
            ax.plot(epochs, history[f"val_{metric}"], "s-", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def prediction_grid(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n: int = 9):
    """The seed's 3x3 grid of test digits titled with predicted and true labels."""
    n = min(n, len(images))
    labels = [f"pred {y_pred[i]} / true {y_true[i]}" for i in range(n)]
    colors = ["black" if y_true[i] == y_pred[i] else "red" for i in range(n)]
    side = max(1, int(np.ceil(np.sqrt(n))))
    return _mosaic(images[:n], labels, colors, side, (2.2 * side, 2.4 * side), fontsize=10)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray):
    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix (test accuracy {acc:.4f})")
    threshold = cm.max() / 2 if cm.max() else 1
    for i in range(10):
        for j in range(10):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def mistakes(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, n: int = 25):
    """The most confident misclassified test digits."""
    all_wrong = np.flatnonzero(y_true != y_pred)
    wrong = all_wrong[np.argsort(-confidence[all_wrong])][:n]
    side = max(1, int(np.ceil(np.sqrt(max(len(wrong), 1)))))
    labels = [f"pred {y_pred[i]} ({confidence[i]:.2f}) true {y_true[i]}" for i in wrong]
    fig = _mosaic(images[wrong], labels, ["red"] * len(wrong), side, (2 * side, 2.2 * side), fontsize=8)
    fig.suptitle(f"{len(all_wrong)} misclassified test digits (most confident first)")
    if not len(wrong):
        fig.axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=fig.axes[0].transAxes)
    return fig


def _mosaic(images, labels, colors, side: int, figsize, fontsize: int):
    """Digits tiled into one image on one axes, each with its label above it.

    One axes instead of one per digit: a figure of many panels spends most of its drawing time in layout.
    """
    h, w = (images.shape[1:3] if len(images) else (28, 28))
    cell_h, cell_w = h + 12, w + 4  # room for the label above each digit
    canvas = np.full((side * cell_h, side * cell_w), np.nan)
    fig, ax = plt.subplots(figsize=figsize)
    for k, (img, label, color) in enumerate(zip(images, labels, colors)):
        r, c = divmod(k, side)
        y0, x0 = r * cell_h + 11, c * cell_w + 2
        canvas[y0:y0 + h, x0:x0 + w] = np.asarray(img, dtype=float).reshape(h, w)
        ax.text(x0 + w / 2, y0 - 1.5, label, ha="center", va="bottom", fontsize=fontsize, color=color)
    cmap = plt.get_cmap("gray").copy()
    cmap.set_bad("white")
    ax.imshow(np.ma.masked_invalid(canvas), cmap=cmap, interpolation="nearest")
    ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93)
    return fig


def objective_per_trial(trial_ids: list[str], values: list[float], objective: str, maximize: bool):
    """Objective of each trial in order, with the best-so-far line."""
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(1, len(values) + 1)
    vals = np.asarray(values, dtype=float)
    ax.plot(x, vals, "o", label=objective)
    best = np.fmax.accumulate(vals) if maximize else np.fmin.accumulate(vals)
    ax.step(x, best, where="post", label="best so far")
    ax.set_xticks(x)
    ax.set_xticklabels(trial_ids, rotation=90 if len(x) > 15 else 0)
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def objective_vs_hyperparameters(table, hp_names: list[str], objective_col: str, objective: str):
    """One panel per hyperparameter: its value against the objective (categorical axes for strings)."""
    n = max(len(hp_names), 1)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), hp_names):
        x = table[name]
        y = table[objective_col].astype(float)
        numeric = np.issubdtype(np.asarray(x).dtype, np.number)
        if numeric:
            ax.scatter(x.astype(float), y)
            if name == "learning_rate":
                log_x_axis(ax)
        else:
            cats = sorted(set(map(str, x)))
            ax.scatter([cats.index(str(v)) for v in x], y)
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30)
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def importance(found: dict[str, float]):
    """Hyperparameter importance (normalised), the largest at the top."""
    names, values = list(found)[::-1], list(found.values())[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names, values)
    ax.set_xlabel("importance for the objective (fANOVA, sums to 1)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
