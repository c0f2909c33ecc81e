"""Drift of a model's outputs, and of its out-of-distribution flag rate.

- :class:`OutputReference`: the predicted-class distribution (Jensen–Shannon distance, base 2) and the
  confidence, i.e. the largest probability (standardised Wasserstein-1), of a window of probabilities against
  the reference predictions, combined as their max with the same calibrated threshold as feature drift
  (:mod:`modelyard.monitor.drift`). Output drift is cheap and needs no access to inputs, but it misses much
  input drift (``/work/shared/reference/monitoring.md`` 6): run it beside the feature or embedding check.
- :func:`ood_rate_test`: the window's rate of OOD flags against the rate the same score and threshold gave
  offline. With the offline count known (``n_offline``) it is Fisher's exact test, one-sided, which accounts
  for the offline rate's own sampling error; without it, the exact one-sided binomial test against the
  offline rate taken as exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest, fisher_exact

from modelyard.errors import ConfigError, DataError
from modelyard.monitor.drift import DEFAULT_RESAMPLES, DriftResult, Reference
from modelyard.monitor.drift_inputs import as_flags, as_probs, check_alpha, check_int

__all__ = ["OODRateResult", "OutputReference", "ood_rate_test"]


class OutputReference:
    """Reference predictions (n_ref x K probabilities) to check windows of a model's outputs against."""

    def __init__(
        self,
        probs: Any,
        *,
        class_names: Sequence[str] | None = None,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
    ) -> None:
        p = as_probs(probs, "reference probabilities")
        self.n_classes = int(p.shape[1])
        names = (
            [str(c) for c in class_names]
            if class_names is not None
            else [f"class {i}" for i in range(self.n_classes)]
        )
        if len(names) != self.n_classes:
            raise DataError(
                f"got {len(names)} class names for {self.n_classes} probability columns; pass one name per column."
            )
        self.class_names = tuple(names)
        self.reference = Reference(
            _outputs(p),
            ["predicted_class", "confidence"],
            categorical=[0],
            category_labels={"predicted_class": self.class_names},
            n_resamples=n_resamples,
            seed=seed,
        )

    def check(self, probs: Any, *, alpha: float = 0.05) -> DriftResult:
        """Compare a window of probabilities (rows x K, same class order) with the reference predictions."""
        p = as_probs(probs, "window probabilities")
        if p.shape[1] != self.n_classes:
            raise DataError(
                f"the window has {p.shape[1]} probability columns but the reference has {self.n_classes}; "
                "pass outputs of the same model, classes in the same order."
            )
        return self.reference.check(_outputs(p), alpha=alpha)


def _outputs(p: np.ndarray) -> np.ndarray:
    return np.column_stack([p.argmax(axis=1).astype(np.float64), p.max(axis=1)])


@dataclass(frozen=True)
class OODRateResult:
    """The window's OOD-flag rate against the offline rate: alarm when it is significantly higher."""

    window_rate: float
    offline_rate: float
    n_window: int
    n_flagged: int
    n_offline: int | None
    p_value: float
    alarm: bool
    alpha: float
    method: str

    def summary(self) -> str:
        verdict = "OOD rate up" if self.alarm else "OOD rate as offline"
        return (
            f"{verdict}: {self.window_rate:.1%} of {self.n_window} rows flagged vs {self.offline_rate:.1%} offline "
            f"(p = {self.p_value:.3g}, alpha = {self.alpha:g})"
        )


def ood_rate_test(
    flags_window: Any, offline_rate: float, n_offline: int | None, *, alpha: float = 0.05
) -> OODRateResult:
    """One-sided test that the window's OOD-flag rate exceeds ``offline_rate``, measured offline on
    ``n_offline`` rows with the same score and threshold (None: treat the offline rate as exact)."""
    flags = as_flags(flags_window, "flags_window")
    a = check_alpha(alpha)
    if (
        isinstance(offline_rate, bool)
        or not isinstance(offline_rate, int | float)
        or not 0.0 <= offline_rate <= 1.0
    ):
        raise ConfigError(f"offline_rate must be a fraction in [0, 1], got {offline_rate!r}.")
    k, n = int(flags.sum()), int(flags.size)
    rate = float(offline_rate)
    if n_offline is None:
        p_value = (
            float(binomtest(k, n, rate, alternative="greater").pvalue)
            if 0.0 < rate < 1.0
            else float(rate == 1.0 or k == 0)
        )
        method = "exact one-sided binomial test against the offline rate (taken as exact)"
        n_off: int | None = None
    else:
        n_off = check_int(n_offline, "n_offline", minimum=1)
        k_off = round(rate * n_off)
        table = [[k, n - k], [k_off, n_off - k_off]]
        p_value = float(fisher_exact(table, alternative="greater").pvalue)
        method = (
            f"Fisher's exact test, one-sided (window rate > offline rate), offline {k_off} of {n_off} flagged"
        )
    return OODRateResult(
        window_rate=k / n,
        offline_rate=rate,
        n_window=n,
        n_flagged=k,
        n_offline=n_off,
        p_value=p_value,
        alarm=p_value <= a,
        alpha=a,
        method=method,
    )
