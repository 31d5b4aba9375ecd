"""Synthesising OOD training images from ID data alone (paper §3, eqs. 4, 6, 7).

With the encoder E, generator G, and class means μ_y = mean of E(x) over the ID training images of
class y (``class_means``), the marginal representation of an image is w^mar = E(x) − μ_y. Three
methods mix latents of k images drawn from k *distinct* classes:

- ``mlm``     (eq. 4): x = G((1/k) Σ_i w_i)
- ``dmr``     (eq. 6): x = G(λ · (E(x) − μ_y))                      (k = 1)
- ``dmr_mlm`` (eq. 7): x = G(λ · (1/k) Σ_i (w_i − μ_{y_i}))

λ, the emphasis factor, is drawn per sample: U(λ_min, λ_max) as in the paper (1–3), log-uniform on the
same range, or from {λ_min, λ_max} with p = ½ each as in the authors' notebooks. MLM has no λ (stored as 1).

A blurry generator G lets the rejection head separate "sharp = ID" from "smooth = OOD" (see the design
notes). The residual r = x − G(E(x)) holds the fine detail G loses; (w, r) is then a lossless two-level
code of x. Two ways to give a synthesised sample fine detail (``detail`` in the stage):

- ``residual``:     x = G(w_mix) + Σ_i r_i / √k  (``mix_detail``; keeps the energy of one residual)
- ``residual_dmr``: x = G(w_mix) + r_mix, where r_mix is the same equation (4 / 6 / 7) as w_mix, applied
  to the residuals with their own class means and the same λ (``mix_latents`` on r).
Everything here is pure array math; the stage decodes the mixed latents with G.
"""

from __future__ import annotations

import numpy as np

METHODS = ("mlm", "dmr", "dmr_mlm")


def class_means(latents: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """μ_y = (1/|{i: y_i = y}|) Σ_{i: y_i = y} w_i for each class y; returns (means, counts).

    Sums in float64 so the result does not depend on the order of the images.
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); found {labels.min()}..{labels.max()}")
    flat = latents.reshape(len(latents), -1).astype(np.float64)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no latents; a class mean needs at least one")
    sums = np.zeros((num_classes, flat.shape[1]))
    np.add.at(sums, labels, flat)
    means = (sums / counts[:, None]).astype(np.float32)
    return means.reshape((num_classes,) + latents.shape[1:]), counts


def sample_sources(labels: np.ndarray, k: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (num_samples × k) of source images; the k images of one sample come from k distinct classes."""
    labels = np.asarray(labels).astype(np.int64)
    num_classes = int(labels.max()) + 1
    present = np.bincount(labels, minlength=num_classes)
    classes_available = np.flatnonzero(present)
    if k < 1 or k > len(classes_available):
        raise ValueError(f"k = {k}: need 1 <= k <= {len(classes_available)} (classes with images)")
    # k distinct classes per sample: the first k of a random permutation of the available classes
    ranks = rng.random((num_samples, len(classes_available))).argsort(axis=1)[:, :k]
    classes = classes_available[ranks]
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(present)[:-1]])
    offsets = (rng.random((num_samples, k)) * present[classes]).astype(np.int64)
    return order[starts[classes] + offsets]


def sample_lambdas(num_samples: int, dist: str, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample emphasis factors λ: ``uniform`` U(low, high), ``loguniform`` (log λ uniform: as many samples
    in [1, 2] as in [2, 4]) or ``choice`` {low, high} with p = ½."""
    if low <= 0 or low > high:
        raise ValueError(f"need 0 < lambda_min <= lambda_max; got {low}, {high}")
    if dist == "uniform":
        return rng.uniform(low, high, size=num_samples).astype(np.float32)
    if dist == "choice":
        return np.where(rng.random(num_samples) < 0.5, low, high).astype(np.float32)
    if dist == "loguniform":
        return np.exp(rng.uniform(np.log(low), np.log(high), size=num_samples)).astype(np.float32)
    raise ValueError(f"unknown lambda distribution {dist!r}; choose uniform, loguniform or choice")


def mix_latents(
    source_latents: np.ndarray, source_means: np.ndarray, lambdas: np.ndarray, method: str,
    marginal_norm: float | None = None,
) -> np.ndarray:
    """The latent to decode for each sample.

    ``source_latents``: w_i of shape (n, k, *latent_shape); ``source_means``: μ_{y_i}, same shape;
    ``lambdas``: (n,). Returns (n, *latent_shape): eq. 4 (``mlm``), eq. 6 (``dmr``) or eq. 7 (``dmr_mlm``).
    With ``marginal_norm`` = r, each marginal w_i − μ_{y_i} is rescaled to norm r before mixing (latent
    normalisation: every source then weighs the same in the mix, and λ alone sets the distance from the means).
    """
    if method not in METHODS:
        raise ValueError(f"unknown synthesis method {method!r}; choose from {METHODS}")
    if source_latents.shape != source_means.shape:
        raise ValueError(f"latents {source_latents.shape} and means {source_means.shape} differ in shape")
    scale = np.asarray(lambdas, dtype=np.float32).reshape((-1,) + (1,) * (source_latents.ndim - 2))
    if method == "mlm":
        return source_latents.mean(axis=1)
    if method == "dmr" and source_latents.shape[1] != 1:
        raise ValueError("method 'dmr' (eq. 6) mixes a single latent: k must be 1")
    marginal = source_latents - source_means
    if marginal_norm is not None:
        norms = np.linalg.norm(marginal.reshape(marginal.shape[:2] + (-1,)), axis=2)
        marginal = marginal * (marginal_norm / np.maximum(norms, 1e-12)).reshape(norms.shape + (1,) * (marginal.ndim - 2))
    return scale * marginal.mean(axis=1)


def mean_marginal_norm(latents: np.ndarray, labels: np.ndarray, means: np.ndarray) -> float:
    """r̄ = mean over the ID images of ‖E(x) − μ_y‖, the typical size of a marginal representation."""
    marginal = latents - means[np.asarray(labels).astype(np.int64)]
    return float(np.linalg.norm(marginal.reshape(len(marginal), -1).astype(np.float64), axis=1).mean())


def synthesize_latents(
    latents: np.ndarray, labels: np.ndarray, means: np.ndarray, *, method: str, k: int, num_samples: int,
    lambda_dist: str, lambda_min: float, lambda_max: float, seed: int, normalise: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw sources and λ with ``seed`` and mix; returns (mixed latents, source indices, λ).

    ``normalise``: rescale every marginal to the mean marginal norm r̄ before mixing (``mix_latents``)."""
    rng = np.random.default_rng(seed)
    sources = sample_sources(labels, k, num_samples, rng)
    lambdas = (np.ones(num_samples, np.float32) if method == "mlm"
               else sample_lambdas(num_samples, lambda_dist, lambda_min, lambda_max, rng))
    source_labels = np.asarray(labels).astype(np.int64)[sources]
    norm = mean_marginal_norm(latents, labels, means) if normalise and method != "mlm" else None
    mixed = mix_latents(latents[sources], means[source_labels], lambdas, method, norm)
    return mixed.astype(np.float32), sources, lambdas


def reconstruction_residuals(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """r = x − G(E(x)) per pixel, as int16 in [−255, 255] (uint8 N×H×W×C in)."""
    if images.shape != reconstructions.shape:
        raise ValueError(f"images {images.shape} and reconstructions {reconstructions.shape} differ in shape")
    return images.astype(np.int16) - reconstructions.astype(np.int16)


def mix_detail(source_residuals: np.ndarray) -> np.ndarray:
    """Σ_i r_i / √k over the k sources of each sample: (n, k, H, W, C) int16 → (n, H, W, C) float32."""
    k = source_residuals.shape[1]
    return source_residuals.astype(np.float32).sum(axis=1) / np.float32(np.sqrt(k))


def add_detail(decoded: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """G(w) + detail, rounded and clipped to uint8."""
    return np.clip(np.rint(decoded.astype(np.float32) + detail), 0, 255).astype(np.uint8)


def pixel_mixup(images: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """MIM baseline: the pixel-space average of the k source images of each sample (uint8 in, uint8 out)."""
    mixed = images[sources].astype(np.float32).mean(axis=1)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
