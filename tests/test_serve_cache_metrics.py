"""PredictionCache (LRU order, counters, content keys, off at 0) and ServerMetrics (a registry per instance,
names after the Prometheus conventions, parseable text)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.errors import ConfigError
from modelyard.serve.cache import PredictionCache
from modelyard.serve.metrics import ServerMetrics

# ---------------------------------------------------------------------------------------------------
# cache


def test_lru_evicts_the_least_recently_used() -> None:
    cache = PredictionCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    cache.put("a", 10)  # overwrite refreshes a; c is now the oldest
    cache.put("d", 4)
    assert cache.get("c") is None
    assert cache.get("a") == 10 and cache.get("d") == 4
    assert len(cache) == 2


def test_hits_and_misses_are_counted() -> None:
    cache = PredictionCache(4)
    assert cache.get("x") is None
    cache.put("x", "value")
    assert cache.get("x") == "value"
    assert cache.get("x") == "value"
    assert cache.get("y") is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_zero_items_turns_the_cache_off() -> None:
    cache = PredictionCache(0)
    assert not cache.enabled
    cache.put("x", 1)
    assert cache.get("x") is None
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)


def test_clear_forgets_items_and_keeps_counters() -> None:
    cache = PredictionCache(4)
    cache.put("x", 1)
    assert cache.get("x") == 1
    cache.clear()
    assert cache.get("x") is None
    assert (cache.hits, cache.misses) == (1, 1)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_max_items_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_items must be an integer >= 0"):
        PredictionCache(bad)  # type: ignore[arg-type]


FEEDS = {
    "ids": np.array([[1, 2, 3]], dtype=np.int64),
    "mask": np.array([[1, 1, 0]], dtype=np.int64),
}


def key(
    feeds: dict[str, np.ndarray], *, model: str = "m", version: str = "1", outputs: list[str] | None = None
) -> str:
    return PredictionCache.key(model, version, feeds, outputs)


def test_key_is_stable_across_input_order_and_layout() -> None:
    k = key(FEEDS)
    assert len(k) == 64 and int(k, 16) >= 0
    assert key({"mask": FEEDS["mask"], "ids": FEEDS["ids"]}) == k
    fortran = {n: np.asfortranarray(a) for n, a in FEEDS.items()}
    assert key(fortran) == k
    big_endian = {n: a.astype(a.dtype.newbyteorder(">")) for n, a in FEEDS.items()}
    assert key(big_endian) == k
    assert key(FEEDS, outputs=["b", "a"]) == key(FEEDS, outputs=["a", "b", "a"])


def test_key_changes_with_any_part_of_the_request() -> None:
    k = key(FEEDS)
    ids = FEEDS["ids"]
    variants: dict[str, dict[str, np.ndarray]] = {
        "value": {**FEEDS, "ids": np.array([[1, 2, 4]], dtype=np.int64)},
        "dtype": {**FEEDS, "ids": ids.astype(np.int32)},
        "same bytes, other dtype": {**FEEDS, "ids": ids.view(np.float64)},
        "shape": {**FEEDS, "ids": ids.reshape(3, 1)},
        "input name": {"ids2": ids, "mask": FEEDS["mask"]},
        "one input fewer": {"ids": ids},
    }
    keys = {what: key(feeds) for what, feeds in variants.items()}
    keys["model"] = key(FEEDS, model="m2")
    keys["version"] = key(FEEDS, version="2")
    keys["outputs"] = key(FEEDS, outputs=["logits"])
    for what, other in keys.items():
        assert other != k, what
    assert len(set(keys.values())) == len(keys)


def test_key_of_bytes_inputs_depends_on_the_elements() -> None:
    def texts(*xs: object) -> dict[str, np.ndarray]:
        return {"text": np.array(xs, dtype=object)}

    k = key(texts(b"hello", b"world"))
    assert key(texts(b"hello", b"world")) == k
    assert key(texts(b"hello", b"worle")) != k
    assert key(texts(b"ab", b"bc")) != key(texts(b"abb", b"c"))  # element boundaries count
    assert key(texts(b"sa")) != key(texts("a"))  # bytes and text never collide
    assert key(texts("a")) == key(texts("a"))


# ---------------------------------------------------------------------------------------------------
# metrics


def families(m: ServerMetrics) -> dict[str, object]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}


def samples(m: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = m.render()
    out = {}
    for fam in text_string_to_metric_families(body.decode("utf-8")):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metric_names_types_and_labels() -> None:
    m = ServerMetrics()
    m.observe_request("clf", "3", "infer", 200, 0.004)
    on_batch, on_queue = m.batch_callbacks("clf", "3")
    on_batch(5, 0.002)
    on_queue(0.0005)
    m.observe_cache("clf", "3", hit=True)
    m.observe_cache("clf", "3", hit=False)
    m.inflight_requests.inc()
    m.model_ready.labels("clf", "3").set(1)
    fams = families(m)
    expected = {
        "modelyard_inference_requests": "counter",
        "modelyard_inference_request_duration_seconds": "histogram",
        "modelyard_inference_queue_duration_seconds": "histogram",
        "modelyard_inference_compute_duration_seconds": "histogram",
        "modelyard_batch_size": "histogram",
        "modelyard_cache_hits": "counter",
        "modelyard_cache_misses": "counter",
        "modelyard_inflight_requests": "gauge",
        "modelyard_model_ready": "gauge",
    }
    for name, kind in expected.items():
        assert name in fams, name
        assert fams[name].type == kind, name  # type: ignore[attr-defined]
    s = samples(m)
    model = (("model", "clf"), ("version", "3"))
    req = (("code", "200"), ("endpoint", "infer"), ("model", "clf"), ("version", "3"))
    assert s[("modelyard_inference_requests_total", req)] == 1.0
    assert s[("modelyard_inference_request_duration_seconds_count", req[1:])] == 1.0
    assert s[("modelyard_inference_request_duration_seconds_sum", req[1:])] == pytest.approx(0.004)
    assert s[("modelyard_batch_size_sum", model)] == 5.0
    assert s[("modelyard_batch_size_bucket", (("le", "4.0"), *model))] == 0.0
    assert s[("modelyard_batch_size_bucket", (("le", "8.0"), *model))] == 1.0
    assert s[("modelyard_inference_compute_duration_seconds_sum", model)] == pytest.approx(0.002)
    assert s[("modelyard_inference_queue_duration_seconds_sum", model)] == pytest.approx(0.0005)
    assert s[("modelyard_cache_hits_total", model)] == 1.0
    assert s[("modelyard_cache_misses_total", model)] == 1.0
    assert s[("modelyard_inflight_requests", ())] == 1.0
    assert s[("modelyard_model_ready", model)] == 1.0


def test_buckets_cover_a_tenth_of_a_millisecond_to_ten_seconds_and_batches_to_256() -> None:
    m = ServerMetrics()
    m.queue_duration_seconds.labels("m", "1").observe(0.00005)
    m.batch_size.labels("m", "1").observe(1)
    s = samples(m)
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels) in s
        if name == "modelyard_inference_queue_duration_seconds_bucket"
    )
    assert les[0] == 0.0001 and les[-2] == 10.0 and les[-1] == float("inf")
    sizes = sorted(float(dict(labels)["le"]) for (name, labels) in s if name == "modelyard_batch_size_bucket")
    assert sizes[:-1] == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_each_instance_has_its_own_registry() -> None:
    a, b = ServerMetrics(), ServerMetrics()  # a shared registry would raise "Duplicated timeseries"
    assert a.registry is not b.registry
    a.observe_request("m", "1", "infer", 200, 0.01)
    sb = samples(b)
    assert not any(name == "modelyard_inference_requests_total" for name, _ in sb)
    assert (
        samples(a)[
            (
                "modelyard_inference_requests_total",
                (("code", "200"), ("endpoint", "infer"), ("model", "m"), ("version", "1")),
            )
        ]
        == 1.0
    )


def test_render_speaks_openmetrics_when_asked() -> None:
    m = ServerMetrics()
    m.inflight_requests.set(2)
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    body, content_type = m.render("text/plain")
    assert content_type.startswith("text/plain")
    assert b"modelyard_inflight_requests 2.0" in body
