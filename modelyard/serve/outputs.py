"""The served outputs of a classifier, computed from its raw logits on every request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelyard.errors import ArtifactError

OOD_SCORES = ("msp", "energy", "maxlogit")


def classifier_outputs(
    raw: np.ndarray, *, temperature: float, ood_rule: Mapping[str, Any] | None
) -> dict[str, np.ndarray]:
    """logits, calibrated probabilities and, with a rule, the OOD score and flag. The formulas are those of
    ``modelyard.evaluate.metrics.softmax`` and ``modelyard.evaluate.ood`` (so the served flag applies the
    evaluated rule), inline without input validation: this runs on every request."""
    z = raw.astype(np.float64)
    scaled = z / temperature
    e = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    out: dict[str, np.ndarray] = {
        "logits": raw,
        "probabilities": (e / e.sum(axis=1, keepdims=True)).astype(np.float32),
    }
    if ood_rule is None:
        return out
    kind = ood_rule["score"]
    if kind == "energy":
        t = float(ood_rule.get("temperature") or 1.0)
        zt = z / t
        m = zt.max(axis=1)
        score = -t * (m + np.log(np.exp(zt - m[:, None]).sum(axis=1)))
    elif kind == "maxlogit":
        score = -z.max(axis=1)
    elif kind == "msp":
        ez = np.exp(z - z.max(axis=1, keepdims=True))
        score = -(ez / ez.sum(axis=1, keepdims=True)).max(axis=1)
    else:
        raise ArtifactError(
            f"unknown OOD score {kind!r} in the candidate's serving rule; known: energy, maxlogit, msp"
        )
    out["ood_score"] = score
    out["ood_flag"] = score > float(ood_rule["threshold"])
    return out
