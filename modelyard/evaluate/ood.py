"""Out-of-distribution (OOD) detection: scores, metrics, evidence and the serving rule.

Conventions follow ``/work/shared/reference/metrics.md`` 5.2. Every score s is "larger = more OOD"
(pytorch-ood's convention); logits z are an (n, K) array:

- MSP: s = −max_k softmax(z)_k.  Energy: s = −T·logsumexp(z / T), T = 1 (Liu et al. 2020).
- Max-logit: s = −max_k z_k.  kNN (embedders): s = −(k-th largest cosine to a reference set).
- AUROC has OOD as the positive class with score s: P(s_OOD > s_ID) + ½·P(tie) (Mann–Whitney).
- AUPR-In is average precision with ID positive and score −s; AUPR-Out with OOD positive and score s.
- FPR@95TPR has ID as the positive class (ODIN convention): the threshold τ on s keeps the smallest
  fraction of ID items with s ≤ τ that is ≥ 0.95; FPR is the fraction of OOD items with s ≤ τ.
  An input is flagged OOD when s > τ, which is how the server applies ``ood_threshold``.

Scores and metrics are pure functions that validate their inputs (``DataError`` for bad arrays,
``ConfigError`` for bad options) and compute in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy.special import logsumexp

from modelyard.data.ood_sets import check_ood_inputs
from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.checkspec import CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.metrics import _as_embeddings, _unit_rows, softmax
from modelyard.evaluate.stats import _check_positive_int, _check_seed

__all__ = [
    "SCORES",
    "aupr_in",
    "aupr_out",
    "auroc",
    "check_ood_inputs",
    "detection_error",
    "embedding_ood_evidence",
    "energy_score",
    "fpr_at_tpr",
    "knn_score",
    "maxlogit_score",
    "msp_score",
    "ood_evidence",
    "ood_threshold",
]

MIN_ITEMS = 10  # fewer ID or OOD items than this make the OOD measurements UNKNOWN
TPR_TARGET = 0.95
HIST_BINS = 30

CHECKS = declare(
    CheckSpec(
        "ood.auroc",
        "fraction",
        "AUROC separating out-of-distribution from test inputs (OOD positive)",
        "higher",
        needs=("ood",),
    ),
    CheckSpec(
        "ood.fpr95",
        "fraction",
        "fraction of OOD inputs accepted at the threshold keeping 95% of ID (ID positive)",
        "lower",
        needs=("ood",),
    ),
    CheckSpec(
        "ood.auroc_drop",
        "points",
        "baseline OOD AUROC minus candidate OOD AUROC, percentage points",
        "lower",
        needs=("ood",),
        gate=GateSpec(
            "ood_auroc_drop",
            "robustness.max_ood_auroc_drop_points",
            5.0,
            "<=",
            "drop in out-of-distribution detection AUROC",
            unit="points",
            meaning="out-of-distribution detection AUROC",
        ),
    ),
)
_SIM_BLOCK_ROWS = 1024  # kNN similarities are computed this many query rows at a time
_MAX_WEIGHT_ENTRIES = 4_000_000  # bootstrap weight matrices are drawn in chunks of this many entries


# ---------------------------------------------------------------------------------------------------
# validation


def _as_rows(x: Any, name: str, *, what: str = "logits", allow_empty: bool = False) -> np.ndarray:
    """A finite float64 (n, K) array, K >= 1; n = 0 only with ``allow_empty``."""
    try:
        z = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be an (n, K) array of {what}, could not convert it: {exc}.") from exc
    if z.ndim != 2 or z.shape[1] == 0:
        raise DataError(f"{name} must be an (n, K) array of {what} with K >= 1, got shape {z.shape}.")
    if z.shape[0] == 0 and not allow_empty:
        raise DataError(f"{name} is empty (shape {z.shape}); pass at least one item.")
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise DataError(f"{name} contains NaN or inf in {bad} rows; check the model outputs.")
    return z


def _as_scores(x: Any, name: str) -> np.ndarray:
    try:
        s = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a 1-d array of scores, could not convert it: {exc}.") from exc
    if s.ndim != 1 or s.size == 0:
        raise DataError(f"{name} must be a non-empty 1-d array of scores, got shape {s.shape}.")
    if not np.isfinite(s).all():
        raise DataError(f"{name} contains {int((~np.isfinite(s)).sum())} NaN or inf scores; fix them first.")
    return s


def _check_tpr(tpr: Any) -> float:
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < float(tpr) <= 1.0:
        raise ConfigError(f"tpr must be a fraction in (0, 1], got {tpr!r}; the default is 0.95.")
    return float(tpr)


def _check_temperature(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not float(t) > 0.0 or not np.isfinite(t):
        raise ConfigError(f"T must be a positive finite temperature, got {t!r}; the default is 1.")
    return float(t)


# ---------------------------------------------------------------------------------------------------
# scores (larger = more OOD)


def msp_score(logits: Any) -> np.ndarray:
    """s = −max_k softmax(z)_k per row (metrics.md 5.2), shape (n,), float64; in [−1, −1/K]."""
    return np.asarray(-softmax(_as_rows(logits, "logits")).max(axis=1))


def energy_score(logits: Any, *, T: float = 1.0) -> np.ndarray:
    """Energy s = −T·logsumexp(z / T) per row (metrics.md 5.2, Liu et al. 2020), shape (n,), float64."""
    t = _check_temperature(T)
    return np.asarray(-t * logsumexp(_as_rows(logits, "logits") / t, axis=1), dtype=np.float64)


def maxlogit_score(logits: Any) -> np.ndarray:
    """s = −max_k z_k per row (metrics.md 5.2), shape (n,), float64."""
    return np.asarray(-_as_rows(logits, "logits").max(axis=1))


SCORES: dict[str, Callable[[Any], np.ndarray]] = {
    "msp": msp_score,
    "energy": energy_score,
    "maxlogit": maxlogit_score,
}


def knn_score(emb: Any, reference_emb: Any, *, k: int = 1) -> np.ndarray:
    """s = −(k-th largest cosine similarity of each row of ``emb`` to the rows of ``reference_emb``).

    Shape (n,), float64 in [−1, 1]; k = 1 is minus the cosine to the nearest reference item. An
    all-zero row has cosine 0 with everything. Pass the same model's embeddings for both arrays.
    """
    e = _unit_rows(_as_embeddings(emb, "emb"))
    r = _unit_rows(_as_embeddings(reference_emb, "reference_emb"))
    if e.shape[1] != r.shape[1]:
        raise DataError(
            f"emb has dimension {e.shape[1]} but reference_emb has {r.shape[1]}; embed both with the same model."
        )
    kk = _check_positive_int(k, "k")
    if kk > r.shape[0]:
        raise ConfigError(f"k={kk} is larger than the {r.shape[0]} reference items; use k <= {r.shape[0]}.")
    out = np.empty(e.shape[0], dtype=np.float64)
    for start in range(0, e.shape[0], _SIM_BLOCK_ROWS):
        sim = e[start : start + _SIM_BLOCK_ROWS] @ r.T
        kth = np.partition(sim, sim.shape[1] - kk, axis=1)[:, sim.shape[1] - kk]
        out[start : start + len(kth)] = -np.clip(kth, -1.0, 1.0)
    return out


# ---------------------------------------------------------------------------------------------------
# metrics


def _labelled(score_id: Any, score_ood: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sid = _as_scores(score_id, "score_id")
    sood = _as_scores(score_ood, "score_ood")
    scores = np.concatenate([sid, sood])
    is_ood = np.concatenate([np.zeros(len(sid), dtype=np.int64), np.ones(len(sood), dtype=np.int64)])
    return sid, sood, scores, is_ood


def auroc(score_id: Any, score_ood: Any) -> float:
    """AUROC with OOD positive (metrics.md 5.2): P(s_OOD > s_ID) + ½·P(tie), via sklearn's roc_auc_score."""
    from sklearn.metrics import roc_auc_score

    _, _, scores, is_ood = _labelled(score_id, score_ood)
    return float(roc_auc_score(is_ood, scores))


def aupr_in(score_id: Any, score_ood: Any) -> float:
    """AUPR-In (metrics.md 5.2): average precision with ID positive and score −s (sklearn, step-wise)."""
    from sklearn.metrics import average_precision_score

    _, _, scores, is_ood = _labelled(score_id, score_ood)
    return float(average_precision_score(1 - is_ood, -scores))


def aupr_out(score_id: Any, score_ood: Any) -> float:
    """AUPR-Out (metrics.md 5.2): average precision with OOD positive and score s (sklearn, step-wise)."""
    from sklearn.metrics import average_precision_score

    _, _, scores, is_ood = _labelled(score_id, score_ood)
    return float(average_precision_score(is_ood, scores))


def _threshold(sid: np.ndarray, tpr: float) -> float:
    """Smallest τ among the ID scores with #(s_ID ≤ τ)/n ≥ tpr (the first ROC point reaching ``tpr``)."""
    ordered = np.sort(sid)
    rates = np.arange(1, len(ordered) + 1, dtype=np.float64) / len(ordered)
    m = int(np.searchsorted(rates, tpr, side="left"))
    return float(ordered[min(m, len(ordered) - 1)])


def fpr_at_tpr(score_id: Any, score_ood: Any, *, tpr: float = 0.95) -> tuple[float, float]:
    """FPR at ``tpr`` with ID positive (metrics.md 5.2, ODIN convention); returns ``(fpr, tau)``.

    τ is the threshold on s at the smallest achievable ID TPR ≥ ``tpr`` (TPR = fraction of ID with
    s ≤ τ); FPR is the fraction of OOD items with s ≤ τ, i.e. accepted as ID. Flag OOD when s > τ.
    """
    t = _check_tpr(tpr)
    sid = _as_scores(score_id, "score_id")
    sood = _as_scores(score_ood, "score_ood")
    tau = _threshold(sid, t)
    return float(np.mean(sood <= tau)), tau


def detection_error(score_id: Any, score_ood: Any) -> float:
    """Detection error (metrics.md 5.2): min over thresholds of ½(FNR + FPR), at most 0.5."""
    from sklearn.metrics import roc_curve

    _, _, scores, is_ood = _labelled(score_id, score_ood)
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return float(np.min(0.5 * (1.0 - tpr + fpr)))


def ood_threshold(score_id_val: Any, *, tpr: float = 0.95) -> float:
    """τ on s that keeps at least ``tpr`` of the ID validation items (s ≤ τ); serve "flag OOD when s > τ".

    The same τ as ``fpr_at_tpr`` computes on these ID scores (metrics.md 5.2).
    """
    return _threshold(_as_scores(score_id_val, "score_id_val"), _check_tpr(tpr))


# ---------------------------------------------------------------------------------------------------
# bootstrap of AUROC, resampling ID and OOD items separately


def _auroc_weighted(sid: np.ndarray, sood: np.ndarray, w_id: np.ndarray, w_ood: np.ndarray) -> np.ndarray:
    """AUROC (OOD positive, ties ½) of items repeated ``w`` times; w_* have shape (r, n_*); returns (r,)."""
    order = np.argsort(sid, kind="stable")
    ordered = sid[order]
    left = np.searchsorted(ordered, sood, side="left")
    right = np.searchsorted(ordered, sood, side="right")
    cum = np.zeros((w_id.shape[0], len(sid) + 1), dtype=np.float64)
    np.cumsum(w_id[:, order], axis=1, out=cum[:, 1:])
    below = cum[:, left]
    wins = below + 0.5 * (cum[:, right] - below)
    return np.asarray((wins * w_ood).sum(axis=1) / (cum[:, -1] * w_ood.sum(axis=1)), dtype=np.float64)


def _bootstrap_auroc(
    pairs: list[tuple[np.ndarray, np.ndarray]], *, n_resamples: int, seed: int
) -> list[np.ndarray]:
    """AUROC replicates for each (score_id, score_ood) pair, all with the same ID and OOD resamples."""
    n_id, n_ood = len(pairs[0][0]), len(pairs[0][1])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _MAX_WEIGHT_ENTRIES // (n_id + n_ood)))
    out = [np.empty(n_resamples, dtype=np.float64) for _ in pairs]
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        w_id = rng.multinomial(n_id, np.full(n_id, 1.0 / n_id), size=r).astype(np.float64)
        w_ood = rng.multinomial(n_ood, np.full(n_ood, 1.0 / n_ood), size=r).astype(np.float64)
        for reps, (sid, sood) in zip(out, pairs, strict=True):
            reps[done : done + r] = _auroc_weighted(sid, sood, w_id, w_ood)
        done += r
    return out


def _interval(reps: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------
# evidence

Scorer = Callable[[np.ndarray], np.ndarray]


def _as_sets(x: Any, name: str, what: str) -> dict[str, np.ndarray]:
    if not isinstance(x, Mapping):
        return {"ood": _as_rows(x, name, what=what, allow_empty=True)}
    return {str(k): _as_rows(v, f"{name}[{k!r}]", what=what, allow_empty=True) for k, v in x.items()}


def _paired(
    id_b: Any, ood_b: Any, id_c: Any, ood_c: Any, *, prefix: str, what: str
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Validated ID arrays and OOD sets of both models, on the same items."""
    a_b = _as_rows(id_b, f"{prefix}_id_base", what=what, allow_empty=True)
    a_c = _as_rows(id_c, f"{prefix}_id_cand", what=what, allow_empty=True)
    if a_b.shape[0] != a_c.shape[0]:
        raise DataError(
            f"{prefix}_id_base has {a_b.shape[0]} rows but {prefix}_id_cand has {a_c.shape[0]}; "
            "run both models on the same test items."
        )
    sets_b, sets_c = _as_sets(ood_b, f"{prefix}_ood_base", what), _as_sets(ood_c, f"{prefix}_ood_cand", what)
    if set(sets_b) != set(sets_c):
        raise DataError(
            f"the baseline's OOD {what} cover sets {sorted(sets_b)} but the candidate's cover "
            f"{sorted(sets_c)}; run both models on the same OOD sets."
        )
    sets_c = {key: sets_c[key] for key in sets_b}
    for key, xb in sets_b.items():
        if xb.shape[0] != sets_c[key].shape[0]:
            raise DataError(
                f"OOD set {key!r} has {xb.shape[0]} baseline rows but {sets_c[key].shape[0]} candidate "
                "rows; run both models on the same items."
            )
    return a_b, sets_b, a_c, sets_c


def _scored(fn: Scorer, x: np.ndarray) -> np.ndarray:
    return fn(x) if len(x) else np.empty(0, dtype=np.float64)


def _score_row(sid: np.ndarray, sood: np.ndarray) -> dict[str, float]:
    return {
        "auroc": auroc(sid, sood),
        "aupr_in": aupr_in(sid, sood),
        "aupr_out": aupr_out(sid, sood),
        "fpr95": fpr_at_tpr(sid, sood, tpr=TPR_TARGET)[0],
    }


def _serving_rule(score: str, sval: np.ndarray | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The served OOD rule: τ fitted on ID items of the fit part (``sval``), never on the test items the
    evidence is measured on; without enough of them there is no threshold, and the reason says why."""
    rule: dict[str, Any] = {
        "score": score,
        **extra,
        "threshold": None,
        "flag": "score > threshold",
        "tpr_target": TPR_TARGET,
        "fitted_on": None if sval is None else extra.get("fitted_on", "calibration split"),
        "n_fit": 0 if sval is None else len(sval),
    }
    if sval is None:
        rule["reason"] = (
            "no fit items to fit the threshold on (the test split is never used for it): "
            "declare a calibration split or give more training data"
        )
    elif len(sval) < MIN_ITEMS:
        rule["reason"] = f"only {len(sval)} ID items to fit the threshold on; need at least {MIN_ITEMS}"
    else:
        rule["threshold"] = ood_threshold(sval, tpr=TPR_TARGET)
    return rule


def _evidence(
    score: str,
    fn_b: Scorer,
    fn_c: Scorer,
    data: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]],
    x_val: np.ndarray | None,
    *,
    rule_extra: dict[str, Any],
    table: Callable[[], dict[str, dict[str, float]]] | None,
    n_resamples: int,
    seed: int,
) -> tuple[dict[str, Measurement], dict[str, Any]]:
    reps, rng_seed = _check_positive_int(n_resamples, "n_resamples"), _check_seed(seed)
    x_id_b, sets_b, x_id_c, sets_c = data
    sid_c = _scored(fn_c, x_id_c)
    rule = _serving_rule(score, None if x_val is None else _scored(fn_c, x_val), rule_extra)
    n_id, n_ood = len(sid_c), sum(len(v) for v in sets_c.values())
    counts: dict[str, Any] = {"n_id": n_id, "n_ood": n_ood, "score": score}
    reason = None
    if not sets_c:
        reason = "no OOD set was given; pass at least one set of out-of-distribution inputs"
    elif n_id < MIN_ITEMS or n_ood < MIN_ITEMS:
        reason = f"too few items: {n_id} ID and {n_ood} OOD; need at least {MIN_ITEMS} of each"
    if reason is not None:
        names = ("ood.auroc", "ood.fpr95", "ood.auroc_drop")
        return {name: measure(name, None, reason=reason, **counts) for name in names}, rule
    sid_b = _scored(fn_b, x_id_b)
    sood_b = np.concatenate([_scored(fn_b, x) for x in sets_b.values()])
    s_sets_c = {name: _scored(fn_c, x) for name, x in sets_c.items()}
    sood_c = np.concatenate(list(s_sets_c.values()))
    auc_b, auc_c = auroc(sid_b, sood_b), auroc(sid_c, sood_c)
    reps_b, reps_c = _bootstrap_auroc([(sid_b, sood_b), (sid_c, sood_c)], n_resamples=reps, seed=rng_seed)
    edges = np.histogram_bin_edges(np.concatenate([sid_c, sood_c]), bins=HIST_BINS)
    method = "percentile bootstrap, ID and OOD resampled separately"
    per_set = {
        name: {"n": len(s), "auroc": auroc(sid_c, s), "fpr95": fpr_at_tpr(sid_c, s)[0]}
        if len(s)
        else {"n": 0}
        for name, s in s_sets_c.items()
    }
    out = {
        "ood.auroc": measure(
            "ood.auroc",
            auc_c,
            _interval(reps_c),
            positive="OOD",
            scores=table() if table is not None else {score: _score_row(sid_c, sood_c)},
            per_set=per_set,
            histogram={
                "edges": edges.tolist(),
                "id": np.histogram(sid_c, bins=edges)[0].tolist(),
                "ood": np.histogram(sood_c, bins=edges)[0].tolist(),
            },
            baseline_auroc=auc_b,
            bootstrap={"n_resamples": reps, "seed": rng_seed, "method": method},
            **counts,
        ),
    }
    fpr, tau = fpr_at_tpr(sid_c, sood_c, tpr=TPR_TARGET)
    served: dict[str, Any] = {"threshold": rule["threshold"], "fitted_on": rule["fitted_on"]}
    if rule["threshold"] is not None:
        served["ood_accepted"] = float(np.mean(sood_c <= rule["threshold"]))
        served["id_flagged"] = float(np.mean(sid_c > rule["threshold"]))
    out["ood.fpr95"] = measure(
        "ood.fpr95",
        fpr,
        positive="ID",
        tpr_target=TPR_TARGET,
        tpr_achieved=float(np.mean(sid_c <= tau)),
        threshold=tau,
        baseline_fpr95=fpr_at_tpr(sid_b, sood_b, tpr=TPR_TARGET)[0],
        at_serving_threshold=served,
        **counts,
    )
    out["ood.auroc_drop"] = measure(
        "ood.auroc_drop",
        100.0 * (auc_b - auc_c),
        _interval(100.0 * (reps_b - reps_c)),
        baseline_auroc=auc_b,
        candidate_auroc=auc_c,
        bootstrap={"n_resamples": reps, "seed": rng_seed, "method": "paired " + method},
        **counts,
    )
    return out, rule


def ood_evidence(
    logits_id_base: Any,
    logits_ood_base: Mapping[str, Any] | Any,
    logits_id_cand: Any,
    logits_ood_cand: Mapping[str, Any] | Any,
    *,
    score: str = "energy",
    logits_val_cand: Any = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Measurement], dict[str, Any]]:
    """OOD measurements of a candidate against the baseline, and the candidate's serving rule.

    ``logits_ood_*`` map an OOD set's name to that set's logits (a bare array counts as one set
    "ood"). Returns ``({"ood.auroc", "ood.fpr95", "ood.auroc_drop"}, rule)`` (metrics.md 5.2):
    AUROC of ``score`` over the pooled OOD sets with a bootstrap interval (ID and OOD resampled
    separately), FPR@95TPR (ID positive) and 100·(AUROC_base − AUROC_cand) with a paired interval.
    The rule is ``{"score", "temperature", "threshold", "flag": "score > threshold", "tpr_target",
    "fitted_on", "n_fit"}``; τ is fitted on ``logits_val_cand`` (the calibration split); without it
    there is no threshold (it is never fitted on test items). Fewer than 10 ID or OOD items make the
    measurements UNKNOWN.
    """
    if score not in SCORES:
        raise ConfigError(f"unknown OOD score {score!r}; choose one of: {', '.join(SCORES)}.")
    data = _paired(
        logits_id_base, logits_ood_base, logits_id_cand, logits_ood_cand, prefix="logits", what="logits"
    )
    z_val = (
        None if logits_val_cand is None else _as_rows(logits_val_cand, "logits_val_cand", allow_empty=True)
    )
    z_id_c, z_sets_c = data[2], data[3]

    def table() -> dict[str, dict[str, float]]:
        pooled = np.concatenate(list(z_sets_c.values()))
        return {name: _score_row(f(z_id_c), f(pooled)) for name, f in SCORES.items()}

    fn = SCORES[score]
    return _evidence(
        score,
        fn,
        fn,
        data,
        z_val,
        rule_extra={"temperature": 1.0},
        table=table,
        n_resamples=n_resamples,
        seed=seed,
    )


def embedding_ood_evidence(
    emb_id_base: Any,
    emb_ood_base: Mapping[str, Any] | Any,
    emb_id_cand: Any,
    emb_ood_cand: Mapping[str, Any] | Any,
    *,
    reference_base: Any,
    reference_cand: Any,
    emb_val_cand: Any = None,
    k: int = 1,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Measurement], dict[str, Any]]:
    """``ood_evidence`` for embedders, with the score "knn_cosine" = ``knn_score`` against each model's
    own embeddings of the training inputs (``reference_base``/``reference_cand``).

    Same measurement names and shapes; the rule is ``{"score": "knn_cosine", "k", "reference":
    "training inputs", "threshold", "flag", "tpr_target", "fitted_on", "n_fit"}``. The ID items must
    not be in the reference set (they would match themselves with cosine 1); nor may ``emb_val_cand``, the
    fit items the threshold is fitted on (none: no threshold).
    """
    kk = _check_positive_int(k, "k")
    ref_b = _as_embeddings(reference_base, "reference_base")
    ref_c = _as_embeddings(reference_cand, "reference_cand")
    data = _paired(emb_id_base, emb_ood_base, emb_id_cand, emb_ood_cand, prefix="emb", what="embeddings")
    e_val = (
        None
        if emb_val_cand is None
        else _as_rows(emb_val_cand, "emb_val_cand", what="embeddings", allow_empty=True)
    )
    return _evidence(
        "knn_cosine",
        lambda e: knn_score(e, ref_b, k=kk),
        lambda e: knn_score(e, ref_c, k=kk),
        data,
        e_val,
        rule_extra={"k": kk, "reference": "training inputs", "fitted_on": "fit items outside the reference"},
        table=None,
        n_resamples=n_resamples,
        seed=seed,
    )
