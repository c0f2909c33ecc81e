"""The prediction log's writer summarizes a batch of requests at once (projected features, classifier output
summaries): every record must be the one the request alone would give, to the byte and the float."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from modelyard.monitor.pending import PendingPrediction, build_records
from modelyard.monitor.summary import MAX_ROWS, TOP_K, Projection, summarize_outputs
from modelyard.monitor.summary_batch import classifier_summaries


def _projection(rng: np.random.Generator) -> Projection:
    components = np.linalg.qr(rng.normal(size=(64, 6)))[0].T
    return Projection(source="pixels", pool=1, mean=rng.normal(size=64), components=components)


def _probabilities(rng: np.random.Generator, rows: int, width: int, dtype: Any) -> np.ndarray:
    p = rng.dirichlet(np.full(width, 0.3), size=rows)
    p[rng.random(p.shape) < 0.1] = 0.0  # exact zeros, and ties among them
    if rows > 1:
        p[0] = 1.0 / width  # a row of ties
    return p.astype(dtype)


def _item(
    rng: np.random.Generator, i: int, outputs: dict[str, np.ndarray], proj: Projection | None
) -> PendingPrediction:
    rows = len(next(iter(outputs.values())))
    return PendingPrediction(
        request_id=f"r{i}",
        at_unix_s=time.time(),
        model="m",
        version="1",
        endpoint="infer",
        rows=rows,
        feeds={"pixels": rng.random((rows, 1, 8, 8), dtype=np.float32)},
        texts=None,
        outputs=outputs,
        latency_ms=1.5,
        input_projection=proj,
    )


def _mixed_batch(seed: int) -> list[PendingPrediction]:
    """Requests alike and not: widths above and below TOP_K, 1 to MAX_ROWS + 2 rows, three float types, with
    and without OOD columns, integer scores, an embedder, and a width no other request has."""
    rng = np.random.default_rng(seed)
    proj = _projection(rng)
    items: list[PendingPrediction] = []
    for i in range(60):
        rows = int(rng.choice([1, 1, 1, 2, 3, MAX_ROWS, MAX_ROWS + 2]))
        width = int(rng.choice([10, 3]))
        out: dict[str, np.ndarray] = {
            "probabilities": _probabilities(
                rng, rows, width, rng.choice([np.float32, np.float64, np.float16])
            )
        }
        if i % 3:
            out["ood_score"] = rng.normal(size=rows).astype(np.float32)
            out["ood_flag"] = rng.random(rows) < 0.3
        if i % 11 == 5:
            out["ood_score"] = np.arange(rows)  # integers: summarized alone
        items.append(_item(rng, i, out, proj if i % 4 else None))
    items.append(_item(rng, 60, {"probabilities": _probabilities(rng, 1, 7, np.float32)}, proj))
    items.append(_item(rng, 61, {"embedding": rng.normal(size=(2, 16)).astype(np.float32)}, proj))
    return items


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_gives_every_request_the_record_it_would_get_alone(seed: int) -> None:
    items = _mixed_batch(seed)
    records, failed = build_records(items)
    assert failed == 0
    assert records == [item.build() for item in items]


def test_alike_classifier_requests_take_the_batch_path_and_match_summarize_outputs() -> None:
    items = _mixed_batch(3)
    outputs = [item.outputs for item in items]
    summaries = classifier_summaries(outputs)
    batched = [i for i, s in enumerate(summaries) if s is not None]
    # alike: a float classifier's probabilities of at most MAX_ROWS rows, float scores, with a partner
    assert len(batched) >= 30
    for i in batched:
        assert summaries[i] == summarize_outputs(outputs[i])
    for i in (60, 61):  # a width no other request has; an embedder
        assert summaries[i] is None
    for i, out in enumerate(outputs):
        probs = out.get("probabilities")
        if (probs is not None and len(probs) > MAX_ROWS) or out.get(
            "ood_score", np.zeros(1)
        ).dtype.kind == "i":
            assert summaries[i] is None


def test_the_top_classes_are_the_largest_probabilities_in_order() -> None:
    p = np.array([[0.1, 0.5, 0.0, 0.4, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0]], dtype=np.float32)
    summaries = classifier_summaries([{"probabilities": p}, {"probabilities": p[::-1].copy()}])
    first = summaries[0]
    assert first is not None
    assert first.json.startswith(
        '{"rows":2,"predicted":[1,0],"confidence":[0.5,0.2],"top":[[[1,0.5],[3,0.4],[0,0.1]'
    )
    assert first.confidence == pytest.approx((0.5 + 0.2) / 2)
    assert first.ood_score is None and first.ood_flag is None
    assert len(first.json.split("]],[[")[1].split("],[")) == TOP_K
