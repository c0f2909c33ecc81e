"""Synthetic evidence with every section beyond accuracy (calibration after temperature, per-class, slices,
robustness, OOD, audits, security, serving rules, suite facts), in the shapes the evaluation writes: a
complete, valid ``modelyard.evidence/2`` dict built on the classifier run of ``tests.helpers.evidence``."""

from __future__ import annotations

from typing import Any

from modelyard.evaluate.evidence import measure
from tests.helpers.evidence import bins, classifier_evidence

EVIL = "<script>alert(1)</script>"
CLASSES = [str(k) for k in range(10)]
CORRUPTIONS = ["gaussian_noise", "gaussian_blur", "brightness"]
LEAK_CAVEAT = "4.2% of test items have a near-duplicate in training (15 of 360); accuracy may be inflated"
LIMITS = "adaptive attacks can evade activation clustering and spectral signatures; a clean scan is not proof"


def _per_class(i: int) -> list[dict[str, Any]]:
    rows = []
    for k in CLASSES:
        recall = 0.97 - 0.01 * int(k) - (0.3 if (k == "3" and i == 2) else 0.0)
        base = 0.97 - 0.01 * int(k)
        rows.append(
            {
                "class": k,
                "support": 36,
                "precision": None if k == "9" else 0.95,
                "precision_ci": None if k == "9" else [0.83, 0.99],
                "recall": recall,
                "recall_ci": [recall - 0.1, min(1.0, recall + 0.05)],
                "f1": 0.9,
                "baseline_recall": base,
                "recall_drop_points": 100 * (base - recall),
            }
        )
    return rows


def _evidence_measurements(i: int) -> dict[str, Any]:
    """The new measurements of candidate ``i`` (0 = baseline), in the shapes the evaluation writes."""
    drop = 30.0 if i == 2 else 0.5 * i
    table = {c: [0.9 - 0.1 * s - 0.02 * i for s in range(5)] for c in CORRUPTIONS}
    hist = {
        "edges": [-10.0 + k for k in range(11)],
        "id": [0, 1, 5, 20, 30, 20, 5, 0, 0, 0],
        "ood": [0] * 5 + [3, 10, 20, 10, 2],
    }
    ms = [
        measure("compare.negative_flip_rate", 0.004 * i, (0.0, 0.02)),
        measure("compare.kl_mean", 0.001 * i + 1e-6, (0.0, 0.01), max_abs_logit_diff=0.2),
        measure(
            "calibration.temperature",
            1.5 + 0.1 * i,
            n_cal=180,
            nll_before=0.31,
            nll_after=0.22,
            fitted_on="calibration split",
        ),
        measure(
            "calibration.ece_calibrated", 0.011 + 0.001 * i, (0.005, 0.03), bins=bins(0.01), ece_before=0.04
        ),
        measure(
            "slices.worst_class_recall",
            0.64 if i == 2 else 0.88,
            (0.54, 0.69) if i == 2 else (0.78, 0.93),
            per_class=_per_class(i),
            worst_class="3" if i == 2 else "9",
        ),
        measure(
            "slices.worst_class_drop",
            drop,
            (drop - 5, drop + 5),
            **{"class": "3", "per_class_drop_points": {"3": drop, "4": 0.0}},
        ),
        measure(
            "slices.worst_slice_drop",
            2.5,
            slices=[
                {
                    "column": "writer",
                    "value": "left-handed",
                    "n": 40,
                    "accuracy": 0.9,
                    "accuracy_ci": [0.77, 0.96],
                    "baseline_accuracy": 0.925,
                    "drop_points": 2.5,
                    "status": "ok",
                },
                {
                    "column": "writer",
                    "value": "unknown",
                    "n": 5,
                    "accuracy": 0.8,
                    "accuracy_ci": [0.38, 0.96],
                    "baseline_accuracy": 0.8,
                    "drop_points": 0.0,
                    "status": "unknown: n < min_support",
                },
            ],
            worst={"column": "writer", "value": "left-handed"},
        ),
        measure(
            "robustness.corruption_accuracy",
            0.7 - 0.02 * i,
            table=table,
            clean_accuracy=0.96 - 0.01 * i,
            baseline_table={c: [0.9 - 0.1 * s for s in range(5)] for c in CORRUPTIONS},
        ),
        measure(
            "robustness.relative_mce", 1.0 + 0.05 * i, per_corruption={c: 1.0 + 0.05 * i for c in CORRUPTIONS}
        ),
        measure(
            "robustness.consistency",
            0.97 - 0.01 * i,
            (0.95, 0.98),
            per_perturbation={"gaussian_noise": 0.96, "brightness": 0.99},
        ),
        measure("robustness.consistency_drop", 1.0 * i),
        measure(
            "robustness.adversarial_accuracy",
            0.312 + 0.01 * i,
            (0.26, 0.36),
            attacks={
                "fgsm": {"robust_accuracy": 0.45 + 0.01 * i, "asr": 0.52, "n": 360, "n_clean_correct": 340},
                "pgd": {"robust_accuracy": 0.312 + 0.01 * i, "asr": 0.67, "n": 360, "n_clean_correct": 340},
            },
            epsilon=0.1,
            epsilon_text="0.1 of the input range (1.6/16 grey levels)",
            steps=10,
            crafted_on="baseline",
            transfer=i > 0,
        ),
        measure("robustness.attack_success_rate", 0.67, (0.62, 0.72)),
        measure("robustness.adversarial_accuracy_drop", -1.0 * i),
        measure(
            "ood.auroc",
            0.93 - 0.01 * i,
            (0.9, 0.95),
            score="energy",
            positive="OOD",
            scores={
                s: {"auroc": 0.9 + 0.01 * k, "aupr_in": 0.88, "aupr_out": 0.91, "fpr95": 0.3 - 0.01 * k}
                for k, s in enumerate(["msp", "energy", "maxlogit"])
            },
            per_set={
                "noise": {"n": 100, "auroc": 0.99, "fpr95": 0.01},
                "letters": {"n": 100, "auroc": 0.8123, "fpr95": 0.5},
            },
            histogram=hist,
            n_id=360,
            n_ood=200,
            ood_source="built-in",
        ),
        measure("ood.fpr95", 0.29 + 0.01 * i, (0.2, 0.35)),
        measure("ood.auroc_drop", 1.0 * i),
        measure("security.file_scan", 1.0, verdict="PASS", format="onnx", findings=[]),
        measure(
            "security.backdoor_flagged_classes",
            1.0,
            flagged_classes=["0"],
            n_suspicious=12,
            method="activation clustering confirmed by spectral signatures",
            limits=LIMITS,
        ),
        measure("quality.accuracy_clean", 0.951 - 0.01 * i, (0.93, 0.97), n=340, excluded=20, baseline=0.951),
    ]
    return {m.name: m.to_dict() for m in ms}


def _serving(i: int) -> dict[str, Any]:
    return {
        "temperature": 1.5 + 0.1 * i,
        "ood": {
            "score": "energy",
            "threshold": -4.25,
            "flag": "score > threshold",
            "tpr_target": 0.95,
            "fitted_on": "calibration split",
        },
        "input_contract": {
            "inputs": [
                {
                    "name": "pixels",
                    "dtype": "float32",
                    "shape": [None, 1, 8, 8],
                    "value_range": [0.0, 1.0],
                    "finite": True,
                }
            ],
            "text": False,
        },
    }


def _audit() -> dict[str, Any]:
    return {
        "data": {
            "status": "ok",
            "representation": "penultimate layer (input of classifier.3)",
            "exact_duplicates": {
                "train_groups": 2,
                "test_groups": 0,
                "examples": [{"split": "train", "indices": [3, 7]}],
            },
            "near_duplicates": {
                "threshold": 0.98,
                "method": "cosine of L2-normalised features",
                "pairs": 15,
                "examples": [{"test": 4, "train": 99, "similarity": 0.991, "text": EVIL}],
            },
            "leakage": {
                "exact_fraction": 0.0,
                "near_fraction": 0.042,
                "n_test": 360,
                "pairs": [{"test": 4, "train": 99, "kind": "near", "similarity": 0.991}],
                "test_indices": [4],
            },
            "label_conflicts": {"count": 1, "examples": [{"indices": [5, 6], "labels": ["1", "7"]}]},
            "label_issues": {
                "status": "ok",
                "method": "cleanlab find_label_issues, 5-fold out-of-sample logistic regression",
                "train_flagged": 16,
                "test_flagged": 3,
                "estimated_error_rate": 0.011,
                "test_indices": [11, 12, 13],
                "examples": [
                    {
                        "index": 11,
                        "split": "test",
                        "given": "1",
                        "suggested": "7",
                        "self_confidence": 0.02,
                        "text": EVIL,
                    }
                ],
            },
            "outliers": {"count": 4, "fraction": 0.011, "top": [{"index": 8, "score": 0.5}]},
            "balance": {
                "train": {k: 140 + int(k) for k in CLASSES},
                "test": {k: 36 for k in CLASSES},
                "imbalance_ratio": 1.064,
            },
            "provenance": {
                "fingerprint_sha256": "f" * 64,
                "source": None,
                "license": None,
                "datasheet": None,
            },
            "caveats": [LEAK_CAVEAT, "the dataset's licence is not declared"],
            "clean_test_indices": list(range(340)),
        },
        "model": {
            "scan": {"status": "PASS", "format": "torch-zip", "findings": [], "sha256": "a" * 64},
            "backdoor": {
                "status": "ok",
                "flagged_classes": ["0"],
                "suspicious_indices": list(range(12)),
                "n_suspicious": 12,
                "method": "activation clustering confirmed by spectral signatures",
                "limits": LIMITS,
                "representation": "penultimate layer (input of classifier.3)",
            },
        },
    }


def full_evidence() -> dict[str, Any]:
    """The report tests' classifier evidence with every new measurement, serving rule and section."""
    ev = classifier_evidence()
    for i, c in enumerate(ev["candidates"]):
        c["measurements"].update(_evidence_measurements(i))
        if i == 0:  # the baseline has no paired comparison with itself
            for name in ("compare.negative_flip_rate", "compare.kl_mean", "ood.auroc_drop"):
                c["measurements"].pop(name)
        c["serving"] = _serving(i)
    ev["audit"] = _audit()
    ev["caveats"] = [
        LEAK_CAVEAT,
        "an estimated 1.1% of labels may be wrong (cleanlab, out-of-sample); 3 test items flagged",
    ]
    ev["suite"] = {
        "seconds": {"robustness": 1.234, "ood": 0.2, "audit.data": 2.5},
        "sample_sizes": {
            "robustness": {"n": 360, "why": "385 items give a 5-point half-width; the test split has 360"}
        },
        "calibration_split": "20% of train, stratified",
        "ood_source": "built-in",
    }
    return ev
