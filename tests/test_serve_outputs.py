"""The served outputs use the evaluated formulas: calibrated probabilities and the OOD score and flag equal
what modelyard.evaluate computes, for every score kind."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.errors import ArtifactError
from modelyard.evaluate import ood
from modelyard.evaluate.metrics import softmax
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


def test_the_server_turns_onnx_runtime_spinning_off() -> None:
    from modelyard.runtime.onnx import session_options

    assert session_options(1, spin=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # offline runners keep the default
        session_options(1).get_session_config_entry("session.intra_op.allow_spinning")
