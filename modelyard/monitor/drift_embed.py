"""Drift of embeddings (or any pooled feature vectors): the calibrated max-over-features statistic on k
principal components, plus a kernel two-sample test (MMD) on the raw vectors as a second signal.

The principal components are fitted on one random part of the reference (``fit_fraction``) and the detector's
reference is the other part, projected: components fitted on the very rows they are compared with would
overstate the reference's variance along them (top eigenvalues of a sample covariance are biased upward), and
fresh windows would then look shrunk. The MMD test (Gretton et al. 2012) uses a Gaussian kernel with the median
heuristic bandwidth (sigma^2 = median squared distance between the pooled rows), the biased estimate
MMD^2 = mean K(x, x') + mean K(y, y') - 2 mean K(x, y), and a permutation p-value
(1 + #{permuted >= observed}) / (P + 1); each side is subsampled to at most ``max_rows`` rows so one test costs
O(P (2 max_rows)^2) and stays under a second at the defaults. The joint MMD is weak for a shift confined to
one direction among many (``/work/shared/reference/monitoring.md`` 6); the component detector is the alarm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.errors import ConfigError, DataError
from modelyard.monitor.drift import DEFAULT_RESAMPLES, MIN_REFERENCE_ROWS, DriftResult, Reference
from modelyard.monitor.drift_inputs import as_matrix, check_alpha, check_int

__all__ = ["EmbeddingReference", "MMDResult", "mmd_test", "principal_components"]

DEFAULT_PERMUTATIONS = 200
DEFAULT_MAX_ROWS = 1000


@dataclass(frozen=True)
class MMDResult:
    """A kernel two-sample test of a window against reference rows."""

    statistic: float  # biased MMD^2 estimate, in kernel units (0 = same distribution)
    p_value: float
    alarm: bool
    alpha: float
    bandwidth: float  # sigma of the Gaussian kernel, in the data's units
    n_reference: int  # rows used on each side after subsampling
    n_window: int
    n_permutations: int
    method: str


def mmd_test(
    reference: Any,
    window: Any,
    *,
    alpha: float = 0.05,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
) -> MMDResult:
    """Permutation MMD test (Gaussian kernel, median heuristic) of ``window`` against ``reference`` rows."""
    a = check_alpha(alpha, n_resamples=check_int(n_permutations, "n_permutations", minimum=19))
    limit = check_int(max_rows, "max_rows", minimum=2)
    x = as_matrix(reference, "reference", what="embedding dimensions")
    y = as_matrix(window, "window", n_columns=x.shape[1], what="embedding dimensions")
    if y.shape[0] < 2:
        raise DataError(f"the window has {y.shape[0]} row; pass at least 2 rows for an MMD test.")
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    x = x[rng.choice(x.shape[0], limit, replace=False)] if x.shape[0] > limit else x
    y = y[rng.choice(y.shape[0], limit, replace=False)] if y.shape[0] > limit else y
    z = np.concatenate([x, y])
    sq = np.einsum("ij,ij->i", z, z)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    off_diagonal = dist2[np.triu_indices(z.shape[0], k=1)]
    sigma2 = float(np.median(off_diagonal))
    if sigma2 <= 0.0:
        sigma2 = float(off_diagonal.mean()) or 1.0
    kernel = np.exp(-dist2 / (2.0 * sigma2))
    m, n = x.shape[0], y.shape[0]
    weights = np.concatenate([np.full(m, 1.0 / m), np.full(n, -1.0 / n)])
    observed = float(weights @ kernel @ weights)
    shuffled = np.stack([rng.permutation(weights) for _ in range(n_permutations)])
    null = np.einsum("pi,pi->p", shuffled @ kernel, shuffled)
    p_value = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (n_permutations + 1))
    return MMDResult(
        statistic=observed,
        p_value=p_value,
        alarm=p_value <= a,
        alpha=a,
        bandwidth=float(np.sqrt(sigma2)),
        n_reference=m,
        n_window=n,
        n_permutations=int(n_permutations),
        method=(
            f"MMD^2 (biased), Gaussian kernel, median-heuristic bandwidth, {n_permutations} permutations, "
            f"at most {limit} rows per side"
        ),
    )


class EmbeddingReference:
    """Reference embeddings (n_ref x dim) to check windows of embeddings against.

    ``n_components`` principal components are fitted on ``fit_fraction`` of the reference rows (drawn with
    ``seed``); the rest, projected, is the reference the calibrated detector compares windows with.
    """

    def __init__(
        self,
        embeddings: Any,
        *,
        n_components: int = 8,
        fit_fraction: float = 0.5,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
    ) -> None:
        x = as_matrix(embeddings, "reference embeddings", what="embedding dimensions")
        n, dim = x.shape
        k = check_int(n_components, "n_components", minimum=1)
        if k > dim:
            raise ConfigError(f"n_components={k} exceeds the embedding dimension {dim}; pass at most {dim}.")
        if (
            isinstance(fit_fraction, bool)
            or not isinstance(fit_fraction, int | float)
            or not 0 < fit_fraction < 1
        ):
            raise ConfigError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}; use e.g. 0.5.")
        n_fit = round(n * float(fit_fraction))
        if n_fit <= k or n - n_fit < MIN_REFERENCE_ROWS:
            raise DataError(
                f"the reference has {n} rows: too few to fit {k} components on {n_fit} rows and keep "
                f"{MIN_REFERENCE_ROWS} for comparison; pass more reference rows (a few thousand)."
            )
        rows = np.random.default_rng(check_int(seed, "seed", minimum=0)).permutation(n)
        fit, held = x[rows[:n_fit]], x[rows[n_fit:]]
        self._center = fit.mean(axis=0)
        self._components, variances = principal_components(fit - self._center, k)  # (k, dim), all variances
        total = max(float(variances.sum()), 1e-300)
        self.explained_variance_ratio = tuple(float(v) / total for v in variances[:k])
        self.n_fit = n_fit
        self.dim = dim
        self._held = held
        names = [f"pc{i + 1}" for i in range(k)]
        self.reference = Reference(
            self.project(held), names, categorical=(), n_resamples=n_resamples, seed=seed
        )

    def project(self, embeddings: Any) -> NDArray[np.float64]:
        """Coordinates of ``embeddings`` (rows x dim) on the fitted components (rows x k)."""
        x = as_matrix(embeddings, "embeddings", n_columns=self.dim, what="embedding dimensions")
        return np.asarray((x - self._center) @ self._components.T, dtype=np.float64)

    def check(self, window: Any, *, alpha: float = 0.05) -> DriftResult:
        """Calibrated max-over-components drift check of a window of embeddings."""
        result = self.reference.check(self.project(window), alpha=alpha)
        share = sum(self.explained_variance_ratio)
        prefix = (
            f"embeddings ({self.dim} dims) projected on {len(self.explained_variance_ratio)} principal "
            f"components ({share:.0%} of the variance) fitted on {self.n_fit} other reference rows; "
        )
        return dataclasses.replace(result, method=prefix + result.method)

    def mmd(
        self,
        window: Any,
        *,
        alpha: float = 0.05,
        n_permutations: int = DEFAULT_PERMUTATIONS,
        max_rows: int = DEFAULT_MAX_ROWS,
        seed: int = 0,
    ) -> MMDResult:
        """MMD permutation test of a window of embeddings against the held-out reference rows."""
        x = as_matrix(window, "window", n_columns=self.dim, what="embedding dimensions")
        return mmd_test(
            self._held, x, alpha=alpha, n_permutations=n_permutations, max_rows=max_rows, seed=seed
        )


def principal_components(
    centred: NDArray[np.float64], k: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The top ``k`` principal directions (k, dim) of centred rows, and every component's variance, largest
    first: from the covariance matrix when rows outnumber dimensions (cheaper), else from an SVD."""
    rows, dim = centred.shape
    if rows > dim:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / (rows - 1))
        order = np.argsort(eigenvalues)[::-1]
        return vectors[:, order[:k]].T.copy(), np.clip(eigenvalues[order], 0.0, None)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:k].copy(), singular**2 / max(rows - 1, 1)
