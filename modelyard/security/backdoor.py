"""Backdoor (data-poisoning) scans on a model's representations of its training data (metrics.md 5.7).

Both scans look at one class at a time, in the representations of ``evaluate.features`` (the
penultimate layer of a classifier):

- Activation clustering (Chen et al. 2018): centre the class, reduce it with PCA to 10 dimensions
  (fewer for a small class), split it with k-means (k = 2). A poisoned class holds a second group, the
  relabelled items, so its smaller cluster is small (relative size < 0.35) and well separated
  (silhouette >= 0.25).
- Spectral signatures (Tran et al. 2018): centre the class, take its top right singular vector v and
  score every item by <r − μ, v>²; the top 1.5·ε·n_class scores are suspicious (ε = expected poison
  rate). The class is split in two along v at the threshold minimising the within-group variance of
  the projections (Otsu's method in one dimension).

Size and silhouette alone flag clean classes, so both methods add checks on their split. The smaller
group must hold at least 5 items and 2% of the class (a few outliers are not a cluster). Separation:
(m1 − m2)² / (s1² + s2²) of the two groups projected on the line joining them must be >= 5 (splitting
a single Gaussian gives 3.5); a long tail is not a second mode (on the breast-cancer MLP the malignant
class splits off its extreme tumours with silhouette 0.59 but separation 3.2). Dispersion: a poisoned
group gathers items of several source classes under one label, so it spreads wider than the class's
majority; a handwriting sub-style does not (on scikit-learn digits the 1s with and without a base
stroke, and two ways of writing 9, form small clusters with silhouettes up to 0.48 and dispersion ratios
up to 1.19). The smaller group must be >= 1.3 times as dispersed as the larger (mean distance to the
centroid). Measured on the digits CNN (16 trainings with a 2x2 corner trigger on 4% of the training
items relabelled to one class, 8 clean trainings): no clean class flagged, the poisoned class flagged
by both in 12 of 16 (missed when the poison makes up ~40% of the target class, or clusters poorly).
:func:`backdoor_scan` flags a class only when both methods flag it. Adaptive attacks can evade both
scans, and so can poison that is most of its class: a clean scan is not proof.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import _as_labels_1d, _check_positive_int, _check_seed

__all__ = ["activation_clustering", "backdoor_scan", "spectral_signatures"]

#: Activation clustering flags a class whose smaller cluster holds less than this fraction of it ...
MAX_SMALL_FRACTION = 0.35
#: ... with at least this silhouette (k-means on the reduced representations) ...
MIN_SILHOUETTE = 0.25
#: Both methods: the smaller group must hold at least this fraction of the class and this many items
#: (a handful of outliers is the data audit's business) ...
MIN_GROUP_FRACTION = 0.02
MIN_GROUP_ITEMS = 5
#: ... the two groups must be separate modes, (m1 − m2)² / (s1² + s2²) along the line joining
#: them at least this (splitting one Gaussian in two gives 3.5, a long tail less) ...
MIN_SEPARATION = 5.0
#: ... and the smaller group at least this much more dispersed than the larger one.
MIN_DISPERSION_RATIO = 1.3
#: Classes with fewer items are not analysed (they are listed as skipped).
DEFAULT_MIN_SIZE = 20
#: Silhouettes are computed on at most this many items of a class (a fixed-seed sample beyond it).
SILHOUETTE_SAMPLE = 2000
MAX_LISTED_PER_CLASS = 50
MAX_LISTED = 200
LIMITS = "adaptive attacks can evade activation clustering and spectral signatures; a clean scan is not proof"
_RATIO_CAP = 1e6


# ---------------------------------------------------------------------------------------------------
# validation


def _inputs(
    features: Any, labels: Any, classes: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    try:
        f = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"features must be an (n, d) array of numbers, could not convert it: {exc}.") from exc
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise DataError(
            f"features must be a non-empty (n, d) array (one row per training item), got shape {f.shape}."
        )
    if not np.isfinite(f).all():
        bad = int((~np.isfinite(f)).any(axis=1).sum())
        raise DataError(f"features contain NaN or inf in {bad} rows; check the model's representations.")
    y = _as_labels_1d(labels, "labels")
    if len(y) != f.shape[0]:
        raise DataError(
            f"features have {f.shape[0]} rows but labels has {len(y)} entries; pass one label per row."
        )
    present = sorted(int(k) for k in np.unique(y))
    if classes is None:
        names: list[Any] = list(range(present[-1] + 1))
    else:
        names = [str(c) for c in classes]
        if present[-1] >= len(names):
            raise DataError(
                f"labels hold class index {present[-1]} but classes names only {len(names)} classes; "
                "pass one name per class index."
            )
    return f, y, names


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)):
        raise ConfigError(f"expected_poison_rate must be a number in (0, 0.5], got {rate!r}; use e.g. 0.05.")
    value = float(rate)
    if not 0.0 < value <= 0.5:
        raise ConfigError(f"expected_poison_rate must be in (0, 0.5], got {rate!r}; use e.g. 0.05.")
    return value


def _check_min_size(min_size: Any) -> int:
    return _check_positive_int(min_size, "min_size", minimum=3)


# ---------------------------------------------------------------------------------------------------
# per-class analyses (indices are local to the class)


def _dispersion_ratio(small: np.ndarray, large: np.ndarray) -> float:
    """Mean distance to the centroid in the smaller group over the same in the larger group."""

    def spread(z: np.ndarray) -> float:
        return float(np.linalg.norm(z - z.mean(axis=0), axis=1).mean())

    num, den = spread(small), spread(large)
    if den == 0.0:
        return 0.0 if num == 0.0 else _RATIO_CAP
    return min(num / den, _RATIO_CAP)


def _separation(proj: np.ndarray, small: np.ndarray) -> float:
    """(m1 − m2)² / (s1² + s2²) of the two groups' 1-d projections."""
    a, b = proj[small], proj[~small]
    den = float(a.var() + b.var())
    num = float((a.mean() - b.mean()) ** 2)
    if den == 0.0:
        return 0.0 if num == 0.0 else _RATIO_CAP
    return min(num / den, _RATIO_CAP)


def _big_enough(small: np.ndarray) -> bool:
    k = int(small.sum())
    return k >= MIN_GROUP_ITEMS and k >= MIN_GROUP_FRACTION * len(small)


def _ac_one(f: np.ndarray, n_components: int, seed: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    n = f.shape[0]
    centred = f - f.mean(axis=0)
    if not np.any(centred):
        return {"skipped": "every item of the class has the same representation"}
    dims = min(n_components, n - 1, f.shape[1])
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(centred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lab = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
    sizes = np.bincount(lab, minlength=2)
    if sizes.min() == 0:
        return {"skipped": "the representations do not split into two clusters"}
    small_id = int(np.argmin(sizes))
    small = lab == small_id
    sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None
    try:
        sil = float(silhouette_score(reduced, lab, sample_size=sample, random_state=seed))
    except ValueError:  # the sample missed a (tiny) cluster: too small to matter
        sil = 0.0
    fraction = float(sizes[small_id] / n)
    line = reduced[small].mean(axis=0) - reduced[~small].mean(axis=0)
    length = float(np.linalg.norm(line))
    separation = _separation(reduced @ (line / length), small) if length > 0 else 0.0
    ratio = _dispersion_ratio(f[small], f[~small])
    flagged = (
        _big_enough(small)
        and fraction < MAX_SMALL_FRACTION
        and sil >= MIN_SILHOUETTE
        and separation >= MIN_SEPARATION
        and ratio >= MIN_DISPERSION_RATIO
    )
    return {
        "dims": dims,
        "small_cluster_fraction": fraction,
        "silhouette": sil,
        "separation": separation,
        "dispersion_ratio": ratio,
        "flagged": bool(flagged),
        "suspicious": np.flatnonzero(small),
    }


def _otsu_split(proj: np.ndarray) -> np.ndarray:
    """Boolean mask of the items above the 1-d threshold minimising the within-group sum of squares."""
    order = np.argsort(proj, kind="stable")
    s = proj[order]
    n = len(s)
    c1, c2 = np.cumsum(s), np.cumsum(s * s)
    i = np.arange(1, n)  # left group = s[:i]
    left = c2[i - 1] - c1[i - 1] ** 2 / i
    right = (c2[-1] - c2[i - 1]) - (c1[-1] - c1[i - 1]) ** 2 / (n - i)
    best = int(i[np.argmin(left + right)])
    above = np.zeros(n, dtype=bool)
    above[order[best:]] = True
    return above


def _ss_one(f: np.ndarray, rate: float) -> dict[str, Any]:
    n = f.shape[0]
    centred = f - f.mean(axis=0)
    if not np.any(centred):
        return {"skipped": "every item of the class has the same representation"}
    _, vecs = np.linalg.eigh(centred.T @ centred)
    v = vecs[:, -1]
    proj = centred @ v
    scores = proj**2
    m = min(n, int(np.ceil(1.5 * rate * n)))
    top = np.argsort(-scores, kind="stable")[:m]
    above = _otsu_split(proj)
    minority = above if above.sum() <= n - above.sum() else ~above
    separation = _separation(proj, minority)
    ratio = _dispersion_ratio(f[minority], f[~minority])
    total = float(scores.sum())
    return {
        "n_top": m,
        "score_threshold": float(scores[top[-1]]),
        "top_score_mass": float(scores[top].sum() / total) if total > 0 else 0.0,
        "minority_fraction": float(minority.mean()),
        "separation": separation,
        "dispersion_ratio": ratio,
        "flagged": bool(
            _big_enough(minority) and separation >= MIN_SEPARATION and ratio >= MIN_DISPERSION_RATIO
        ),
        "suspicious": np.sort(top),
    }


# ---------------------------------------------------------------------------------------------------
# runners shared by the public functions (they keep the full index arrays)


def _per_class(
    f: np.ndarray, y: np.ndarray, names: list[Any], min_size: int, one: Any
) -> list[tuple[dict[str, Any], np.ndarray]]:
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(limits=1):  # small problems: threads only oversubscribe a shared CPU
        for label in sorted(int(k) for k in np.unique(y)):
            out.append(_one_class(f, y, names, min_size, one, label))
    return out


def _one_class(
    f: np.ndarray, y: np.ndarray, names: list[Any], min_size: int, one: Any, label: int
) -> tuple[dict[str, Any], np.ndarray]:
    idx = np.flatnonzero(y == label)
    entry: dict[str, Any] = {"class": names[label], "label": label, "n": len(idx)}
    if len(idx) < min_size:
        entry.update(flagged=False, skipped=f"{len(idx)} items, fewer than min_size={min_size}")
        return entry, idx[:0]
    res = one(f[idx])
    if "skipped" in res:
        entry.update(flagged=False, skipped=res["skipped"])
        return entry, idx[:0]
    suspicious = idx[res.pop("suspicious")]
    entry.update(res)
    entry["n_suspicious"] = len(suspicious)
    entry["suspicious_indices"] = [int(i) for i in suspicious[:MAX_LISTED_PER_CLASS]]
    return entry, suspicious


def _summary(rows: list[tuple[dict[str, Any], np.ndarray]], method: str, rule: str) -> dict[str, Any]:
    entries = [e for e, _ in rows]
    return {
        "method": method,
        "rule": rule,
        "flagged_classes": [e["class"] for e in entries if e["flagged"]],
        "skipped_classes": [e["class"] for e in entries if "skipped" in e],
        "classes": entries,
    }


_AC_METHOD = "activation clustering (Chen et al. 2018): per class PCA to {d} dimensions, k-means k=2"
_GROUP = f"holds >= {MIN_GROUP_ITEMS} items and >= {MIN_GROUP_FRACTION} of the class"
_AC_RULE = (
    f"flag when the smaller cluster {_GROUP} but < {MAX_SMALL_FRACTION} of it, the silhouette is "
    f">= {MIN_SILHOUETTE}, the separation is >= {MIN_SEPARATION} and the smaller cluster is "
    f">= {MIN_DISPERSION_RATIO}x as dispersed as the larger"
)
_SS_METHOD = (
    "spectral signatures (Tran et al. 2018): per class score <r - mu, v>^2 on the top singular vector v; "
    "the top 1.5*eps*n scores are suspicious (eps = {eps})"
)
_SS_RULE = (
    "split the class along v at the threshold minimising the within-group variance; flag when the "
    f"smaller group {_GROUP}, the separation is >= {MIN_SEPARATION} and the smaller group is "
    f">= {MIN_DISPERSION_RATIO}x as dispersed as the larger"
)


def _ac_rows(
    f: np.ndarray, y: np.ndarray, names: list[Any], n_components: int, min_size: int, seed: int
) -> list[tuple[dict[str, Any], np.ndarray]]:
    return _per_class(f, y, names, min_size, lambda g: _ac_one(g, n_components, seed))


def _ss_rows(
    f: np.ndarray, y: np.ndarray, names: list[Any], rate: float, min_size: int
) -> list[tuple[dict[str, Any], np.ndarray]]:
    return _per_class(f, y, names, min_size, lambda g: _ss_one(g, rate))


# ---------------------------------------------------------------------------------------------------
# public


def activation_clustering(
    features: Any,
    labels: Any,
    *,
    classes: Sequence[Any] | None = None,
    n_components: int = 10,
    min_size: int = DEFAULT_MIN_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """Activation clustering per class (metrics.md 5.7; Chen et al. 2018).

    Returns ``{"method", "rule", "flagged_classes", "skipped_classes", "classes": [per class]}``, per
    class ``{"class", "label", "n", "dims", "small_cluster_fraction", "silhouette", "separation",
    "dispersion_ratio", "flagged", "n_suspicious", "suspicious_indices"}`` (the smaller cluster's row indices into
    ``features``, the first 50) or ``{"class", "label", "n", "flagged": False, "skipped": reason}``.
    ``classes`` names the class indices (default: the indices themselves).
    """
    f, y, names = _inputs(features, labels, classes)
    n_components = _check_positive_int(n_components, "n_components")
    rows = _ac_rows(f, y, names, n_components, _check_min_size(min_size), _check_seed(seed))
    return _summary(rows, _AC_METHOD.format(d=n_components), _AC_RULE)


def spectral_signatures(
    features: Any,
    labels: Any,
    *,
    classes: Sequence[Any] | None = None,
    expected_poison_rate: float = 0.05,
    min_size: int = DEFAULT_MIN_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """Spectral-signature scores per class (metrics.md 5.7; Tran et al. 2018).

    Returns ``{"method", "rule", "flagged_classes", "skipped_classes", "classes": [per class]}``, per
    class ``{"class", "label", "n", "n_top", "score_threshold", "top_score_mass", "minority_fraction",
    "separation", "dispersion_ratio", "flagged", "n_suspicious", "suspicious_indices"}`` where the suspicious items are
    the top ``ceil(1.5 · ε · n)`` scores (row indices into ``features``, the first 50). The scan is
    deterministic; ``seed`` is accepted for a uniform signature with the other scans.
    """
    f, y, names = _inputs(features, labels, classes)
    rate = _check_rate(expected_poison_rate)
    _check_seed(seed)
    rows = _ss_rows(f, y, names, rate, _check_min_size(min_size))
    return _summary(rows, _SS_METHOD.format(eps=rate), _SS_RULE)


def backdoor_scan(
    features: Any,
    labels: Any,
    *,
    classes: Sequence[Any] | None = None,
    expected_poison_rate: float = 0.05,
    n_components: int = 10,
    min_size: int = DEFAULT_MIN_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """Both scans on the training representations; a class is flagged when BOTH methods flag it.

    Returns ``{"flagged_classes": [names], "suspicious_indices": [sorted, first 200], "n_suspicious",
    "analysed_classes", "skipped_classes", "activation_clustering": {...}, "spectral_signatures": {...},
    "method", "limits"}``. The suspicious items are the union, over flagged classes, of the smaller
    activation cluster and the top spectral scores. Requiring both keeps clean classes with real
    sub-styles unflagged (see the module docstring for the measurements behind the thresholds).
    """
    f, y, names = _inputs(features, labels, classes)
    rate = _check_rate(expected_poison_rate)
    n_components = _check_positive_int(n_components, "n_components")
    min_size = _check_min_size(min_size)
    seed = _check_seed(seed)
    ac = _ac_rows(f, y, names, n_components, min_size, seed)
    ss = _ss_rows(f, y, names, rate, min_size)
    flagged: list[Any] = []
    suspicious: set[int] = set()
    for (a, a_idx), (s, s_idx) in zip(ac, ss, strict=True):
        if a["flagged"] and s["flagged"]:
            flagged.append(a["class"])
            suspicious.update(int(i) for i in a_idx)
            suspicious.update(int(i) for i in s_idx)
    listed = sorted(suspicious)
    skipped = [a["class"] for a, _ in ac if "skipped" in a]
    return {
        "flagged_classes": flagged,
        "suspicious_indices": listed[:MAX_LISTED],
        "n_suspicious": len(listed),
        "analysed_classes": len(ac) - len(skipped),
        "skipped_classes": skipped,
        "activation_clustering": _summary(ac, _AC_METHOD.format(d=n_components), _AC_RULE),
        "spectral_signatures": _summary(ss, _SS_METHOD.format(eps=rate), _SS_RULE),
        "method": (
            "activation clustering and spectral signatures on the training representations; a class is "
            "flagged only when both flag it, each requiring two separate modes (separation >= "
            f"{MIN_SEPARATION}) whose smaller one is >= {MIN_DISPERSION_RATIO}x as dispersed as the larger"
        ),
        "limits": LIMITS,
    }
