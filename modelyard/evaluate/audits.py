"""The audits a run does before it measures candidates: the data (duplicates, leakage, label issues,
outliers, balance, provenance) and the baseline model (file scan, backdoor scans on the training data).

Their findings become caveats on every accuracy figure and gates on every candidate."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ModelyardError, first_line
from modelyard.evaluate.suite import Progress, no_progress

MAX_FEATURE_ITEMS = 20_000


def _features(baseline: Candidate, x: Any) -> tuple[np.ndarray | None, str]:
    from modelyard.evaluate.features import penultimate_features

    if len(x) == 0:
        return None, "no items"
    return penultimate_features(baseline, x)


def run_audits(
    baseline: Candidate,
    dataset: Dataset,
    *,
    progress: Progress | None = None,
    data_audit: bool = True,
    backdoor_scan: bool = True,
) -> dict[str, Any]:
    """Audit the data and the baseline model. Never raises for a check that cannot run: it is recorded as
    skipped with its reason (and the gates treat it as UNKNOWN)."""
    from modelyard.data.audit import audit_data
    from modelyard.security.audit import audit_model
    from modelyard.security.backdoor import backdoor_scan as scan_backdoor

    say: Progress = progress or no_progress
    seconds: dict[str, float] = {}
    out: dict[str, Any] = {"model": {}, "data": {}}
    t0 = time.perf_counter()
    say("audit: scanning the model file", 0.0)
    out["model"]["scan"] = audit_model(baseline.path)
    seconds["audit.model_scan"] = round(time.perf_counter() - t0, 3)

    feats_train = feats_test = None
    representation = "raw inputs"
    t0 = time.perf_counter()
    try:
        say("audit: representations of the data through the baseline", 0.0)
        if len(dataset.x_train) <= MAX_FEATURE_ITEMS:
            feats_train, representation = _features(baseline, dataset.x_train)
        feats_test, representation = _features(baseline, dataset.x_test)
    except ModelyardError as exc:
        representation = f"raw inputs (the baseline's representations failed: {first_line(exc)})"
    seconds["audit.features"] = round(time.perf_counter() - t0, 3)

    if data_audit:
        t0 = time.perf_counter()
        say("audit: data", 0.0)
        report = audit_data(dataset, features_train=feats_train, features_test=feats_test)
        report["status"] = "ok"
        report["representation"] = representation
        out["data"] = report
        seconds["audit.data"] = round(time.perf_counter() - t0, 3)
    else:
        out["data"] = {"status": "skipped", "reason": "the data audit was turned off"}

    bd: dict[str, Any]
    if not backdoor_scan:
        bd = {"status": "skipped", "reason": "the backdoor scan was turned off"}
    elif baseline.spec.task != "classification" or dataset.y_train is None:
        bd = {"status": "skipped", "reason": "backdoor scans need a classifier and labelled training data"}
    elif feats_train is None:
        bd = {"status": "skipped", "reason": f"no representations of the training data ({representation})"}
    else:
        t0 = time.perf_counter()
        say("audit: backdoor scans on the training data", 0.0)
        try:
            bd = scan_backdoor(feats_train, dataset.y_train, classes=dataset.classes)
            bd["status"] = "ok"
            bd["representation"] = representation
        except ModelyardError as exc:
            bd = {"status": "skipped", "reason": f"the backdoor scan could not run: {first_line(exc)}"}
        seconds["audit.backdoor"] = round(time.perf_counter() - t0, 3)
    out["model"]["backdoor"] = bd
    out["seconds"] = seconds
    return out
