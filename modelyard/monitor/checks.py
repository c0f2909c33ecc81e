"""The live checks: what the monitor measures on a window of served traffic, declared in the check registry
like every offline check (name, unit, meaning, direction, model kinds), with ``stage="live"``.

:func:`modelyard.monitor.watch.watch` computes them; each result is a Measurement built with
``modelyard.evaluate.evidence.measure``, so it carries the unit declared here. Live checks never gate a
candidate and are not part of a run's evidence; ``modelyard checks`` lists them with the offline ones.

This module imports the declarations only (``modelyard.evaluate.checkspec``), never the registry
(``modelyard.evaluate.checks`` imports this module).
"""

from __future__ import annotations

from modelyard.evaluate.checkspec import CLASSIFIERS, EMBEDDERS, TASKS, CheckSpec, declare

__all__ = ["ALARM_CHECKS", "CHECKS"]

CHECKS: tuple[CheckSpec, ...] = declare(
    CheckSpec(
        "drift.inputs",
        "sd",
        "input drift of the window against the version's reference: max over input features (tabular values, "
        "or an image's principal components and reconstruction error) of the standardised Wasserstein-1 "
        "distance (Jensen-Shannon distance for a categorical feature); threshold calibrated at the alarm rate",
        "lower",
        TASKS,
        stage="live",
    ),
    CheckSpec(
        "drift.embeddings",
        "sd",
        "embedding drift of the window: max over the embedding's principal components and reconstruction "
        "error of the standardised Wasserstein-1 distance to the reference; threshold calibrated at the alarm rate",
        "lower",
        EMBEDDERS,
        stage="live",
    ),
    CheckSpec(
        "drift.outputs",
        "effect",
        "output drift of the window: max of the predicted-class Jensen-Shannon distance (base 2) and the "
        "confidence's standardised Wasserstein-1 distance to the reference predictions; threshold calibrated "
        "at the alarm rate",
        "lower",
        CLASSIFIERS,
        stage="live",
    ),
    CheckSpec(
        "drift.mmd_p",
        "p-value",
        "kernel two-sample test (MMD, Gaussian kernel, permutations) of the window's input or embedding "
        "features against the reference, standardised; a second, joint signal beside the per-feature check",
        "higher",
        TASKS,
        stage="live",
    ),
    CheckSpec(
        "drift.ood_rate",
        "fraction",
        "share of the window's rows the served OOD rule flagged, tested one-sided against the offline rate "
        "(Fisher's exact test)",
        "lower",
        CLASSIFIERS,
        stage="live",
    ),
    CheckSpec(
        "accuracy.estimated",
        "fraction",
        "accuracy of the window estimated before labels from its calibrated confidence (recalibrated on the "
        "version's labelled reference), 95% prediction interval; compared with the offline accuracy",
        "higher",
        CLASSIFIERS,
        stage="live",
    ),
    CheckSpec(
        "accuracy.realised",
        "fraction",
        "accuracy of the window's labelled rows (labels posted as feedback), Wilson 95% interval; tested "
        "one-sided against the offline accuracy",
        "higher",
        CLASSIFIERS,
        stage="live",
    ),
    CheckSpec(
        "accuracy.estimate_gap",
        "points",
        "realised minus estimated accuracy on the window's labelled rows, percentage points (whether the "
        "label-free estimate held)",
        None,
        CLASSIFIERS,
        stage="live",
    ),
)

# The live checks that can raise an alarm (the others are shown beside them); the configured false-alarm
# rate of a window is shared among those of them that run on it.
ALARM_CHECKS: tuple[str, ...] = (
    "drift.inputs",
    "drift.embeddings",
    "drift.outputs",
    "drift.ood_rate",
    "accuracy.estimated",
    "accuracy.realised",
)
