"""Exports for the servers teams already run (``modelyard export``), checked structurally since no Triton or
Kubernetes runs here: ``config.pbtxt`` parsed into Triton's own ``ModelConfig`` message (tritonclient's
generated protobuf), the InferenceService manifest against a schema of the KServe fields it uses, and the ONNX
export's sidecar read back and used to reproduce the server's answers."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
import yaml

from modelyard.cli import main
from modelyard.config import Policy, Settings
from modelyard.errors import ConfigError, DataError
from modelyard.export import ExportOptions, export_model, read_sidecar
from modelyard.export.pbtxt import to_pbtxt
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry, VersionEntry
from tests.helpers.cli import assert_one_line_error
from tests.helpers.serving import QUICK

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient[grpc] is not installed (pip install -r requirements-dev.lock)",
)
from google.protobuf import json_format, text_format  # noqa: E402  (after the skip above)

MODEL = "digits"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A digits-like champion: a tiny CNN on scikit-learn's 8x8 digits, exported to ONNX (input "pixels"
    [N, 1, 8, 8]), run through the pipeline (baseline only, no data audit) with an OOD set and peak-memory
    measurement; champion v1."""
    import torch

    from modelyard.optimize.baseline import load_baseline
    from modelyard.zoo.demos import digits_dataset
    from modelyard.zoo.train import train_classifier

    d = tmp_path_factory.mktemp("export")
    ds = digits_dataset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10)
    )
    train_classifier(net, ds.x_train, ds.y_train, epochs=2, lr=1e-2, seed=0)
    path = d / "digits.onnx"
    torch.onnx.export(
        net.eval(),
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
    )
    base = load_baseline(path, ds)
    noise = np.random.default_rng(3).uniform(0, 1, size=(80, 1, 8, 8)).astype(np.float32)
    home = d / "home"
    run_pipeline(
        base,
        ds,
        model_name=MODEL,
        model_source="test",
        recipes=[],
        policy=Policy(),
        settings=Settings(home=home),
        options=dataclasses.replace(QUICK, measure_rss=True, data_audit=False, backdoor_scan=False),
        ood_data={"noise": noise},
    )
    reg = Registry(home)
    if reg.list_models()[0]["aliases"].get("champion") != 1:
        reg.promote(MODEL, 1, reason="test: export version 1")
    return reg


def _parse(text: str) -> Any:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


# ---------------------------------------------------------------------------------------------------
# triton


def test_triton_config_parses_into_tritons_model_config(registry: Registry, tmp_path: Path) -> None:
    result = export_model(registry, f"{MODEL}@champion", ExportOptions("triton", tmp_path / "repo"))
    folder = tmp_path / "repo" / MODEL
    assert result.folder == folder and result.version == 1
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "config.pbtxt",
    ]
    config = _parse((folder / "config.pbtxt").read_text())
    assert config.name == MODEL and config.platform == "onnxruntime_onnx"
    assert list(config.version_policy.specific.versions) == [1]
    [inp] = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("pixels", model_config_pb2.TYPE_FP32, [1, 8, 8])
    [out] = config.output
    assert (out.name, out.data_type, list(out.dims)) == ("logits", model_config_pb2.TYPE_FP32, [10])
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU

    # batching: what the server chooses from the same evidence (state.batching_for), in Triton's fields
    from modelyard.serve.model import ServedModel
    from modelyard.serve.settings import ServeSettings
    from modelyard.serve.state import batching_for

    served = ServedModel.load(registry, f"{MODEL}:1", threads=1, workdir=tmp_path / "w")
    chosen = batching_for(ServeSettings.from_env({}, home=registry.home), served)
    served.close()
    assert config.max_batch_size == chosen.max_batch_size
    assert config.parameters["modelyard_batching"].string_value == chosen.why
    if chosen.max_batch_size > 1:
        assert list(config.dynamic_batching.preferred_batch_size) == [chosen.max_batch_size]
        assert config.dynamic_batching.max_queue_delay_microseconds == int(chosen.max_wait_s * 1e6)
    else:
        assert not config.HasField("dynamic_batching")
    threads = registry.get_version(MODEL, 1)["evidence"].measurements["efficiency.throughput_best"].details
    assert config.parameters["intra_op_thread_count"].string_value == str(threads["threads"])

    # the exported file is the registered artifact, runnable as Triton's ONNX Runtime backend would
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixels"]
    assert sess.run(None, {"pixels": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)


def test_batching_overrides_reach_the_config(registry: Registry, tmp_path: Path) -> None:
    export_model(
        registry, f"{MODEL}:1", ExportOptions("triton", tmp_path, max_batch_size=16, max_wait_ms=2.5)
    )
    config = _parse((tmp_path / MODEL / "config.pbtxt").read_text())
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500


def test_corrupted_fields_fail_to_parse(registry: Registry, tmp_path: Path) -> None:
    export_model(registry, f"{MODEL}:1", ExportOptions("triton", tmp_path))
    text = (tmp_path / MODEL / "config.pbtxt").read_text()
    _parse(text)  # the file as written parses
    corruptions = [
        ("data_type: TYPE_FP32", "data_type: TYPE_FLOAT32"),  # no such enum value
        ("max_batch_size:", "max_batch:"),  # no such field
        ('platform: "onnxruntime_onnx"', "platform: onnxruntime_onnx"),  # a string field given a bare word
        ("dims: [ 1, 8, 8 ]", 'dims: [ "1", 8, 8 ]'),  # an int64 given a string
    ]
    for old, new in corruptions:
        assert old in text, old
        with pytest.raises(text_format.ParseError):
            _parse(text.replace(old, new, 1))


def test_served_config_json_is_a_valid_model_config(registry: Registry, tmp_path: Path) -> None:
    """The server's own /config answer (which the export builds on) fits Triton's message too."""
    from modelyard.serve.model import ServedModel
    from modelyard.serve.settings import ServeSettings
    from modelyard.serve.state import batching_for
    from modelyard.serve.triton import config_for

    served = ServedModel.load(registry, f"{MODEL}:1", threads=1, workdir=tmp_path)
    try:
        batching = batching_for(ServeSettings.from_env({}, home=registry.home), served)
        served_config = config_for(served, batching)
        graph_config = config_for(served, batching, graph=True)
    finally:
        served.close()
    msg = json_format.ParseDict(served_config, model_config_pb2.ModelConfig())
    assert [o.name for o in msg.output][:2] == ["logits", "probabilities"]
    assert [o["name"] for o in graph_config["output"]] == ["logits"]
    # our text writer and protobuf's own JSON reading agree on the same dict
    assert _parse(to_pbtxt(graph_config)) == json_format.ParseDict(
        graph_config, model_config_pb2.ModelConfig()
    )


def test_pbtxt_strings_round_trip() -> None:
    tricky = 'say "hi"\\ then\na tab\there, ünïcode and a bell \x07'
    msg = _parse(to_pbtxt({"name": "m", "parameters": {"k": {"string_value": tricky}}}))
    assert msg.parameters["k"].string_value == tricky
    with pytest.raises(ConfigError, match="enum"):
        to_pbtxt({"input": [{"data_type": "TYPE FP32"}]})
    with pytest.raises(ConfigError, match="finite"):
        to_pbtxt({"x": float("nan")})


# ---------------------------------------------------------------------------------------------------
# kserve

QUANTITY = r"^[+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_RESOURCE_LIST = {
    "type": "object",
    "properties": {
        "cpu": {"type": "string", "pattern": QUANTITY},
        "memory": {"type": "string", "pattern": QUANTITY},
    },
    "required": ["cpu", "memory"],
    "additionalProperties": False,
}
# The InferenceService fields the export writes, from KServe's v1beta1 API reference (InferenceService,
# InferenceServiceSpec, PredictorSpec.model: ModelSpec with ModelFormat, protocolVersion, runtime, storageUri
# and the container's ResourceRequirements); unknown fields are refused so a typo cannot pass.
INFERENCE_SERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {
                    "type": "object",
                    "propertyNames": {
                        "pattern": r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
                    },
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["model"],
                    "additionalProperties": False,
                    "properties": {
                        "model": {
                            "type": "object",
                            "required": ["modelFormat", "storageUri"],
                            "additionalProperties": False,
                            "properties": {
                                "modelFormat": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                                },
                                "runtime": {"type": "string"},
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                                "storageUri": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*://\\S+$"},
                                "resources": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"requests": _RESOURCE_LIST, "limits": _RESOURCE_LIST},
                                },
                            },
                        }
                    },
                }
            },
        },
    },
}


def _schema_errors(doc: Any) -> list[str]:
    validator = jsonschema_rs.validator_for(INFERENCE_SERVICE_SCHEMA)
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _mib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)Mi", quantity)
    assert m, quantity
    return float(m[1])


@pytest.mark.parametrize("runtime", ["onnx", "triton"])
def test_kserve_manifest_has_the_inference_service_fields(
    registry: Registry, tmp_path: Path, runtime: str
) -> None:
    uri = "s3://models-bucket/digits"
    result = export_model(
        registry, MODEL, ExportOptions("kserve", tmp_path, storage_uri=uri, runtime=runtime)
    )
    doc = yaml.safe_load((result.folder / "inferenceservice.yaml").read_text())
    assert _schema_errors(doc) == []
    model = doc["spec"]["predictor"]["model"]
    assert doc["metadata"]["name"] == "digits"
    assert model["protocolVersion"] == "v2" and model["storageUri"] == uri
    if runtime == "onnx":
        assert model["modelFormat"] == {"name": "onnx"} and "runtime" not in model
    else:
        assert model["modelFormat"] == {"name": "triton"} and model["runtime"] == "kserve-tritonserver"
    # resources from the evidence: the measured peak memory with headroom, the measured threads
    evidence = registry.get_version(MODEL, 1)["evidence"].measurements
    peak_mib = evidence["efficiency.peak_rss_bytes"].value / 2**20
    req, lim = model["resources"]["requests"], model["resources"]["limits"]
    assert peak_mib * 1.5 <= _mib(req["memory"]) < peak_mib * 1.5 + 1
    assert _mib(lim["memory"]) == 2 * _mib(req["memory"])
    assert req["cpu"] == lim["cpu"] == str(evidence["efficiency.throughput_best"].details["threads"])
    # the storage content: the Triton repository the runtime loads
    repo = result.folder / "model-repository" / MODEL
    assert _parse((repo / "config.pbtxt").read_text()).name == MODEL
    assert (repo / "1" / "model.onnx").is_file()


def test_schema_rejects_what_kserve_would() -> None:
    """The schema above can fail: the mistakes it exists to catch are caught."""
    good = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "digits"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "gs://b/m"}}},
    }
    assert _schema_errors(good) == []
    bad_name = json.loads(json.dumps(good))
    bad_name["metadata"]["name"] = "Digits_v1"
    bad_field = json.loads(json.dumps(good))
    bad_field["spec"]["predictor"]["model"]["storageURI"] = "gs://b/m"
    bad_memory = json.loads(json.dumps(good))
    bad_memory["spec"]["predictor"]["model"]["resources"] = {"requests": {"cpu": "1", "memory": "1 GB"}}
    for doc in (bad_name, bad_field, bad_memory):
        assert _schema_errors(doc) != []


def test_kserve_refuses_bad_input_without_writing(registry: Registry, tmp_path: Path) -> None:
    cases = [
        ({}, "--storage-uri"),
        ({"storage_uri": "ftp://host/m"}, "not one KServe downloads from"),
        ({"storage_uri": "pvc://claim"}, "names no folder"),
        ({"storage_uri": "s3://b/m", "service_name": "Bad_Name"}, "DNS-1035"),
        ({"storage_uri": "s3://b/m", "memory": "lots"}, "Kubernetes quantity"),
        ({"storage_uri": "s3://b/m", "runtime": "tensorrt"}, "unknown KServe runtime"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ConfigError, match=match):
            export_model(registry, MODEL, ExportOptions("kserve", tmp_path / "out", **kwargs))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_kserve_memory_given_when_the_evidence_has_none(registry: Registry, tmp_path: Path) -> None:
    """A version whose evidence has no measured peak memory (registered here from v1's files and evidence,
    the peak made unknown) needs --memory."""
    from modelyard.evaluate.schema import Measurement

    info = registry.get_version(MODEL, 1)
    files = registry.materialize(MODEL, 1, tmp_path / "v1")
    evidence = info["evidence"]
    unknown = Measurement(
        name="efficiency.peak_rss_bytes",
        value=None,
        unit="bytes",
        interval=None,
        status="unknown",
        details={"reason": "not measured (measure_rss=False)"},
    )
    measurements = {**evidence.measurements, "efficiency.peak_rss_bytes": unknown}
    entry = VersionEntry(
        name="no-peak",
        files={f["path"]: files / f["path"] for f in info["files"]},
        manifest=info["manifest"],
        evidence=evidence.model_copy(update={"measurements": measurements}),
    )
    reg = Registry(tmp_path / "home")
    reg.register_run("nopeak", [entry], run_id="r1", champion=None, reason="test")
    with pytest.raises(ConfigError, match=r"no measured peak memory \(not measured \(measure_rss=False\)\)"):
        export_model(reg, "nopeak", ExportOptions("kserve", tmp_path / "o", storage_uri="gs://b/m"))
    options = ExportOptions("kserve", tmp_path / "o", storage_uri="gs://b/m", memory="1Gi")
    doc = yaml.safe_load((export_model(reg, "nopeak", options).folder / "inferenceservice.yaml").read_text())
    assert _schema_errors(doc) == []
    assert doc["spec"]["predictor"]["model"]["resources"]["limits"]["memory"] == "1Gi"
    assert "as given" in doc["metadata"]["annotations"]["modelyard.io/resources"]


# ---------------------------------------------------------------------------------------------------
# onnx + sidecar


def test_onnx_sidecar_round_trips_and_reproduces_the_server(registry: Registry, tmp_path: Path) -> None:
    import onnxruntime as ort

    from modelyard.monitor.reference_load import load_reference
    from modelyard.serve.model import ServedModel
    from modelyard.serve.outputs import classifier_outputs

    result = export_model(registry, f"{MODEL}:1", ExportOptions("onnx", tmp_path))
    exported = read_sidecar(result.folder)
    info = registry.get_version(MODEL, 1)
    serving = info["manifest"]["meta"]["serving"]
    side = exported.sidecar
    assert (side["model"], side["version"], side["artifact_sha256"]) == (MODEL, 1, info["artifact_sha256"])
    assert exported.input_contract == serving["input_contract"]
    assert exported.temperature == pytest.approx(serving["temperature"])
    assert exported.ood_rule == serving["ood"] and exported.ood_rule is not None
    assert {f["path"]: f["sha256"] for f in info["files"]} == side["files"]
    assert side["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert side["classes"] == [str(i) for i in range(10)]
    ref_path = exported.reference_path
    assert ref_path is not None and load_reference(ref_path).ood is not None

    # the exported file plus the sidecar's rules give what the server answers
    x = np.random.default_rng(0).uniform(0, 1, size=(5, 1, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    ours = classifier_outputs(
        sess.run(None, {"pixels": x})[0], temperature=exported.temperature, ood_rule=exported.ood_rule
    )
    served = ServedModel.load(registry, f"{MODEL}:1", threads=1, workdir=tmp_path / "w")
    try:
        theirs = served.run_batch([served.prepare_feeds({"pixels": x})])[0]
    finally:
        served.close()
    for key in ("probabilities", "ood_score", "ood_flag"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)


def test_sidecar_detects_a_changed_file(registry: Registry, tmp_path: Path) -> None:
    result = export_model(registry, f"{MODEL}:1", ExportOptions("onnx", tmp_path))
    model = result.folder / read_sidecar(result.folder).sidecar["model_file"]
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(DataError, match="does not match its SHA-256"):
        read_sidecar(result.folder)
    with pytest.raises(DataError, match="cannot read"):
        read_sidecar(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------
# refusals and the CLI


def test_non_onnx_versions_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"not really weights")
    reg = Registry(tmp_path / "home")
    manifest = {
        "name": "baseline",
        "format": "torch",
        "path": str(src),
        "spec": {"inputs": [], "outputs": [], "task": "classification"},
        "meta": {},
    }
    reg.register_run(
        "torchy",
        [VersionEntry("baseline", {"model.safetensors": src}, manifest)],
        run_id="r1",
        champion="baseline",
        reason="t",
    )
    for fmt in ("triton", "onnx"):
        with pytest.raises(ConfigError, match="export it to ONNX first"):
            export_model(reg, "torchy", ExportOptions(fmt, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_existing_output_is_never_replaced(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / MODEL).mkdir()
    (tmp_path / MODEL / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="already exists"):
        export_model(registry, MODEL, ExportOptions("triton", tmp_path))
    assert (tmp_path / MODEL / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL]  # no staging folder left behind


def test_cli_export(registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(registry.home)]
    assert main(["export", f"{MODEL}@champion", "--format", "triton", "--out", str(tmp_path), *home]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / MODEL / "config.pbtxt").is_file() and "batching" in out and "config.pbtxt" in out
    code = main(["export", MODEL, "--format", "tensorrt", "--out", str(tmp_path / "x"), *home])
    assert_one_line_error(code, capsys.readouterr().err, "unknown export format")
    code = main(["export", MODEL, "--format", "kserve", "--out", str(tmp_path / "x"), *home])
    assert_one_line_error(code, capsys.readouterr().err, "--storage-uri")
    assert not (tmp_path / "x").exists()
