"""The served outputs use the evaluated formulas: calibrated probabilities and the OOD score and flag equal
what modelyard.evaluate computes, for every score kind."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.errors import ArtifactError
from modelyard.evaluate import ood
from modelyard.evaluate.metrics import softmax
from modelyard.serve.model import ort_spinning
from modelyard.serve.outputs import classifier_outputs


@pytest.mark.parametrize("kind", ["energy", "msp", "maxlogit"])
def test_served_outputs_equal_the_evaluated_formulas(kind: str) -> None:
    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(50, 7)) * 4).astype(np.float32)
    expected = {"energy": ood.energy_score, "msp": ood.msp_score, "maxlogit": ood.maxlogit_score}[kind](raw)
    threshold = float(np.median(expected))
    out = classifier_outputs(raw, temperature=1.7, ood_rule={"score": kind, "threshold": threshold})
    assert out["logits"] is raw
    np.testing.assert_allclose(
        out["probabilities"], softmax(raw.astype(np.float64) / 1.7), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(out["ood_score"], expected, rtol=1e-12, atol=1e-12)
    assert np.array_equal(out["ood_flag"], expected > threshold)


def test_without_a_rule_there_are_no_ood_outputs_and_unknown_scores_are_refused() -> None:
    raw = np.zeros((2, 3), dtype=np.float32)
    assert set(classifier_outputs(raw, temperature=1.0, ood_rule=None)) == {"logits", "probabilities"}
    with pytest.raises(ArtifactError, match="unknown OOD score 'mahalanobis'"):
        classifier_outputs(raw, temperature=1.0, ood_rule={"score": "mahalanobis", "threshold": 0.0})


def _evidence(p50_ms: float | None) -> Any:
    return SimpleNamespace(measurements={"efficiency.latency_p50_ms": SimpleNamespace(value=p50_ms)})


@pytest.mark.parametrize(
    ("evidence", "spin", "why"),
    [
        (_evidence(4.18), True, "spin between operators: batch-1 inference measured 4.18 ms (>= 1 ms)"),
        (_evidence(0.07), False, "sleep between calls: batch-1 inference measured 0.07 ms (< 1 ms)"),
        (_evidence(None), False, "no measured batch-1 latency"),
        (_evidence(float("nan")), False, "no measured batch-1 latency"),
        (None, False, "no measured batch-1 latency"),
    ],
)
def test_served_onnx_runtime_spins_only_for_models_slower_than_a_millisecond(
    evidence: Any, spin: bool, why: str
) -> None:
    decided, reason = ort_spinning(evidence)
    assert decided is spin and why in reason


def test_onnx_runtime_spinning_is_a_session_setting() -> None:
    from modelyard.runtime.onnx import session_options

    assert session_options(1, spin=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # spinning on: the default
        session_options(1).get_session_config_entry("session.intra_op.allow_spinning")
