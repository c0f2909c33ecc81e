"""Slices: per-class metrics, the worst class against the baseline, and user-declared slices.

Conventions ``/work/shared/reference/metrics.md`` 5.5: per-class recall, precision and F1 with Wilson
intervals and support; the worst class and the largest per-class recall drop against the baseline (a
candidate can keep its global accuracy and lose a class), with a paired bootstrap interval (5.4);
user slices report accuracy with a Wilson interval and n, and slices with n below ``min_support`` are
UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.checkspec import CLASSIFIERS, CheckSpec, GateSpec, declare
from modelyard.evaluate.compare import _grouped_sums, _index_chunks, _paired_inputs, _percentile_interval
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.stats import _as_labels_1d, _check_positive_int, _check_seed, wilson_interval

__all__ = ["per_class_table", "slice_evidence", "user_slice_evidence"]

# Details lists are capped at this many entries so Evidence stays small.
MAX_DETAIL_ROWS = 50
# Numeric slice columns with more distinct values than this are cut into quantile bins.
MAX_DISTINCT_VALUES = 10
N_QUANTILE_BINS = 4

_CLS = CLASSIFIERS
CHECKS = declare(
    CheckSpec(
        "slices.worst_class_recall",
        "fraction",
        "lowest per-class recall, Wilson 95% interval",
        "higher",
        _CLS,
        ("labels",),
    ),
    CheckSpec(
        "slices.worst_class_drop",
        "points",
        "largest per-class recall drop against the baseline, percentage points, paired 95% interval",
        "lower",
        _CLS,
        ("labels",),
        gate=GateSpec(
            "worst_class_drop",
            "quality.max_class_recall_drop_points",
            10.0,
            "<=",
            "largest per-class recall drop against the baseline",
            unit="points",
            meaning="per-class recall against the baseline: losing one class fails",
        ),
    ),
    CheckSpec(
        "slices.worst_slice_drop",
        "points",
        "largest accuracy drop against the baseline over user-declared slices, percentage points",
        "lower",
        _CLS,
        ("labels", "slices"),
        gate=GateSpec(
            "slice_drop",
            "quality.max_slice_drop_points",
            5.0,
            "<=",
            "largest accuracy drop on a declared slice",
            unit="points",
            meaning="accuracy per --slice-column value against the baseline",
        ),
    ),
)


# ---------------------------------------------------------------------------------------------------
# per class


def _class_names(labels: Sequence[str] | None, k: int) -> list[str]:
    if labels is None:
        return [str(i) for i in range(k)]
    if isinstance(labels, (str, bytes)) or len(labels) != k:
        raise ConfigError(
            f"labels must be a sequence of {k} class names (one per class), got {labels!r:.80}; "
            "leave it out to name classes by index."
        )
    return [str(x) for x in labels]


def _ci(k: int, n: int) -> list[float] | None:
    return list(wilson_interval(k, n)) if n > 0 else None


def per_class_table(
    y: Any, pred: Any, *, num_classes: int, labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per class: ``class``, ``support``, ``predicted``, ``precision``, ``precision_ci``,
    ``recall``, ``recall_ci`` and ``f1``.

    Precision is TP / predicted and recall TP / support, each with a two-sided 95% Wilson interval on
    those counts; F1 = 2·TP / (support + predicted). A class never predicted has precision None (and
    interval None), a class absent from ``y`` has recall None, and F1 is None only when both are zero.
    """
    k = _check_positive_int(num_classes, "num_classes")
    names = _class_names(labels, k)
    truth = _as_labels_1d(y, "y")
    guess = _as_labels_1d(pred, "pred")
    for name, arr in (("y", truth), ("pred", guess)):
        if arr.max() >= k:
            raise DataError(
                f"{name} holds label {int(arr.max())}, out of range for {k} classes "
                f"(labels must be in [0, {k - 1}])."
            )
    if len(truth) != len(guess):
        raise DataError(f"y has {len(truth)} labels but pred has {len(guess)}; pass one prediction per item.")
    tp = np.bincount(truth[truth == guess], minlength=k)
    support = np.bincount(truth, minlength=k)
    predicted = np.bincount(guess, minlength=k)
    rows = []
    for c in range(k):
        t, s, p = int(tp[c]), int(support[c]), int(predicted[c])
        rows.append(
            {
                "class": names[c],
                "support": s,
                "predicted": p,
                "precision": t / p if p else None,
                "precision_ci": _ci(t, p),
                "recall": t / s if s else None,
                "recall_ci": _ci(t, s),
                "f1": 2.0 * t / (s + p) if s + p else None,
            }
        )
    return rows


def _recall_replicates(
    y: np.ndarray, correct: np.ndarray, k: int, *, n_resamples: int, seed: int
) -> np.ndarray:
    """Per-class recall drop (points) per paired resample; NaN where a class is absent, shape (B, K)."""
    out = np.empty((n_resamples, k))
    done = 0
    for idx in _index_chunks(len(y), n_resamples, seed):
        support = _grouped_sums(idx, y, None, k)
        diff = _grouped_sums(idx, y, correct, k)  # Σ (correct_base − correct_cand) per class
        with np.errstate(invalid="ignore", divide="ignore"):
            out[done : done + idx.shape[0]] = 100.0 * diff / np.where(support > 0, support, np.nan)
        done += idx.shape[0]
    return out


def _cap_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows, or the ``MAX_DETAIL_ROWS`` with the largest ``key`` (None last) when there are more."""
    if len(rows) <= MAX_DETAIL_ROWS:
        return rows
    ranked = sorted(rows, key=lambda r: -np.inf if r[key] is None else r[key], reverse=True)
    return ranked[:MAX_DETAIL_ROWS]


def slice_evidence(
    y: Any,
    logits_base: Any,
    logits_cand: Any,
    *,
    num_classes: int,
    labels: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    min_support: int = 30,
) -> dict[str, Measurement]:
    """``slices.worst_class_recall`` and ``slices.worst_class_drop`` of the candidate (metrics.md 5.5).

    Worst-class recall is the candidate's lowest recall over classes present in ``y`` (the first such
    class on ties), with its Wilson interval; details hold the candidate's per-class table, each row
    with ``baseline_recall`` and ``recall_drop_points``. Worst-class drop is
    max_k 100·(recall_base,k − recall_cand,k); its interval takes the max drop in each of
    ``n_resamples`` paired resamples (classes absent from a resample are left out of its max) and their
    2.5/97.5 percentiles. Classes with support below ``min_support`` are listed as ``small_classes``.
    """
    truth, zb, zc = _paired_inputs(y, logits_base, logits_cand, num_classes=num_classes)
    k = zb.shape[1]
    names = _class_names(labels, k)
    reps = _check_positive_int(n_resamples, "n_resamples")
    rng_seed = _check_seed(seed)
    floor = _check_positive_int(min_support, "min_support")
    pred_b, pred_c = zb.argmax(axis=1), zc.argmax(axis=1)
    table_b = per_class_table(truth, pred_b, num_classes=k, labels=names)
    table_c = per_class_table(truth, pred_c, num_classes=k, labels=names)

    present = [c for c in range(k) if table_c[c]["support"] > 0]
    drops: dict[int, float] = {}
    for c in range(k):
        row = table_c[c]
        rb, rc = table_b[c]["recall"], row["recall"]
        row["baseline_recall"] = rb
        row["recall_drop_points"] = None if rb is None else 100.0 * (rb - rc)
        if rb is not None:
            drops[c] = 100.0 * (rb - rc)
    worst = min(present, key=lambda c: (table_c[c]["recall"], c))
    worst_row = table_c[worst]
    per_class = _cap_rows(table_c, "recall_drop_points")
    worst_recall = measure(
        "slices.worst_class_recall",
        worst_row["recall"],
        tuple(worst_row["recall_ci"]),
        per_class=per_class,
        worst_class=names[worst],
        support=worst_row["support"],
        **({"per_class_truncated_from": k} if len(per_class) < k else {}),
    )

    worst_drop = max(present, key=lambda c: (drops[c], -c))
    correct_diff = (pred_b == truth).astype(np.float64) - (pred_c == truth).astype(np.float64)
    replicates = np.nanmax(
        _recall_replicates(truth, correct_diff, k, n_resamples=reps, seed=rng_seed), axis=1
    )
    ranked = sorted(present, key=lambda c: -drops[c])[:MAX_DETAIL_ROWS]
    small = [names[c] for c in range(k) if table_c[c]["support"] < floor]
    details: dict[str, Any] = {
        "class": names[worst_drop],
        "per_class_drop_points": {names[c]: drops[c] for c in ranked},
        "small_classes": small[:MAX_DETAIL_ROWS],
        "min_support": floor,
        "n": len(truth),
        "n_resamples": reps,
    }
    if len(small) > MAX_DETAIL_ROWS:
        details["small_classes_total"] = len(small)
    if all(table_c[c]["support"] < floor for c in present):
        details["note"] = "classes below min_support: interval is wide"
    return {
        "slices.worst_class_recall": worst_recall,
        "slices.worst_class_drop": measure(
            "slices.worst_class_drop", drops[worst_drop], _percentile_interval(replicates), **details
        ),
    }


# ---------------------------------------------------------------------------------------------------
# user slices


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _slice_values(column: str, values: Any, n: int) -> tuple[np.ndarray, list[str]]:
    """Each item's slice label (str) and the labels in display order (numeric columns by value, many
    distinct values cut into quantile bins, "missing" last)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"slice column {column!r} has shape {arr.shape} but there are {n} test items; "
            "pass one value per test item."
        )
    numeric = np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.bool_)
    if not numeric:
        labels = np.array([str(v) for v in arr.tolist()], dtype=object)
        return labels, sorted(set(labels.tolist()))
    x = arr.astype(np.float64)
    missing = ~np.isfinite(x)
    finite = x[~missing]
    out = np.full(n, "missing", dtype=object)
    tail = ["missing"] if missing.any() else []
    distinct = np.unique(arr[~missing])
    if len(distinct) <= MAX_DISTINCT_VALUES:
        out[~missing] = [str(v) for v in arr[~missing].tolist()]
        return out, [str(v) for v in distinct.tolist()] + tail
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, N_QUANTILE_BINS + 1)))
    nb = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, finite, side="right") - 1, 0, nb - 1)
    names = [f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{']' if i == nb - 1 else ')'}" for i in range(nb)]
    out[~missing] = [names[i] for i in idx]
    return out, [name for i, name in enumerate(names) if np.any(idx == i)] + tail


def user_slice_evidence(
    y: Any,
    logits_base: Any,
    logits_cand: Any,
    slices: Mapping[str, Any],
    *,
    min_support: int = 30,
) -> dict[str, Measurement]:
    """``slices.worst_slice_drop``: the largest accuracy drop against the baseline over user slices.

    ``slices`` maps a column name to one value per test item (strings or numbers); each distinct value
    is a slice, except that numeric columns with more than 10 distinct values are cut into 4 quantile
    bins labelled "[lo, hi)" (the last "[lo, hi]"; non-finite values form the slice "missing"). The
    value is max 100·(acc_base − acc_cand) over slices with n >= ``min_support``; details list every
    slice (accuracy with Wilson interval, baseline accuracy, drop, status) and the worst one. UNKNOWN
    when no slice reaches ``min_support``.
    """
    truth, zb, zc = _paired_inputs(y, logits_base, logits_cand, num_classes=None)
    floor = _check_positive_int(min_support, "min_support")
    if not isinstance(slices, Mapping):
        raise ConfigError(f"slices must map a column name to per-item values, got {type(slices).__name__}.")
    n = len(truth)
    columns = {str(name): _slice_values(str(name), values, n) for name, values in slices.items()}
    correct_b = zb.argmax(axis=1) == truth
    correct_c = zc.argmax(axis=1) == truth
    rows: list[dict[str, Any]] = []
    for column, (labels, order) in columns.items():
        for value in order:
            mask = labels == value
            size = int(mask.sum())
            k_c, k_b = int(correct_c[mask].sum()), int(correct_b[mask].sum())
            rows.append(
                {
                    "column": column,
                    "value": value,
                    "n": size,
                    "accuracy": k_c / size,
                    "accuracy_ci": list(wilson_interval(k_c, size)),
                    "baseline_accuracy": k_b / size,
                    "drop_points": 100.0 * (k_b - k_c) / size,
                    "status": "ok" if size >= floor else "unknown: n < min_support",
                }
            )
    ok = [r for r in rows if r["status"] == "ok"]
    shown = rows
    if (
        len(rows) > MAX_DETAIL_ROWS
    ):  # keep the measured slices with the largest drops, then the largest others
        shown = sorted(rows, key=lambda r: (r["status"] != "ok", -r["drop_points"] if r in ok else -r["n"]))
        shown = shown[:MAX_DETAIL_ROWS]
    extra: dict[str, Any] = {"min_support": floor, "n": n}
    if len(shown) < len(rows):
        extra["slices_total"] = len(rows)
    if not ok:
        why = (
            "no slice columns given; pass slices={column: per-item values}"
            if not rows
            else f"no slice has at least min_support={floor} test items (largest: "
            f"{max((r['n'] for r in rows), default=0)}); pass more test items or coarser slice columns"
        )
        return {
            "slices.worst_slice_drop": measure(
                "slices.worst_slice_drop", None, reason=why, slices=shown, **extra
            )
        }
    worst = max(ok, key=lambda r: r["drop_points"])
    return {
        "slices.worst_slice_drop": measure(
            "slices.worst_slice_drop",
            worst["drop_points"],
            slices=shown,
            worst={"column": worst["column"], "value": worst["value"]},
            **extra,
        )
    }
