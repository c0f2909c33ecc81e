"""The server app in-process: every endpoint, exact outputs against the offline Runner, every bad input
answered with the right 4xx and {"error"}, auth, body limit, a full queue, timeouts, cache and metrics."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.errors import ConfigError
from modelyard.evaluate.calibration import apply_temperature
from modelyard.evaluate.metrics import softmax
from modelyard.evaluate.ood import SCORES, energy_score
from modelyard.registry import Registry, VersionEntry
from modelyard.runtime.preprocess import predict
from modelyard.serve.app import create_app
from modelyard.serve.model import ServedModel, ort_spinning
from modelyard.serve.settings import ServeSettings
from tests.helpers.models import make_blobs, sentiment_texts, tiny_bert_candidate
from tests.helpers.serving import DEADLINE_S, MODEL, build_blobs_registry, settings_for

TEXT_MODEL = "sentiment"
EMBEDDER = "encoder"

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------------------------------------------
# registries ("blobs" is built by tests.helpers.serving, shared with the process and schemathesis tests)


def register_text_model(
    registry: Registry, folder: Path, *, name: str = TEXT_MODEL, task: str = "classification"
) -> None:
    """A tiny BERT registered by hand, without serving rules (as versions made before them)."""
    cand = tiny_bert_candidate(folder, task)
    files = {str(p.relative_to(folder)): p for p in cand.files()}
    registry.register_run(
        name,
        [VersionEntry(name="baseline", files=files, manifest=cand.to_dict())],
        run_id=f"{name}-run",
        champion="baseline",
        reason="test: a text model",
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    home = tmp_path_factory.mktemp("serve-home")
    reg = build_blobs_registry(home, onnx_classifier)
    register_text_model(reg, tmp_path_factory.mktemp("bert"))
    register_text_model(reg, tmp_path_factory.mktemp("bert-emb"), name=EMBEDDER, task="embedding")
    return reg


@pytest.fixture(scope="module")
def offline(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The offline reference: version 1 loaded as the server loads it, and test rows."""
    model = ServedModel.load(registry, f"{MODEL}:1", threads=1, workdir=tmp_path_factory.mktemp("offline"))
    x = make_blobs(n=12, seed=3)[0]
    logits = predict(model.runner, model.candidate.preprocessor(), x)
    return {"model": model, "x": x, "logits": logits}


@asynccontextmanager
async def serving(
    settings: ServeSettings, registry: Registry, *, wait_ready: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client talking to it in-process."""
    app = create_app(settings, registry=registry)
    async with app.router.lifespan_context(app):
        if wait_ready:
            assert await asyncio.to_thread(app.state.serve.loaded.wait, DEADLINE_S)
            assert app.state.serve.ready, app.state.serve.load_error
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def infer_body(x: np.ndarray, name: str = "features", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        **extra,
    }


def outputs_of(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}
    return {
        o["name"]: np.array(o["data"], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
        for o in doc["outputs"]
    }


def assert_error(r: httpx.Response, status: int, match: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    doc = r.json()
    assert set(doc) <= {"error", "ready"} and isinstance(doc["error"], str) and doc["error"]
    assert "Traceback" not in r.text
    assert match.lower() in doc["error"].lower(), doc["error"]


# ---------------------------------------------------------------------------------------------------
# settings


def test_settings_from_env_and_validation(tmp_path: Path) -> None:
    s = ServeSettings.from_env(
        {"MODELYARD_HOME": str(tmp_path), "MODELYARD_API_KEY": "zq-secret", "MODELYARD_THREADS": "2"}
    )
    assert (s.home, s.api_key, s.threads, s.host, s.port, s.cache_items) == (
        tmp_path,
        "zq-secret",
        2,
        "127.0.0.1",
        8000,
        0,
    )
    assert "zq-secret" not in repr(s) and "zq-secret" not in str(s)
    assert ServeSettings.from_env({}, models="m@champion", max_batch_size=None).models == ("m@champion",)
    with pytest.raises(ConfigError, match=r"port must be.*max_queue must be"):
        ServeSettings.from_env({}, port=0, max_queue=0)
    with pytest.raises(ConfigError, match="MODELYARD_API_KEY is set but empty"):
        ServeSettings.from_env({"MODELYARD_API_KEY": " "})
    with pytest.raises(ConfigError, match="unknown server setting"):
        ServeSettings.from_env({}, bogus=1)
    with pytest.raises(ConfigError, match="contradicts batching off"):
        ServeSettings.from_env({}, batching=False, max_batch_size=8)


# ---------------------------------------------------------------------------------------------------
# endpoints


async def test_health_and_metadata(registry: Registry) -> None:
    async with serving(settings_for(registry), registry) as c:
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        meta = (await c.get("/v2")).json()
        assert meta["name"] == "modelyard" and "binary_tensor_data" in meta["extensions"]
        m = (await c.get(f"/v2/models/{MODEL}")).json()
        assert m == (await c.get(f"/v2/models/{MODEL}/versions/1")).json()
        assert m["versions"] == ["1"] and m["platform"] == "onnx_onnxv1"
        assert m["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 6]}]
        assert [o["name"] for o in m["outputs"]] == ["logits", "probabilities", "ood_score", "ood_flag"]
        assert (await c.get(f"/v2/models/{MODEL}/ready")).json() == {"name": MODEL, "ready": True}
        assert (await c.get(f"/v2/models/{MODEL}/versions/1/ready")).status_code == 200
        assert_error(await c.get("/v2/models/nope"), 404, "unknown model 'nope'")
        assert_error(await c.get(f"/v2/models/{MODEL}/versions/2"), 404, "version '2' is not served")
        assert_error(await c.get(f"/v2/models/{MODEL}/versions/2/ready"), 404)
        assert_error(await c.post("/v2/models/nope/infer", json={}), 404)
        assert_error(await c.get("/no/such/path"), 404, "no such endpoint")
        assert_error(await c.delete("/v2"), 405, "not allowed")
        spec = (await c.get("/openapi.json")).json()
        infer = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
        assert {"application/json", "application/octet-stream"} <= set(infer)


async def test_not_ready_until_loaded_and_warm(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = ServedModel.warm_up

    def slow_warm_up(self: ServedModel, calls: int, *, batch_rows: int = 1) -> None:
        release.wait(DEADLINE_S)
        original(self, calls, batch_rows=batch_rows)

    monkeypatch.setattr(ServedModel, "warm_up", slow_warm_up)
    async with serving(settings_for(registry), registry, wait_ready=False) as c:
        assert_error(await c.get("/v2/health/ready"), 503, "warming up")
        assert_error(
            await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32))), 503
        )
        assert (await c.get("/v2/health/live")).status_code == 200
        release.set()
        assert await asyncio.to_thread(c.app.state.serve.loaded.wait, DEADLINE_S)  # type: ignore[attr-defined]
        assert (await c.get("/v2/health/ready")).status_code == 200


async def test_load_failure_is_reported_by_ready(registry: Registry) -> None:
    async with serving(settings_for(registry, models=("nope@champion",)), registry, wait_ready=False) as c:
        assert await asyncio.to_thread(c.app.state.serve.loaded.wait, DEADLINE_S)  # type: ignore[attr-defined]
        assert_error(await c.get("/v2/health/ready"), 503, "unknown model 'nope'")


async def test_oip_json_infer_equals_offline_runner_exactly(
    registry: Registry, offline: dict[str, Any]
) -> None:
    x, logits, model = offline["x"], offline["logits"], offline["model"]
    async with serving(settings_for(registry, batching=False), registry) as c:
        r = await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(x, id="req-1"))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["model_name"], doc["model_version"], doc["id"]) == (MODEL, "1", "req-1")
        out = outputs_of(doc)
        assert out["logits"].dtype == np.float32 and np.array_equal(out["logits"], logits)
        expected = softmax(apply_temperature(logits, model.temperature)).astype(np.float32)
        assert model.temperature != 1.0
        np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-6, atol=1e-7)
        rule = model.ood_rule
        assert rule is not None and rule["score"] in SCORES
        score = (
            energy_score(logits, T=rule["temperature"])
            if rule["score"] == "energy"
            else SCORES[rule["score"]](logits)
        )
        np.testing.assert_allclose(
            out["ood_score"], score, rtol=1e-12, atol=1e-12
        )  # same formula, no validation
        assert np.array_equal(out["ood_flag"], score > rule["threshold"])
        # nested data, and only the outputs asked for, one of them binary
        nested = {
            "inputs": [{"name": "features", "shape": [12, 6], "datatype": "FP32", "data": x.tolist()}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
        r = await c.post(f"/v2/models/{MODEL}/versions/1/infer", json=nested)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        n = int(r.headers["inference-header-content-length"])
        header = json.loads(r.content[:n])
        assert [o["name"] for o in header["outputs"]] == ["logits"]
        assert np.array_equal(np.frombuffer(r.content[n:], dtype="<f4").reshape(12, 3), logits)


async def test_ood_flag_rate_on_training_data_matches_the_rule(registry: Registry) -> None:
    """The threshold keeps 95% of in-distribution items (TPR target): the served flag rate on the training
    distribution stays near 5%, far below what a wrong sign or a wrong score would give."""
    x_id = make_blobs(n=240, seed=0)[0]
    async with serving(settings_for(registry), registry) as c:
        out = outputs_of((await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(x_id))).json())
    assert out["ood_flag"].mean() <= 0.25


async def test_predict_simple_json(registry: Registry, offline: dict[str, Any]) -> None:
    x, logits, model = offline["x"], offline["logits"], offline["model"]
    async with serving(settings_for(registry), registry) as c:
        r = await c.post("/predict", json={"inputs": x[:3].tolist()})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["model"], doc["version"]) == (MODEL, "1")
        probs = softmax(apply_temperature(logits[:3], model.temperature)).astype(np.float32)
        for p, row, lg in zip(doc["predictions"], probs, logits[:3], strict=True):
            assert p["class_index"] == int(lg.argmax()) and p["label"] == str(int(lg.argmax()))
            assert p["probabilities"] == pytest.approx(row.tolist(), abs=0)
            assert isinstance(p["ood"], bool)
        records = await c.post("/predict", json={"model": MODEL, "inputs": [{"features": x[0].tolist()}]})
        assert records.status_code == 200 and records.json()["predictions"][0] == doc["predictions"][0]


def test_the_served_runtime_spins_as_its_measured_latency_decides(offline: dict[str, Any]) -> None:
    model = offline["model"]
    spin, why = ort_spinning(model.evidence)
    assert model.candidate.format == "onnx" and model.evidence is not None
    assert model.runner.describe()["settings"]["spinning"] is spin and why in model.notes


async def test_text_model_over_oip_and_predict(registry: Registry, tmp_path: Path) -> None:
    texts = [t for t, _ in sentiment_texts(6)]
    model = ServedModel.load(registry, f"{TEXT_MODEL}@champion", threads=1, workdir=tmp_path)
    expected = predict(model.runner, model.candidate.preprocessor(), texts)
    assert model.ood_rule is None and model.temperature == 1.0  # registered without serving rules
    settings = settings_for(registry, models=(f"{TEXT_MODEL}@champion",))
    async with serving(settings, registry) as c:
        meta = (await c.get(f"/v2/models/{TEXT_MODEL}")).json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert meta["platform"] == "huggingface_pytorch"
        body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
        r = await c.post(f"/v2/models/{TEXT_MODEL}/infer", json=body)
        assert r.status_code == 200, r.text
        assert np.array_equal(outputs_of(r.json())["logits"], expected)
        p = (await c.post("/predict", json={"inputs": texts[:2]})).json()["predictions"]
        assert [q["label"] for q in p] == [("negative", "positive")[int(i)] for i in expected[:2].argmax(1)]
        assert p[0]["ood"] is None
        assert_error(await c.post("/predict", json={"inputs": [1, 2]}), 400, "list of strings")
        bad = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        assert_error(await c.post(f"/v2/models/{TEXT_MODEL}/infer", json=bad), 400, "datatype BYTES")


async def test_embedder_gives_embeddings(registry: Registry, tmp_path: Path) -> None:
    texts = [t for t, _ in sentiment_texts(4)]
    model = ServedModel.load(registry, EMBEDDER, threads=1, workdir=tmp_path)
    expected = predict(model.runner, model.candidate.preprocessor(), texts)
    async with serving(settings_for(registry, models=(EMBEDDER,), batching=False), registry) as c:
        meta = (await c.get(f"/v2/models/{EMBEDDER}")).json()
        assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}]
        body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
        out = outputs_of((await c.post(f"/v2/models/{EMBEDDER}/infer", json=body)).json())
        assert np.array_equal(out["embedding"], expected)
        p = (await c.post("/predict", json={"inputs": texts})).json()["predictions"]
        assert np.array_equal(np.array([q["embedding"] for q in p], np.float32), expected)


BAD_BODIES: dict[str, tuple[Any, str]] = {
    "not json": (b"{nope", "not valid JSON"),
    "no inputs": ({}, 'no "inputs"'),
    "unknown input": (
        {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6}]},
        "unexpected input 'x'",
    ),
    "wrong datatype": (
        {"inputs": [{"name": "features", "shape": [1, 6], "datatype": "FP64", "data": [0] * 6}]},
        "datatype FP32",
    ),
    "wrong shape": (
        {"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]},
        "expected shape",
    ),
    "count mismatch": (
        {"inputs": [{"name": "features", "shape": [2, 6], "datatype": "FP32", "data": [0] * 6}]},
        "needs 12",
    ),
    "nan": (
        {"inputs": [{"name": "features", "shape": [1, 6], "datatype": "FP32", "data": [float("nan")] * 6}]},
        "NaN",
    ),
    "empty batch": (
        {"inputs": [{"name": "features", "shape": [0, 6], "datatype": "FP32", "data": []}]},
        "empty batch",
    ),
    "unknown output": (
        {**infer_body(np.zeros((1, 6), np.float32)), "outputs": [{"name": "nope"}]},
        "unknown output 'nope'",
    ),
    "bad datatype": (
        {"inputs": [{"name": "features", "shape": [1], "datatype": "FP8", "data": [0]}]},
        "unknown datatype",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_infer_requests_get_400_and_the_server_keeps_serving(registry: Registry, case: str) -> None:
    body, match = BAD_BODIES[case]
    async with serving(settings_for(registry), registry) as c:
        kwargs = (
            {"content": body} if isinstance(body, bytes) else {"content": json.dumps(body, allow_nan=True)}
        )
        assert_error(await c.post(f"/v2/models/{MODEL}/infer", **kwargs), 400, match)
        ok = await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32)))
        assert ok.status_code == 200


async def test_bad_binary_requests(registry: Registry) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 6],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 24},
                }
            ]
        }
    ).encode()
    async with serving(settings_for(registry), registry) as c:
        url = f"/v2/models/{MODEL}/infer"
        assert_error(await c.post(url, content=header + b"\0" * 24), 400, "Inference-Header-Content-Length")
        short = {"Inference-Header-Content-Length": str(len(header))}
        assert_error(await c.post(url, content=header + b"\0" * 20, headers=short), 400, "too short")
        assert_error(
            await c.post(url, content=header, headers={"Inference-Header-Content-Length": "x"}),
            400,
            "byte count",
        )
        good = await c.post(url, content=header + np.ones(6, "<f4").tobytes(), headers=short)
        assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 3]


async def test_bad_predict_requests(registry: Registry) -> None:
    async with serving(settings_for(registry), registry) as c:
        assert_error(await c.post("/predict", json={"inputs": []}), 400, "inputs")
        assert_error(await c.post("/predict", json={"inputs": [[1, 2], [1]]}), 400, "one shape")
        assert_error(await c.post("/predict", json={"inputs": [["a"] * 6]}), 400, "numbers")
        assert_error(await c.post("/predict", json={"inputs": [[0] * 6], "extra": 1}), 400, "extra")
        assert_error(await c.post("/predict", json={"inputs": [[1e300] * 6]}), 400, "do not fit")
        assert_error(await c.post("/predict", json={"model": "nope", "inputs": [[0] * 6]}), 404)
        assert_error(await c.post("/predict", content=b"[1"), 400)
        assert (await c.post("/predict", json={"inputs": [[0] * 6]})).status_code == 200


# ---------------------------------------------------------------------------------------------------
# batching, queue, timeout


class Gate:
    """Makes ServedModel.run_batch wait for ``release`` once ``armed``, and fail for rows marked poisoned."""

    POISON = 99.0

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []
        original = ServedModel.run_batch
        gate = self

        def run_batch(model: ServedModel, items: Any) -> Any:
            if gate.armed:
                gate.batches.append(len(items))
                gate.entered.set()
                gate.release.wait(DEADLINE_S)
            if any(it.feeds is not None and np.any(it.feeds["features"] == gate.POISON) for it in items):
                raise ValueError("poisoned row")
            return original(model, items)

        monkeypatch.setattr(ServedModel, "run_batch", run_batch)


async def wait_until(check: Callable[[], bool]) -> None:
    """Yield to the event loop until ``check()`` holds (deadline-bound, no sleeping)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not check():
        assert loop.time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0)


async def test_a_bad_item_fails_only_its_own_request_in_a_batch(
    registry: Registry, offline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    x = offline["x"]
    settings = settings_for(registry, max_batch_size=64, cache_items=0)
    async with serving(settings, registry) as c:
        gate.armed = True
        url = f"/v2/models/{MODEL}/infer"
        first = asyncio.ensure_future(c.post(url, json=infer_body(x[:1])))
        await wait_until(gate.entered.is_set)
        poisoned = np.full((1, 6), Gate.POISON, np.float32)
        bodies = [infer_body(x[i : i + 2]) for i in range(0, 8, 2)]
        tasks = [asyncio.ensure_future(c.post(url, json=b)) for b in bodies]
        bad_task = asyncio.ensure_future(c.post(url, json=infer_body(poisoned)))
        invalid_task = asyncio.ensure_future(c.post(url, json=infer_body(np.zeros((1, 5), np.float32))))
        batcher = c.app.state.serve.slots[MODEL].current.batcher  # type: ignore[attr-defined]
        await wait_until(lambda: batcher.queued == 5)
        gate.release.set()
        responses = await asyncio.gather(first, *tasks)
        bad, invalid = await bad_task, await invalid_task
    assert gate.batches[:2] == [1, 5]  # the queued requests ran together, then again one by one
    for r, i in zip(responses[1:], range(0, 8, 2), strict=True):
        assert r.status_code == 200
        np.testing.assert_allclose(
            outputs_of(r.json())["logits"], offline["logits"][i : i + 2], rtol=1e-5, atol=1e-6
        )
    assert_error(bad, 500, "internal error")
    assert_error(invalid, 400, "expected shape")


async def test_full_queue_answers_503_with_retry_after(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    body = infer_body(np.zeros((1, 6), np.float32))
    async with serving(settings_for(registry, max_queue=1, batching=False), registry) as c:
        gate.armed = True
        url = f"/v2/models/{MODEL}/infer"
        running = asyncio.ensure_future(c.post(url, json=body))
        await wait_until(gate.entered.is_set)
        queued = asyncio.ensure_future(c.post(url, json=body))
        batcher = c.app.state.serve.slots[MODEL].current.batcher  # type: ignore[attr-defined]
        await wait_until(lambda: batcher.queued == 1)
        refused = await c.post(url, json=body)
        assert_error(refused, 503, "queue is full")
        assert int(refused.headers["retry-after"]) >= 1
        gate.release.set()
        assert (await running).status_code == 200 and (await queued).status_code == 200


async def test_timeout_answers_504(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    async with serving(settings_for(registry, request_timeout_s=0.05), registry) as c:
        gate.armed = True
        try:
            r = await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32)))
        finally:
            gate.release.set()
        assert_error(r, 504, "did not finish within 0.05 s")


# ---------------------------------------------------------------------------------------------------
# auth, body limit, cache, metrics, shutdown


async def test_auth(registry: Registry) -> None:
    async with serving(settings_for(registry, api_key="s3cret"), registry) as c:
        body = infer_body(np.zeros((1, 6), np.float32))
        url = f"/v2/models/{MODEL}/infer"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = await c.post(url, json=body, headers=headers)
            assert_error(r, 401, "API key")
            assert r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/metrics", "/v2", f"/v2/models/{MODEL}", "/openapi.json"):
            assert_error(await c.get(path), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert (await c.post(url, json=body, headers=ok)).status_code == 200
        assert (await c.get("/metrics", headers=ok)).status_code == 200
        assert (await c.get("/v2/health/live")).status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 200


async def test_body_limit_413(registry: Registry) -> None:
    async with serving(settings_for(registry, max_body_bytes=1000), registry) as c:
        url = f"/v2/models/{MODEL}/infer"
        big = infer_body(np.zeros((100, 6), np.float32))
        assert_error(await c.post(url, json=big), 413, "larger than the server's limit of 1000 bytes")

        async def stream() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(20):
                yield b" " * 100

        assert_error(await c.post(url, content=stream()), 413)
        assert (await c.post(url, json=infer_body(np.zeros((1, 6), np.float32)))).status_code == 200


async def test_cache_hits_and_metrics(registry: Registry) -> None:
    async with serving(settings_for(registry, cache_items=8), registry) as c:
        url = f"/v2/models/{MODEL}/infer"
        body = infer_body(np.ones((2, 6), np.float32))
        first, second = await c.post(url, json=body), await c.post(url, json=body)
        # the cached answer is the first one; each answer carries its own request id
        assert first.json()["id"] != second.json()["id"]
        assert {k: v for k, v in first.json().items() if k != "id"} == {
            k: v for k, v in second.json().items() if k != "id"
        }
        await c.post(url, json={"inputs": []})
        r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    labels = f'model="{MODEL}",version="1"'
    assert f"modelyard_cache_hits_total{{{labels}}} 1.0" in text
    assert f"modelyard_cache_misses_total{{{labels}}} 1.0" in text
    assert f"modelyard_model_ready{{{labels}}} 1.0" in text
    assert (
        f'modelyard_inference_requests_total{{code="200",endpoint="/v2/models/{{name}}/infer",{labels}}} 2.0'
        in text
    )
    assert 'code="400"' in text
    for name in (
        "modelyard_inference_request_duration_seconds_bucket",
        "modelyard_inference_queue_duration_seconds_bucket",
        "modelyard_inference_compute_duration_seconds_bucket",
        "modelyard_batch_size_bucket",
        "modelyard_inflight_requests",
    ):
        assert name in text


async def test_shutdown_refuses_new_requests_and_drains(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    body = infer_body(np.zeros((1, 6), np.float32))
    url = f"/v2/models/{MODEL}/infer"
    app = create_app(settings_for(registry), registry=registry)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        assert await asyncio.to_thread(app.state.serve.loaded.wait, DEADLINE_S)
        gate.armed = True
        in_flight = asyncio.ensure_future(c.post(url, json=body))
        await wait_until(gate.entered.is_set)
        closing = asyncio.ensure_future(ctx.__aexit__(None, None, None))
        await wait_until(lambda: app.state.serve.shutting_down)
        assert_error(await c.post(url, json=body), 503, "shutting down")
        assert_error(await c.get("/v2/health/ready"), 503)
        gate.release.set()
        assert (await in_flight).status_code == 200
        await closing
    assert app.state.serve.workdir is not None and not app.state.serve.workdir.exists()


# ---------------------------------------------------------------------------------------------------
# batching choice and the command line


def test_batching_choice(registry: Registry, offline: dict[str, Any]) -> None:
    from modelyard.serve.batcher import choose_batching
    from modelyard.serve.state import batching_for

    model = offline["model"]
    measured = batching_for(settings_for(registry), model)
    expected = choose_batching(model.measurements, latency_budget_ms=None, max_queue=256)
    assert (measured.max_batch_size, measured.max_wait_s, measured.why) == (
        expected.max_batch_size,
        expected.max_wait_s,
        expected.why,
    )
    off = batching_for(settings_for(registry, batching=False), model)
    assert off.max_batch_size == 1 and "off" in off.why
    forced = batching_for(settings_for(registry, max_batch_size=4, max_wait_ms=2, max_queue=9), model)
    assert (forced.max_batch_size, forced.max_wait_s, forced.max_queue) == (4, 0.002, 9)
    assert "command line" in forced.why


def test_cli_refuses_a_bad_reference_in_one_line(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import main

    assert main(["serve", "nope@champion", "--home", str(registry.home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and "Traceback" not in err and err.count("\n") == 1
    assert main(["serve", f"{MODEL}:1", "--home", str(registry.home), "--max-body-mb", "0"]) == 2
    assert "max_body_bytes must be an integer >= 1" in capsys.readouterr().err
