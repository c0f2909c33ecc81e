"""Metrics as pure functions: arrays in, numbers out.

Conventions follow ``/work/shared/reference/metrics.md`` 5.1 and 5.4. Notation: n samples, K classes,
``probs`` an (n, K) array of class probabilities (rows sum to 1), ``y_true`` the n integer labels in
[0, K), confidence c = max_k p_k, prediction ŷ = argmax_k p_k (the first index on ties).

- ECE is top-label with M equal-width bins B_m = ((m − 1)/M, m/M], edges m/M (``np.arange(M + 1) / M``);
  c = 0 goes in the first bin and c = 1 in the last. Empty bins contribute 0.
- Brier is the multiclass form (1/n) Σ_i Σ_k (p_ik − 1[y_i = k])², range [0, 2] (never halved).
- NLL is −(1/n) Σ_i log max(p_{i,y_i}, ε) in nats, from logits via log-softmax by default.
- macro-F1 averages over the classes present in the truth or the predictions (sklearn's default labels).

Every function validates its inputs and raises ``DataError`` for wrong shapes, empty input, labels out
of range or non-finite values; invalid options (``n_bins``, ``k``, ...) raise ``ConfigError``.
Everything is computed in float64. The statistics (intervals, paired tests) live in ``stats`` and are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import (
    _as_labels_1d,
    _check_positive_int,
    _same_length,
    accuracy_drop,
    bootstrap_ci,
    mcnemar_exact,
    wilson_interval,
)

__all__ = [
    "accuracy",
    "accuracy_drop",
    "bootstrap_ci",
    "brier",
    "cosine_to_reference",
    "ece",
    "flip_rate",
    "log_softmax",
    "macro_f1",
    "mcnemar_exact",
    "mean_kl",
    "negative_flip_rate",
    "nll",
    "paraphrase_recall_at_1",
    "reliability_bins",
    "softmax",
    "topk_agreement",
    "topk_neighbours",
    "wilson_interval",
]

# Probabilities may stray from [0, 1], and rows from summing to 1, by this much (float16 model outputs).
_PROB_SUM_ATOL = 1e-3
# Similarity rows are computed in blocks of this many query rows, so memory stays O(block · n).
_SIM_BLOCK_ROWS = 1024


# ---------------------------------------------------------------------------------------------------
# validation


def _as_float_2d(x: Any, name: str, *, what: str = "an (n, K) array") -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be {what} of numbers, could not convert it: {exc}.") from exc
    if arr.ndim != 2:
        raise DataError(f"{name} must be {what}, got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); pass at least one sample and one column.")
    if np.isnan(arr).any():
        raise DataError(
            f"{name} contains NaN in {int(np.isnan(arr).any(axis=1).sum())} rows; fix the model outputs."
        )
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains inf in {int((~np.isfinite(arr)).any(axis=1).sum())} rows.")
    return arr


def _as_probs(x: Any, name: str) -> np.ndarray:
    probs = _as_float_2d(x, name, what="an (n, K) array of class probabilities")
    if probs.shape[1] < 2:
        raise DataError(f"{name} must have at least 2 classes (columns), got shape {probs.shape}.")
    if probs.min() < -_PROB_SUM_ATOL or probs.max() > 1.0 + _PROB_SUM_ATOL:
        raise DataError(
            f"{name} must hold probabilities in [0, 1], got values in [{probs.min():.4g}, {probs.max():.4g}]; "
            "pass softmax(logits), not logits."
        )
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > _PROB_SUM_ATOL:
        raise DataError(
            f"each row of {name} must sum to 1 (within {_PROB_SUM_ATOL}), the worst row is off by {worst:.4g}; "
            "pass softmax(logits)."
        )
    # float32/float16 softmax outputs can stray from [0, 1] by a rounding error; clip that away.
    return np.asarray(np.clip(probs, 0.0, 1.0))


def _as_labels(y: Any, name: str, *, num_classes: int | None = None) -> np.ndarray:
    labels = _as_labels_1d(y, name)
    if num_classes is not None and labels.max() >= num_classes:
        raise DataError(
            f"{name} holds label {int(labels.max())}, out of range for {num_classes} classes "
            f"(labels must be in [0, {num_classes - 1}])."
        )
    return labels


def _check_rows(n_rows: int, labels: np.ndarray, rows_name: str, labels_name: str) -> None:
    if n_rows != len(labels):
        raise DataError(
            f"{rows_name} has {n_rows} rows but {labels_name} has {len(labels)} labels; pass one row per sample."
        )


def _probs_and_labels(probs: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_probs(probs, "probs")
    y = _as_labels(y_true, "y_true", num_classes=p.shape[1])
    _check_rows(p.shape[0], y, "probs", "y_true")
    return p, y


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < float(eps) < 1.0:
        raise ConfigError(f"eps must be a small positive number below 1, got {eps!r}; the default is 1e-12.")
    return float(eps)


# ---------------------------------------------------------------------------------------------------
# probabilities


def _as_logits(logits: Any) -> np.ndarray:
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"logits must be an array of numbers, could not convert it: {exc}.") from exc
    if z.ndim == 0 or z.shape[-1] == 0 or z.size == 0:
        raise DataError(f"logits must have at least one class on the last axis, got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise DataError("logits contain NaN or inf; check the model outputs.")
    return z


def log_softmax(logits: Any) -> np.ndarray:
    """Log of softmax over the last axis, computed stably (max-shifted log-sum-exp), in float64."""
    z = _as_logits(logits)
    shifted = z - z.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def softmax(logits: Any) -> np.ndarray:
    """Softmax over the last axis, computed stably (max-shifted), in float64; rows sum to 1."""
    z = _as_logits(logits)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------------
# quality


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples with ``y_pred == y_true`` (integer class indices)."""
    y = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    _same_length({"y_true": y, "y_pred": pred})
    return float(np.mean(y == pred))


def macro_f1(y_true: Any, y_pred: Any, *, num_classes: int) -> float:
    """Unweighted mean of per-class F1 = 2·TP / (2·TP + FP + FN).

    Classes absent from both the truth and the predictions are excluded from the average (their F1 is
    undefined), as sklearn's ``f1_score(average="macro")`` does with its default ``labels``. A class that
    is present but never predicted correctly scores 0.
    """
    k = _check_positive_int(num_classes, "num_classes")
    y = _as_labels(y_true, "y_true", num_classes=k)
    pred = _as_labels(y_pred, "y_pred", num_classes=k)
    _same_length({"y_true": y, "y_pred": pred})
    tp = np.bincount(y[y == pred], minlength=k).astype(np.float64)
    true_count = np.bincount(y, minlength=k).astype(np.float64)
    pred_count = np.bincount(pred, minlength=k).astype(np.float64)
    denom = true_count + pred_count  # = 2·TP + FP + FN
    present = denom > 0
    return float(np.mean(2.0 * tp[present] / denom[present]))


# ---------------------------------------------------------------------------------------------------
# calibration


def _check_n_bins(n_bins: int) -> int:
    return _check_positive_int(n_bins, "n_bins")


def _bin_edges(n_bins: int) -> np.ndarray:
    # m / M by division (correctly rounded), so a confidence equal to the float m/M sits on edge m exactly.
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """0-based bin of each confidence: bin m-1 holds ((m - 1)/M, m/M]; c = 0 goes in the first bin."""
    # side="left" gives i with edges[i-1] < c <= edges[i]; c = 0 gives i = 0, moved into the first bin.
    return np.clip(np.searchsorted(_bin_edges(n_bins), conf, side="left"), 1, n_bins) - 1


def _bin_stats(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin count, sum of confidence, sum of correctness (each of length n_bins)."""
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return count, conf_sum, acc_sum


def ece(probs: Any, y_true: Any, *, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins.

    ECE = Σ_m (n_m / n)·|acc(B_m) − conf(B_m)| over bins B_m = ((m − 1)/M, m/M], with c = 0 in the
    first bin and c = 1 in the last; empty bins contribute 0. The result is in [0, 1].
    """
    p, y = _probs_and_labels(probs, y_true)
    _, conf_sum, acc_sum = _bin_stats(p, y, _check_n_bins(n_bins))
    # n_m/n·|acc_m − conf_m| = |acc_sum_m − conf_sum_m| / n, and 0 for empty bins.
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))


def reliability_bins(probs: Any, y_true: Any, *, n_bins: int = 15) -> list[dict[str, Any]]:
    """The bin table behind ``ece``: one dict per bin, in order of confidence.

    Each bin is ``{"lo", "hi", "count", "confidence", "accuracy"}``: the bin's edges, the number of
    samples in it, and their mean confidence and accuracy (``None`` for an empty bin).
    """
    p, y = _probs_and_labels(probs, y_true)
    m = _check_n_bins(n_bins)
    count, conf_sum, acc_sum = _bin_stats(p, y, m)
    edges = _bin_edges(m)
    table: list[dict[str, Any]] = []
    for i in range(m):
        filled = count[i] > 0
        table.append(
            {
                "lo": float(edges[i]),
                "hi": float(edges[i + 1]),
                "count": int(count[i]),
                "confidence": float(conf_sum[i] / count[i]) if filled else None,
                "accuracy": float(acc_sum[i] / count[i]) if filled else None,
            }
        )
    return table


def brier(probs: Any, y_true: Any) -> float:
    """Multiclass Brier score (1/n) Σ_i Σ_k (p_ik − 1[y_i = k])², in [0, 2]; lower is better."""
    p, y = _probs_and_labels(probs, y_true)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(logits_or_probs: Any, y_true: Any, *, from_logits: bool = True, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, in nats: −(1/n) Σ_i log max(p_{i,y_i}, ε).

    With ``from_logits=True`` (default) the input is logits and log p comes from a stable log-softmax;
    with ``from_logits=False`` the input must be probabilities.
    """
    floor = _check_eps(eps)
    if from_logits:
        z = _as_float_2d(logits_or_probs, "logits", what="an (n, K) array of logits")
        logp_all = log_softmax(z)
        name = "logits"
    else:
        logp_all = np.log(np.maximum(_as_probs(logits_or_probs, "probs"), floor))
        name = "probs"
    y = _as_labels(y_true, "y_true", num_classes=logp_all.shape[1])
    _check_rows(logp_all.shape[0], y, name, "y_true")
    logp = np.maximum(logp_all[np.arange(len(y)), y], np.log(floor))
    return float(-np.mean(logp))


# ---------------------------------------------------------------------------------------------------
# comparing a candidate with the baseline


def flip_rate(pred_base: Any, pred_cand: Any) -> float:
    """Fraction of samples whose predicted class differs between baseline and candidate (symmetric)."""
    base = _as_labels(pred_base, "pred_base")
    cand = _as_labels(pred_cand, "pred_cand")
    _same_length({"pred_base": base, "pred_cand": cand})
    return float(np.mean(base != cand))


def negative_flip_rate(y: Any, pred_base: Any, pred_cand: Any) -> float:
    """Fraction of all samples that the baseline got right and the candidate gets wrong.

    The denominator is every sample (Yan et al. 2021), so this equals b / n of ``mcnemar_exact``.
    """
    truth = _as_labels(y, "y")
    base = _as_labels(pred_base, "pred_base")
    cand = _as_labels(pred_cand, "pred_cand")
    _same_length({"y": truth, "pred_base": base, "pred_cand": cand})
    return float(np.mean((base == truth) & (cand != truth)))


def mean_kl(p_base: Any, p_cand: Any, *, eps: float = 1e-12) -> float:
    """Mean over samples of KL(p_base ‖ p_cand) = Σ_k p_k·log(p_k / q_k), in nats.

    Terms with p_k = 0 contribute 0; probabilities are floored at ``eps`` inside the logarithm, and each
    row's KL is floored at 0 (the flooring can otherwise make it a rounding error below 0).
    """
    floor = _check_eps(eps)
    p = _as_probs(p_base, "p_base")
    q = _as_probs(p_cand, "p_cand")
    if p.shape != q.shape:
        raise DataError(
            f"p_base has shape {p.shape} but p_cand has shape {q.shape}; pass the same samples and classes."
        )
    terms = np.where(p > 0.0, p * (np.log(np.maximum(p, floor)) - np.log(np.maximum(q, floor))), 0.0)
    return float(np.mean(np.maximum(terms.sum(axis=1), 0.0)))


# ---------------------------------------------------------------------------------------------------
# embedding fidelity


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    return _as_float_2d(x, name, what="an (n, d) array of embeddings")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0.0, norms, 1.0)


def cosine_to_reference(emb: Any, ref: Any) -> np.ndarray:
    """Row-wise cosine similarity between ``emb[i]`` and ``ref[i]``, shape (n,), float64.

    An all-zero row has cosine 0 with anything (sklearn's convention).
    """
    e = _as_embeddings(emb, "emb")
    r = _as_embeddings(ref, "ref")
    if e.shape != r.shape:
        raise DataError(
            f"emb has shape {e.shape} but ref has shape {r.shape}; pass the same items and dimension."
        )
    return np.asarray(np.clip(np.sum(_unit_rows(e) * _unit_rows(r), axis=1), -1.0, 1.0))


def _check_k(k: int, n: int) -> int:
    kk = _check_positive_int(k, "k")
    if kk > n - 1:
        raise ConfigError(f"k={kk} is too large for {n} items; k must be at most n - 1 = {n - 1}.")
    return kk


def _neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    n = unit.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, _SIM_BLOCK_ROWS):
        stop = min(n, start + _SIM_BLOCK_ROWS)
        sim = unit[start:stop] @ unit.T
        rows = np.arange(stop - start)
        sim[rows, rows + start] = -np.inf  # exclude self
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        # nearest first; equal similarities by lower index
        order = np.lexsort((top, -top_sim), axis=1)
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def topk_neighbours(emb: Any, *, k: int = 10) -> np.ndarray:
    """Indices of each item's ``k`` nearest other items by cosine similarity, shape (n, k), nearest first.

    The item itself is excluded. Which of several exactly tied items at the k-th place is kept is
    deterministic but unspecified.
    """
    e = _as_embeddings(emb, "emb")
    kk = _check_k(k, e.shape[0])
    return _neighbours(_unit_rows(e), kk)


def topk_agreement(emb: Any, ref: Any, *, k: int = 10) -> float:
    """Mean over items of |N_k(emb) ∩ N_k(ref)| / k, where N_k is the set of k nearest by cosine.

    ``emb`` and ``ref`` must hold the same items (rows) but may have different dimensions.
    """
    e = _as_embeddings(emb, "emb")
    r = _as_embeddings(ref, "ref")
    if e.shape[0] != r.shape[0]:
        raise DataError(
            f"emb has {e.shape[0]} items but ref has {r.shape[0]}; pass the same items in the same order."
        )
    kk = _check_k(k, e.shape[0])
    a = _neighbours(_unit_rows(e), kk)
    b = _neighbours(_unit_rows(r), kk)
    common = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))
    return float(np.mean(common / kk))


def paraphrase_recall_at_1(emb: Any, pairs: Sequence[tuple[int, int]] | np.ndarray) -> float:
    """Fraction of paraphrase queries whose nearest other item (by cosine) is the partner.

    Each pair (i, j) makes two queries: i must retrieve j and j must retrieve i; the result is the mean
    over the 2·len(pairs) queries. Ties go to the lower index.
    """
    e = _as_embeddings(emb, "emb")
    n = e.shape[0]
    if n < 2:
        raise DataError(f"paraphrase recall needs at least 2 items, got {n}.")
    arr = np.asarray(pairs)
    if arr.size == 0:
        raise DataError("pairs is empty; pass at least one (i, j) pair of paraphrase indices.")
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"pairs must be a list of (i, j) integer index pairs, got an array of shape {arr.shape}."
        )
    if arr.min() < 0 or arr.max() >= n:
        raise DataError(
            f"pairs hold index {int(arr.max()) if arr.max() >= n else int(arr.min())}, out of range for {n} items."
        )
    if np.any(arr[:, 0] == arr[:, 1]):
        raise DataError("pairs contain an item paired with itself; each pair must be two different items.")
    queries = np.concatenate([arr[:, 0], arr[:, 1]])
    targets = np.concatenate([arr[:, 1], arr[:, 0]])
    unit = _unit_rows(e)
    hits = 0
    for start in range(0, len(queries), _SIM_BLOCK_ROWS):
        q = queries[start : start + _SIM_BLOCK_ROWS]
        sim = unit[q] @ unit.T
        sim[np.arange(len(q)), q] = -np.inf
        hits += int(np.count_nonzero(sim.argmax(axis=1) == targets[start : start + _SIM_BLOCK_ROWS]))
    return hits / len(queries)
