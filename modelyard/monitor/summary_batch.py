"""Classifier output summaries of many logged requests at once, the same text as one request at a time.

The prediction log's writer summarizes each answered request (:func:`~modelyard.monitor.summary.summarize_outputs`).
On a small classifier served at a high rate that per-request work (a sort, a rounding and a few small numpy
calls per request) took most of the writer's CPU, and the writer shares the server's one Python interpreter with
the request path. :func:`classifier_summaries` computes the sort and the rounding once for all the alike requests
of a batch (one width of probabilities, at most ``MAX_ROWS`` rows each, float OOD scores and boolean flags of one
per row), then writes each request's JSON: the same text, confidence and OOD columns as
``summarize_outputs``; a request that is not alike, or whose summary would pass ``MAX_SUMMARY_BYTES``, is left to
it (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.monitor.summary import (
    MAX_ROWS,
    MAX_SUMMARY_BYTES,
    TOP_K,
    OutputSummary,
    encode_summary,
    rounded_array,
)

__all__ = ["classifier_summaries"]


def _alike(outputs: Mapping[str, Any]) -> tuple[int, int, bool, bool] | None:
    """(rows, width, has OOD scores, has OOD flags) of outputs the batch path handles, else None."""
    probs = outputs.get("probabilities")
    if not isinstance(probs, np.ndarray) or probs.ndim == 0 or probs.dtype.kind != "f":
        return None
    rows = len(probs)
    if not 1 <= rows <= MAX_ROWS or probs.size == 0:
        return None
    scores, flags = outputs.get("ood_score"), outputs.get("ood_flag")
    if scores is not None and not (
        isinstance(scores, np.ndarray) and scores.dtype.kind == "f" and scores.shape == (rows,)
    ):
        return None
    if flags is not None and not (
        isinstance(flags, np.ndarray) and flags.dtype.kind == "b" and flags.shape == (rows,)
    ):
        return None
    return rows, probs.size // rows, scores is not None, flags is not None


def classifier_summaries(outputs: Sequence[Mapping[str, Any]]) -> list[OutputSummary | None]:
    """Each request's output summary as ``summarize_outputs`` writes it, for the requests that are alike (see
    the module docstring) and have at least one alike partner; ``None`` for the others."""
    result: list[OutputSummary | None] = [None] * len(outputs)
    groups: dict[tuple[int, bool, bool], list[tuple[int, int]]] = {}
    for i, out in enumerate(outputs):
        shape = _alike(out)
        if shape is not None:
            rows, width, has_scores, has_flags = shape
            groups.setdefault((width, has_scores, has_flags), []).append((i, rows))
    for (width, has_scores, has_flags), members in groups.items():
        if len(members) > 1:
            summaries = _group(outputs, members, width, has_scores, has_flags)
            for (i, _), summary in zip(members, summaries, strict=True):
                result[i] = summary
    return result


def _group(
    outputs: Sequence[Mapping[str, Any]],
    members: list[tuple[int, int]],
    width: int,
    has_scores: bool,
    has_flags: bool,
) -> list[OutputSummary | None]:
    p = np.concatenate(
        [
            np.asarray(outputs[i]["probabilities"], dtype=np.float64).reshape(rows, width)
            for i, rows in members
        ]
    )
    top = p.max(axis=1)
    order = np.argsort(-p, axis=1, kind="stable")[:, : min(TOP_K, width)]  # column 0: the predicted class
    classes = order.tolist()
    best = np.take_along_axis(p, order, axis=1)
    top_values = rounded_array(best).tolist()
    confidences = rounded_array(top).tolist()
    scores = (
        np.concatenate([np.asarray(outputs[i]["ood_score"], dtype=np.float64) for i, _ in members])
        if has_scores
        else None
    )
    score_values = rounded_array(scores).tolist() if scores is not None else []
    flags = np.concatenate([outputs[i]["ood_flag"] for i, _ in members]).tolist() if has_flags else []
    summaries: list[OutputSummary | None] = []
    at = 0
    for _, rows in members:
        end = at + rows
        doc: dict[str, Any] = {
            "rows": rows,
            "predicted": [row[0] for row in classes[at:end]],
            "confidence": confidences[at:end],
            "top": [
                [[c, v] for c, v in zip(cs, vs, strict=True)]
                for cs, vs in zip(classes[at:end], top_values[at:end], strict=True)
            ],
        }
        ood_score = None
        if scores is not None:
            doc["ood_score"] = score_values[at:end]
            ood_score = float(scores[at:end].max())
        ood_flag = None
        if has_flags:
            doc["ood_flag"] = flags[at:end]
            doc["ood_flagged"] = sum(flags[at:end])
            ood_flag = any(flags[at:end])
        text = encode_summary(doc)
        # top.sum() over the request's own rows: the same reduction as summarize_outputs, so the same float
        confidence = float(top[at:end].sum()) / rows
        summaries.append(
            None if len(text) > MAX_SUMMARY_BYTES else OutputSummary(text, confidence, ood_score, ood_flag)
        )
        at = end
    return summaries
