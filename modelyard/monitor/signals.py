"""The live checks of one window, each computed against the version's reference: the calibrated detectors a reference gives (:class:`Detectors`, cached per reference),
and one function per signal returning a :class:`Signal` (a Measurement of a live check, whether it alarmed
and at which false-alarm rate it was tested, and what moved).

Which signals may alarm, and at which rate, is decided by :mod:`modelyard.monitor.watch`; a signal computed
with ``level=None`` is shown and never alarms (a detector whose reference is too small for the window: with a
reference of fewer than ``REFERENCE_PER_WINDOW`` windows' worth of rows, the false-alarm rate of one
reference strays far from the one asked for; see :mod:`modelyard.monitor.drift_null`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri
from scipy.stats import binomtest, fisher_exact

from modelyard.evaluate.evidence import Measurement, measure
from modelyard.monitor import checks as _declared  # noqa: F401  (declares the live checks' units)
from modelyard.monitor.drift import DEFAULT_RESAMPLES, DriftResult, FeatureShift, Reference
from modelyard.monitor.drift_embed import mmd_test
from modelyard.monitor.drift_output import ood_rate_test
from modelyard.monitor.estimate import MIN_REFERENCE_ROWS as MIN_LABELLED_REFERENCE
from modelyard.monitor.estimate import (
    EstimateResult,
    compare,
    estimate_from_confidences,
    realised_accuracy,
)
from modelyard.monitor.reference import MonitorReference, OODReference, digest_of
from modelyard.monitor.window import WindowRows

__all__ = [
    "Detectors",
    "Signal",
    "detectors",
    "drift_signal",
    "estimate_signal",
    "mmd_signal",
    "ood_signal",
    "realised_signals",
]

MIN_ROWS = 20  # a drift check needs at least this many rows in the window
REFERENCE_PER_WINDOW = 4  # a drift detector alarms only when its reference has this many windows' rows
MMD_MAX_ROWS = 300
MMD_PERMUTATIONS = 200
Z95 = float(ndtri(0.975))
_CACHE_SIZE = 16
_WHAT = {
    "drift.inputs": "input drift",
    "drift.embeddings": "embedding drift",
    "drift.outputs": "output drift",
}


@dataclass(frozen=True)
class Signal:
    """One live check on one window. ``alarm``: None when the signal is shown only (it has no alarm rule, or
    could not alarm on this window: ``why`` says); ``level``: the false-alarm rate it was tested at (its share
    of the window's rate); ``compared_with``: the threshold or offline figure, in words; ``moved``: the
    features that moved, largest first."""

    measurement: Measurement
    alarm: bool | None
    level: float | None
    summary: str
    compared_with: str = ""
    moved: tuple[FeatureShift, ...] = ()

    @property
    def name(self) -> str:
        return self.measurement.name


# ---------------------------------------------------------------------------------------------- detectors


@dataclass
class Detectors:
    """The calibrated detectors of one reference (their null distributions are drawn once per window size
    and kept) and what the other signals need from it."""

    inputs: Reference | None
    embeddings: Reference | None
    outputs: Reference | None
    reference_correct: NDArray[np.bool_] | None
    _standardised: dict[str, tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]] = field(
        default_factory=dict
    )

    def standardised(self, name: str, rows: NDArray[np.float64]) -> tuple[NDArray[Any], NDArray[Any]]:
        """The reference rows of ``name`` (inputs or embeddings) and ``rows``, both standardised with the
        reference's mean and sd (for the MMD test, whose kernel would otherwise follow the widest feature)."""
        ref, mean, sd = self._standardised[name]
        return ref, (rows - mean) / sd


def _reference(rows: NDArray[np.float64], names: Sequence[str], *, detect: bool) -> Reference | None:
    if rows.shape[0] < MIN_ROWS:
        return None
    return Reference(
        rows,
        names,
        categorical=None if detect else (),
        n_resamples=DEFAULT_RESAMPLES,
        seed=0,
        conditional=True,
    )


def _standardise(
    rows: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    mean, sd = rows.mean(axis=0), rows.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (rows - mean) / sd, mean, sd


_DETECTORS: OrderedDict[str, Detectors] = OrderedDict()


def detectors(ref: MonitorReference) -> Detectors:
    """The detectors of ``ref``, built once per reference (by its digest) and cached (the last 16)."""
    key = ref.digest or digest_of(ref)
    if key in _DETECTORS:
        _DETECTORS.move_to_end(key)
        return _DETECTORS[key]
    inputs = embeddings = outputs = None
    correct = None
    std: dict[str, tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]] = {}
    if ref.inputs is not None:
        inputs = _reference(ref.inputs.rows, ref.inputs.feature_names, detect=ref.inputs.kind == "values")
        std["inputs"] = _standardise(ref.inputs.rows)
    if ref.embeddings is not None:
        embeddings = _reference(ref.embeddings.rows, ref.embeddings.projection.names, detect=False)
        std["embeddings"] = _standardise(ref.embeddings.rows)
    p = ref.predictions
    if p is not None and p.predicted.size >= MIN_ROWS:
        outputs = Reference(
            np.column_stack([p.predicted.astype(np.float64), p.confidence]),
            ["predicted_class", "confidence"],
            categorical=[0],
            category_labels={"predicted_class": p.classes},
            n_resamples=DEFAULT_RESAMPLES,
            seed=0,
        )
        if p.labels is not None and p.labels.size >= MIN_LABELLED_REFERENCE:
            correct = p.predicted == p.labels
    made = Detectors(inputs, embeddings, outputs, correct, std)
    _DETECTORS[key] = made
    while len(_DETECTORS) > _CACHE_SIZE:
        _DETECTORS.popitem(last=False)
    return made


# ---------------------------------------------------------------------------------------------- signals


def drift_signal(
    name: str,
    detector: Reference,
    rows: NDArray[np.float64],
    level: float | None,
    alpha: float,
    why: str = "",
) -> Signal:
    """A calibrated max-effect drift check (inputs, embeddings or outputs) of ``rows``."""
    result: DriftResult = detector.check(rows, alpha=level if level is not None else alpha)
    alarm = result.alarm if level is not None else None
    moved = result.moved if result.alarm else ()
    details: dict[str, Any] = {
        "threshold": result.threshold,
        "p_value": result.p_value,
        "level": level,
        "alarm": alarm,
        "window_rows": result.window_size,
        "reference_rows": result.reference_size,
        "method": result.method,
        "features": [{"name": f.name, "effect": f.effect, "detail": f.detail} for f in result.features[:10]],
    }
    if why or result.note:
        details["note"] = why or result.note
    unit = "" if name == "drift.outputs" else " sd"
    text = (
        f"{_WHAT[name]}: max effect {result.statistic:.3g}{unit} vs threshold {result.threshold:.3g}{unit} "
        f"({result.window_size} rows, level {result.alpha:.3g})"
    )
    if moved:
        text += "; moved: " + "; ".join(f"{f.name} {f.effect:.3g} ({f.detail})" for f in moved[:5])
    if level is None:
        text += f" (shown only: {why})"
    return Signal(
        measure(name, result.statistic, **details),
        alarm,
        level,
        text,
        f"threshold {result.threshold:.3g}",
        moved,
    )


def mmd_signal(det: Detectors, name: str, rows: NDArray[np.float64], alpha: float) -> Signal:
    """The MMD test of the window's standardised features against the reference's (shown, never alarms)."""
    ref, win = det.standardised(name, rows)
    r = mmd_test(ref, win, alpha=alpha, n_permutations=MMD_PERMUTATIONS, max_rows=MMD_MAX_ROWS, seed=0)
    m = measure(
        "drift.mmd_p", r.p_value, statistic=r.statistic, bandwidth=r.bandwidth, of=name, method=r.method
    )
    return Signal(
        m, None, None, f"MMD p = {r.p_value:.3g} on the {name} ({r.n_window} rows)", f"alpha {alpha:g}"
    )


def ood_signal(rows: WindowRows, ood: OODReference, level: float) -> Signal:
    """The window's OOD flag rate against the offline rate (Fisher's exact test, one-sided)."""
    flags = np.zeros(rows.ood_rows, dtype=bool)
    flags[: rows.ood_flagged] = True
    r = ood_rate_test(flags, ood.offline_rate, ood.n_offline, alpha=level)
    m = measure(
        "drift.ood_rate",
        r.window_rate,
        flagged=r.n_flagged,
        rows=r.n_window,
        offline_rate=r.offline_rate,
        n_offline=r.n_offline,
        offline_source=ood.rate_source,
        p_value=r.p_value,
        level=level,
        alarm=r.alarm,
        method=r.method,
    )
    offline = f"offline {r.offline_rate:.1%} of {ood.n_offline}"
    text = (
        f"OOD flag rate {r.window_rate:.1%} of {r.n_window} rows vs {r.offline_rate:.1%} offline "
        f"(p = {r.p_value:.3g}, level {level:.3g})"
    )
    return Signal(m, r.alarm, level, text, offline)


def _offline_sd(ref: MonitorReference) -> float:
    a = ref.accuracy
    if a is None:
        return 0.0
    if a.interval is not None:
        return (a.interval[1] - a.interval[0]) / (2.0 * Z95)
    return math.sqrt(a.accuracy * (1.0 - a.accuracy) / a.n) if a.n else 0.0


def _estimate(
    conf: NDArray[np.float64],
    ref: MonitorReference,
    det: Detectors,
    inputs: NDArray[np.float64] | None = None,
) -> EstimateResult:
    """The window's estimated accuracy; with the window's input features (one row per confidence) and the
    reference's for its calibration items, the calibration error is weighted by their density ratio."""
    p = ref.predictions
    a = ref.accuracy
    with_reference = p is not None and det.reference_correct is not None
    weighted = (
        with_reference
        and p is not None
        and p.features is not None
        and inputs is not None
        and inputs.shape[0] == conf.size
        and inputs.shape[1:] == p.features.shape[1:]
    )
    return estimate_from_confidences(
        conf,
        reference_confidences=p.confidence if with_reference and p is not None else None,
        reference_correct=det.reference_correct if with_reference else None,
        offline_accuracy=None if a is None else a.accuracy,
        offline_interval=None if a is None else a.interval,
        inputs=inputs if weighted else None,
        reference_inputs=p.features if weighted and p is not None else None,
    )


def estimate_signal(rows: WindowRows, ref: MonitorReference, det: Detectors, level: float | None) -> Signal:
    """Accuracy estimated from the window's calibrated confidences; alarms when it is significantly below the
    offline accuracy (one-sided z-test with the estimate's and the offline figure's standard errors)."""
    e = _estimate(rows.confidence, ref, det, rows.inputs)
    lo, hi = e.interval
    details: dict[str, Any] = {"rows": e.n, "method": e.method, "calibration_bias": e.calibration_bias}
    alarm: bool | None = None
    compared = "no offline accuracy"
    text = f"estimated accuracy {e.estimated_accuracy:.1%} [{lo:.1%}, {hi:.1%}] over {e.n} rows"
    if ref.accuracy is not None:
        off = ref.accuracy.accuracy
        sd = math.hypot(max(e.estimated_accuracy - lo, hi - e.estimated_accuracy) / Z95, _offline_sd(ref))
        p_value = (
            float(ndtr((e.estimated_accuracy - off) / sd)) if sd > 0 else float(e.estimated_accuracy >= off)
        )
        alarm = p_value <= level if level is not None else None
        details.update(
            offline_accuracy=off,
            offline_interval=ref.accuracy.interval,
            drop_pp=e.drop_pp,
            p_value=p_value,
            level=level,
            alarm=alarm,
        )
        compared = f"offline {off:.1%}"
        text += f" vs {off:.1%} offline (p = {p_value:.3g})"
    return Signal(
        measure("accuracy.estimated", e.estimated_accuracy, e.interval, **details),
        alarm,
        level,
        text,
        compared,
    )


def realised_signals(
    rows: WindowRows, ref: MonitorReference, det: Detectors, level: float | None
) -> list[Signal]:
    """The accuracy of the window's labelled rows (alarm: significantly below offline, Fisher's exact test
    one-sided, or the exact binomial test when the offline count is unknown) and the gap to the estimate."""
    correct = rows.labelled_correct
    r = realised_accuracy(correct)
    k, n = int(correct.sum()), int(correct.size)
    details: dict[str, Any] = {"rows": n, "method": r.method}
    alarm: bool | None = None
    compared = "no offline accuracy"
    text = f"realised accuracy {r.accuracy:.1%} [{r.interval[0]:.1%}, {r.interval[1]:.1%}] over {n} labelled rows"
    a = ref.accuracy
    if a is not None:
        if a.n:
            k_off = round(a.accuracy * a.n)
            p_value = float(fisher_exact([[k, n - k], [k_off, a.n - k_off]], alternative="less").pvalue)
        else:
            p_value = (
                float(binomtest(k, n, a.accuracy, alternative="less").pvalue) if 0 < a.accuracy < 1 else 1.0
            )
        alarm = p_value <= level if level is not None else None
        details.update(offline_accuracy=a.accuracy, n_offline=a.n, p_value=p_value, level=level, alarm=alarm)
        compared = f"offline {a.accuracy:.1%}"
        text += f" vs {a.accuracy:.1%} offline (p = {p_value:.3g})"
    out = [
        Signal(measure("accuracy.realised", r.accuracy, r.interval, **details), alarm, level, text, compared)
    ]
    gap = compare(_estimate(rows.labelled_confidence, ref, det), r)
    out.append(
        Signal(
            measure(
                "accuracy.estimate_gap",
                gap.gap_pp,
                estimated=gap.estimated_accuracy,
                realised=gap.realised_accuracy,
                covered=gap.covered,
                rows=n,
            ),
            None,
            None,
            f"realised minus estimated accuracy: {gap.gap_pp:+.1f} points ({'inside' if gap.covered else 'outside'} the estimate's interval)",
            "",
        )
    )
    return out
