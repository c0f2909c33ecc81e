"""A request queued for the prediction log before it is summarized.

The request path keeps only references to what the request already holds (its input arrays or texts, its
outputs, the served version's projections) and queues a :class:`PendingPrediction`; the writer thread turns it
into a :class:`~modelyard.monitor.log.PredictionRecord` (:meth:`PendingPrediction.build`: the bounded JSON
summaries of :mod:`modelyard.monitor.summary`). So the cost of summarizing is paid off the request path, in the
writer's thread, and a request never waits for it. ``nbytes`` is what the queued item holds on to, so the
writer can bound the memory of its queue in bytes as well as in items.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.errors import DataError
from modelyard.monitor.log import PredictionRecord
from modelyard.monitor.summary import (
    MAX_ROWS,
    OutputSummary,
    Projection,
    rounded_array,
    summarize_inputs,
    summarize_outputs,
)
from modelyard.monitor.summary_batch import classifier_summaries

__all__ = ["PendingPrediction", "build_records"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingPrediction:
    """One answered request as the request path hands it to the writer (nothing computed yet)."""

    request_id: str
    at_unix_s: float
    model: str
    version: str
    endpoint: str
    rows: int
    feeds: Mapping[str, np.ndarray] | None
    texts: Sequence[str] | None
    outputs: Mapping[str, Any]
    latency_ms: float | None
    input_projection: Projection | None = None
    output_projection: Projection | None = None

    @property
    def nbytes(self) -> int:
        """The bytes of the arrays and texts this item keeps alive while it is queued."""
        size = sum(int(getattr(a, "nbytes", 0)) for a in (self.feeds or {}).values())
        size += sum(int(getattr(a, "nbytes", 0)) for a in self.outputs.values())
        size += sum(len(t) for t in self.texts or ())
        return size

    def projected_input(self) -> np.ndarray | None:
        """The first ``MAX_ROWS`` rows of the input the version's projection reads, or None."""
        proj = self.input_projection
        arr = None if proj is None or self.feeds is None else self.feeds.get(proj.source)
        return None if arr is None else np.asarray(arr)[:MAX_ROWS]

    def build(
        self, *, features: list[list[float]] | None = None, outputs: OutputSummary | None = None
    ) -> PredictionRecord:
        """The record the log stores: the summaries encoded (raises on inputs that cannot be summarized).
        ``features``, ``outputs``: the projected input's features (rounded as logged) and the output summary, when
        :func:`build_records` computed them for a batch."""
        out = (
            outputs
            if outputs is not None
            else summarize_outputs(self.outputs, projection=self.output_projection)
        )
        return PredictionRecord(
            request_id=self.request_id,
            at_unix_s=self.at_unix_s,
            model=self.model,
            version=self.version,
            endpoint=self.endpoint,
            rows=self.rows,
            inputs_json=summarize_inputs(
                self.feeds, self.texts, rows=self.rows, projection=self.input_projection, features=features
            ),
            outputs_json=out.json,
            confidence=out.confidence,
            ood_score=out.ood_score,
            ood_flag=out.ood_flag,
            latency_ms=self.latency_ms,
        )


def build_records(items: Sequence[PendingPrediction]) -> tuple[list[PredictionRecord], int]:
    """The records of ``items`` and how many could not be summarized. Items whose input one projection reads,
    with rows of the same shape, are projected together (one matrix product for the batch instead of one per
    request: on a small model that product's overhead is most of a summary's cost), and the output summaries of
    alike classifier requests are computed together (:func:`~modelyard.monitor.summary_batch.classifier_summaries`)."""
    groups: dict[tuple[int, tuple[int, ...], np.dtype[Any]], list[int]] = {}
    heads: list[np.ndarray | None] = []
    for i, item in enumerate(items):
        head = item.projected_input()
        heads.append(head)
        if head is not None and head.ndim >= 1:
            groups.setdefault((id(item.input_projection), head.shape[1:], head.dtype), []).append(i)
    features: dict[int, list[list[float]]] = {}
    for members in groups.values():
        proj = items[members[0]].input_projection
        if len(members) < 2 or proj is None:
            continue
        stacked = np.concatenate([h for h in (heads[i] for i in members) if h is not None])
        try:
            feats = rounded_array(proj.features(stacked)).tolist()
        except (ValueError, DataError):
            continue  # each item then tries on its own (and is summarized without features if it does not fit)
        at = 0
        for i in members:
            n = len(heads[i])  # type: ignore[arg-type]
            features[i] = feats[at : at + n]
            at += n
    summaries = classifier_summaries([item.outputs for item in items])
    records: list[PredictionRecord] = []
    failed = 0
    for i, item in enumerate(items):
        try:
            records.append(item.build(features=features.get(i), outputs=summaries[i]))
        except Exception:
            log.debug("summarizing request %s for the prediction log failed", item.request_id, exc_info=True)
            failed += 1
    return records, failed
