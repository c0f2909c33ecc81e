"""An OpenVINO champion, chosen and registered by the pipeline, is served like any other: tritonclient (binary and
JSON) gets the outputs of the offline OpenVINO Runner the evidence was measured with, and Triton's listing calls
name OpenVINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.config import Policy, Settings
from modelyard.data.loaders import load_dataset
from modelyard.optimize.baseline import load_baseline
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from modelyard.runtime.preprocess import predict
from modelyard.serve.manifest import relocate
from tests.helpers.models import make_blobs
from tests.helpers.serving import QUICK, server_process

MODEL = "blobs-ov"
RECIPE = "onnx > openvino"
CANDIDATE = "onnx>openvino"  # the recipe's candidate name


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    home = tmp_path_factory.mktemp("ov-home")
    model, data = onnx_classifier
    ds = load_dataset(data)
    run_pipeline(
        load_baseline(model, ds),
        ds,
        model_name=MODEL,
        model_source="test",
        recipes=[RECIPE],
        policy=Policy(),
        settings=Settings(home=home),
        options=QUICK,
    )
    return Registry(home)


@pytest.fixture(scope="module")
def version(registry: Registry) -> int:
    """The registered OpenVINO version, made the champion (whatever the gate chose)."""
    versions = registry.list_versions(MODEL)
    found = [v["version"] for v in versions if v["candidate"] == CANDIDATE]
    assert len(found) == 1, [(v["version"], v["candidate"]) for v in versions]
    if registry.list_models()[0]["aliases"].get("champion") != found[0]:
        registry.promote(MODEL, found[0], reason="test: serve the OpenVINO candidate")
    return int(found[0])


def test_the_pipeline_registers_an_openvino_candidate_that_can_be_champion(
    registry: Registry, version: int
) -> None:
    manifest = registry.get_version(MODEL, version)["manifest"]
    assert manifest["format"] == "openvino"
    assert registry.list_models()[0]["aliases"]["champion"] == version


def test_tritonclient_gets_the_offline_openvino_runners_outputs(
    registry: Registry, version: int, tmp_path: Path
) -> None:
    import tritonclient.http as triton

    # the offline Runner: the registered files, loaded as the pipeline loads a candidate, outside any server
    cand: Candidate = relocate(
        registry.get_version(MODEL, version)["manifest"], registry.materialize(MODEL, version, tmp_path / "v")
    )
    assert cand.format == "openvino"
    x = make_blobs(n=16, seed=5)[0]
    expected = predict(cand.load(threads=1), cand.preprocessor(), x)
    with server_process(registry.home, tmp_path, f"{MODEL}@champion", "--no-batching") as server:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["platform"] == "openvino_ir" and meta["versions"] == [str(version)]
        config = client.get_model_config(MODEL)
        assert config["backend"] == "openvino" and config["input"][0]["data_type"] == "TYPE_FP32"
        assert client.get_model_repository_index() == [
            {"name": MODEL, "version": str(version), "state": "READY", "reason": ""}
        ]
        for binary in (True, False):
            inp = triton.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
            result = client.infer(MODEL, [inp], outputs=outs, request_id=f"ov-{binary}")
            assert np.array_equal(result.as_numpy("logits"), expected), binary
            probs = result.as_numpy("probabilities")
            assert probs.shape == (16, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            assert result.get_response()["model_version"] == str(version)
        client.close()
