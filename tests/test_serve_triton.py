"""Triton's model-repository index and model-configuration requests, answered for the served models (the
real tritonclient calls them in test_serve_process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.registry import Registry
from tests.helpers.serving import MODEL, app_client, build_blobs_registry, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    return build_blobs_registry(tmp_path_factory.mktemp("triton-home"), onnx_classifier)


async def test_repository_index_lists_the_served_models(registry: Registry) -> None:
    async with app_client(settings_for(registry), registry) as (_, client):
        for body in (None, {"ready": True}, {}):
            r = await client.post("/v2/repository/index", json=body)
            assert r.status_code == 200, r.text
            assert r.json() == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
        bad = await client.post("/v2/repository/index", content=b'{"ready": "yes"}')
        assert bad.status_code == 400 and "ready" in bad.json()["error"]


async def test_model_config_in_tritons_form(registry: Registry) -> None:
    async with app_client(settings_for(registry, batching=False), registry) as (_, client):
        for url in (f"/v2/models/{MODEL}/config", f"/v2/models/{MODEL}/versions/1/config"):
            r = await client.get(url)
            assert r.status_code == 200, r.text
            config = r.json()
            assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
            assert config["backend"] == "onnxruntime"
            assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [6]}]
            assert {o["name"]: o["data_type"] for o in config["output"]}["logits"] == "TYPE_FP32"
            assert config["max_batch_size"] == 1 and "dynamic_batching" not in config
            assert "batching off" in config["parameters"]["modelyard_batching"]["string_value"]
        missing = await client.get("/v2/models/nope/config")
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        wrong = await client.get(f"/v2/models/{MODEL}/versions/9/config")
        assert wrong.status_code in (400, 404)


async def test_model_config_reports_the_measured_batching(registry: Registry) -> None:
    async with app_client(settings_for(registry, max_batch_size=8), registry) as (_, client):
        config = (await client.get(f"/v2/models/{MODEL}/config")).json()
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"] == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 0}
