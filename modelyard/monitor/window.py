"""A window of logged traffic, as the live checks read it: the rows of its requests' summaries (input
features, embedding features, predicted class and confidence, OOD flags) and of its labelled requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.monitor.log import Labelled, Prediction, input_rows
from modelyard.monitor.reference import MonitorReference

__all__ = ["WindowRows"]


@dataclass(frozen=True)
class WindowRows:
    """What the signals read from a window of logged requests."""

    requests: int
    inputs: NDArray[np.float64] | None  # (rows, d): logged values or projected features
    embeddings: NDArray[np.float64] | None
    predicted: NDArray[np.int64]
    confidence: NDArray[np.float64]
    ood_flagged: int
    ood_rows: int
    labelled_correct: NDArray[np.bool_]
    labelled_confidence: NDArray[np.float64]

    @classmethod
    def of(
        cls, predictions: Sequence[Prediction], labelled: Sequence[Labelled], ref: MonitorReference
    ) -> WindowRows:
        inputs = embeddings = None
        if ref.inputs is not None:
            if ref.inputs.kind == "values":
                inputs = input_rows(predictions, ref.inputs.input)
            else:
                inputs = _features([p.inputs for p in predictions])
        if ref.embeddings is not None:
            embeddings = _features([p.outputs for p in predictions])
        predicted: list[int] = []
        confidence: list[float] = []
        flagged = flag_rows = 0
        for p in predictions:
            pr, cf = p.outputs.get("predicted"), p.outputs.get("confidence")
            if isinstance(pr, list) and isinstance(cf, list) and len(pr) == len(cf):
                predicted += [int(v) for v in pr]
                confidence += [float(v) for v in cf]
            if isinstance(p.outputs.get("ood_flagged"), int):
                flagged += int(p.outputs["ood_flagged"])
                flag_rows += p.rows
        correct: list[bool] = []
        conf_l: list[float] = []
        for item in labelled:
            pr, cf = item.prediction.outputs.get("predicted"), item.prediction.outputs.get("confidence")
            labels = item.label if isinstance(item.label, list) else [item.label]
            if not isinstance(pr, list) or not isinstance(cf, list) or len(labels) != item.prediction.rows:
                continue
            for p_row, c_row, y in zip(pr, cf, labels, strict=False):
                if isinstance(y, int) and not isinstance(y, bool):
                    correct.append(int(p_row) == y)
                    conf_l.append(float(c_row))
        return cls(
            len(predictions),
            inputs,
            embeddings,
            np.asarray(predicted, dtype=np.int64),
            np.asarray(confidence, dtype=np.float64),
            flagged,
            flag_rows,
            np.asarray(correct, dtype=bool),
            np.asarray(conf_l, dtype=np.float64),
        )


def _features(summaries: Sequence[Any]) -> NDArray[np.float64]:
    rows = [list(r) for s in summaries for r in (s.get("features") or [])]
    widths = {len(r) for r in rows}
    if not rows or len(widths) != 1:
        return np.zeros((0, 0))
    return np.asarray(rows, dtype=np.float64)
