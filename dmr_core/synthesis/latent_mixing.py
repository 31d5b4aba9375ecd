"""Mixing latents into OOD latents (paper §3, eqs. 4, 6, 7), and the class means they subtract.

With the encoder E, generator G, and class means μ_y = mean of E(x) over the ID training images of
class y (``class_means``), the marginal representation of an image is w^mar = E(x) − μ_y. Three
methods mix latents of k images drawn from k *distinct* classes:

- ``mlm``     (eq. 4): x = G((1/k) Σ_i w_i)
- ``dmr``     (eq. 6): x = G(λ · (E(x) − μ_y))                      (k = 1)
- ``dmr_mlm`` (eq. 7): x = G(λ · (1/k) Σ_i (w_i − μ_{y_i}))

λ, the emphasis factor, is drawn per sample: U(λ_min, λ_max) as in the paper (1–3), log-uniform on the
same range, or from {λ_min, λ_max} with p = ½ each as in the authors' notebooks. MLM has no λ (stored as 1).
Everything here is pure array math over latents; ``synthesis.dmr`` decodes the mixed latents with G.
"""

from __future__ import annotations

from collections.abc import Callable

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


LAMBDA_SAMPLERS: dict[str, Callable[[int, float, float, np.random.Generator], np.ndarray]] = {
    "uniform": lambda n, low, high, rng: rng.uniform(low, high, size=n),
    "loguniform": lambda n, low, high, rng: np.exp(rng.uniform(np.log(low), np.log(high), size=n)),
    "choice": lambda n, low, high, rng: np.where(rng.random(n) < 0.5, low, high),
}
LAMBDA_DISTRIBUTIONS = tuple(LAMBDA_SAMPLERS)


def sample_lambdas(num_samples: int, dist: str, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample emphasis factors λ: ``uniform`` U(low, high), ``loguniform`` (log λ uniform: as many samples
    in [1, 2] as in [2, 4]) or ``choice`` {low, high} with p = ½."""
    if low <= 0 or low > high:
        raise ValueError(f"need 0 < lambda_min <= lambda_max; got {low}, {high}")
    if dist not in LAMBDA_SAMPLERS:
        raise ValueError(f"unknown lambda distribution {dist!r}; choose from {LAMBDA_DISTRIBUTIONS}")
    return LAMBDA_SAMPLERS[dist](num_samples, low, high, rng).astype(np.float32)


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
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw sources and λ with ``seed`` and mix; returns (mixed latents, source indices, λ).

    ``normalise``: rescale every marginal to the mean marginal norm r̄ before mixing (``mix_latents``).
    ``batch_size``: mix that many samples at a time (None: all at once). Each sample is mixed on its own, so the
    result is the same; it bounds the memory of the gathered num_samples × k sources, large when the "latents"
    are a classifier's feature maps."""
    rng = np.random.default_rng(seed)
    sources = sample_sources(labels, k, num_samples, rng)
    lambdas = (np.ones(num_samples, np.float32) if method == "mlm"
               else sample_lambdas(num_samples, lambda_dist, lambda_min, lambda_max, rng))
    source_labels = np.asarray(labels).astype(np.int64)[sources]
    norm = mean_marginal_norm(latents, labels, means) if normalise and method != "mlm" else None
    step = batch_size or max(num_samples, 1)
    mixed = np.concatenate([
        mix_latents(latents[sources[i:i + step]], means[source_labels[i:i + step]], lambdas[i:i + step], method,
                    norm).astype(np.float32)
        for i in range(0, max(num_samples, 1), step)])
    return mixed, sources, lambdas
