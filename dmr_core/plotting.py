"""Pictures: image grids, score histograms, ROC curves, bar charts (matplotlib, written to files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data.artifacts import atomic_output  # noqa: E402


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def tile(images: np.ndarray, ncols: int) -> np.ndarray:
    """Tile uint8 N×H×W×3 images into one image with a 1-pixel white border."""
    n, h, w, c = images.shape
    nrows = int(np.ceil(n / ncols))
    canvas = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img
    return canvas


def save_image_grid(rows: list[tuple[str, np.ndarray]], path: str | Path, ncols: int, title: str = "") -> None:
    """One labelled block of tiled images per (label, images) row."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncols * 0.55, 0.62 * sum(
        int(np.ceil(len(r[1]) / ncols)) for r in rows) + 0.5 * len(rows) + 0.4), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        ax.imshow(tile(images, ncols), interpolation="nearest")
        ax.set_title(label, fontsize=9, loc="left")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _rows(features: np.ndarray, most: int) -> np.ndarray:
    """Up to ``most`` evenly spaced rows, flattened to float32 (N × D): a picture needs no more."""
    pick = np.linspace(0, len(features) - 1, min(most, len(features))).astype(int)
    return np.asarray(features[pick], dtype=np.float32).reshape(len(pick), -1)


def _common_edges(values: list[np.ndarray], bins: int) -> np.ndarray:
    lo, hi = min(v.min() for v in values), max(v.max() for v in values)
    return np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)


def save_feature_histograms(id_features: np.ndarray, synth_features: np.ndarray, path: str | Path, title: str,
                            bins: int = 60, most: int = 2000) -> None:
    """Synthesised vs ID features, for a set synthesised in feature space (no images to show): histograms of the
    per-sample norm ‖f‖ and of the coordinate values (log counts; the share below zero in the legend), each from
    up to ``most`` evenly spaced samples of each set."""
    sets = {"ID training": _rows(id_features, most), "synthesised OOD": _rows(synth_features, most)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    norms = {name: np.linalg.norm(f, axis=1) for name, f in sets.items()}
    edges = _common_edges(list(norms.values()), bins)
    for name, v in norms.items():
        left.hist(v, edges, alpha=0.55, density=True, label=name)
    left.set_xlabel("norm ‖f‖ per sample")
    left.set_ylabel("density")
    edges = _common_edges([f.ravel() for f in sets.values()], bins)
    for name, f in sets.items():
        right.hist(f.ravel(), edges, alpha=0.55, label=f"{name} ({(f < 0).mean():.0%} below 0)")
    right.set_xlabel("coordinate values")
    right.set_ylabel("count")
    right.set_yscale("log")
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def save_score_histograms(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray], path: str | Path,
                          bins: int, title: str) -> None:
    """ID vs each OOD set score histograms, one panel per set."""
    names = list(ood_scores)
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    all_scores = np.concatenate([id_scores] + [ood_scores[n] for n in names])
    lo, hi = np.percentile(all_scores, [0.5, 99.5])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for ax, name in zip(axes.flat, names):
        ax.hist(np.clip(id_scores, lo, hi), edges, alpha=0.55, density=True, label="CIFAR-10 test (ID)")
        ax.hist(np.clip(ood_scores[name], lo, hi), edges, alpha=0.55, density=True, label=name)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def save_roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str) -> None:
    """ROC curves, one per OOD set; each value is (fpr, tpr, auroc)."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, (fpr, tpr, auroc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.1f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (ID called OOD)")
    ax.set_ylabel("true positive rate (OOD detected)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def save_bar_chart(values: dict[str, float], path: str | Path, title: str, xlabel: str,
                   highlight: tuple[str, ...] = ()) -> None:
    """Horizontal bars, largest on top; names in ``highlight`` drawn in another colour."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(items) + 1.0))
    colours = ["tab:orange" if name in highlight else "tab:blue" for name, _ in items]
    ax.barh([n for n, _ in items], [v for _, v in items], color=colours)
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    lo = min(v for _, v in items)
    ax.set_xlim(max(0, lo - 10), 100)
    _save(fig, path)


def lambda_band_rows(images: Any, lambdas: np.ndarray, per_row: int = 16) -> list[tuple[str, np.ndarray]]:
    """Rows for ``save_image_grid``: evenly spaced samples from the lowest, middle and highest third of λ
    (``images``: NumPy or zarr, of which only the samples shown are read)."""
    order = np.argsort(lambdas, kind="stable")
    rows = []
    for band, chunk in zip(("lowest", "middle", "highest"), np.array_split(order, 3)):
        pick = chunk[np.linspace(0, len(chunk) - 1, min(per_row, len(chunk))).astype(int)]
        rows.append((f"{band} λ ({lambdas[pick].min():.2f}–{lambdas[pick].max():.2f})", images[pick]))
    return rows
