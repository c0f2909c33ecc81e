"""The model audit and the security measurements (metrics.md 5.7): malicious files fail, safetensors
and ONNX pass, verdicts carry hashes and picklescan's second opinion, UNKNOWN fails closed."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, ConfigError
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.security.audit import audit_model, backdoor_measurement, candidate_scan_measurement
from modelyard.security.backdoor import backdoor_scan
from tests.helpers.models import tiny_bert_candidate
from tests.helpers.security import MALICIOUS, OS_SYSTEM_P2, onnx_with_external, write_zip

SPEC = RunnerSpec(
    inputs=(TensorSpec("features", "float32", (None, 3)),),
    outputs=(TensorSpec("logits", "float32", (None, 2)),),
    task="classification",
    num_classes=2,
)


class _EvalOnLoad:
    """Pickles to builtins.eval('1+1') through STACK_GLOBAL (protocol 4); never unpickled here."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("1+1",))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_dict_file(path: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ------------------------------------------------------------------------------------------ audit_model


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_pickles_fail_the_audit(name: str, tmp_path: Path) -> None:
    data, dangerous = MALICIOUS[name]
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    report = audit_model(path)
    assert report["status"] == "FAIL" and report["ok"] is False
    assert report["format"] == "pickle" and report["pickle_based"] is True
    assert dangerous in report["globals"]
    assert any(dangerous in f for f in report["findings"])
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["size_bytes"] == len(data) and report["n_files"] == 1
    assert report["picklescan"]["ran"] is True
    json.dumps(report)


def test_eval_through_stack_global_fails_with_picklescan_agreeing(tmp_path: Path) -> None:
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(_EvalOnLoad(), protocol=4))
    report = audit_model(path)
    assert report["status"] == "FAIL"
    assert report["findings"][0].endswith(
        "imports builtins.eval: dangerous: it can run code or touch the system"
    )
    assert report["picklescan"] == {
        "ran": True,
        "available": True,
        "messages": ["picklescan (second opinion) reports dangerous globals: builtins.eval"],
    }


def test_checkpoint_zip_with_a_malicious_data_pkl_fails(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    write_zip(
        path, {"archive/data.pkl": OS_SYSTEM_P2, "archive/version": b"3\n", "archive/data/0": b"\0" * 8}
    )
    report = audit_model(path)
    assert (report["status"], report["format"]) == ("FAIL", "torch-zip")
    assert report["findings"][0].startswith("archive/data.pkl: GLOBAL at byte 2 imports os.system")
    assert report["picklescan"]["messages"] == [
        "picklescan (second opinion) reports dangerous globals: os.system"
    ]


def test_a_folder_with_a_malicious_checkpoint_fails_and_is_hashed_file_by_file(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
    (folder / "pytorch_model.bin").write_bytes(OS_SYSTEM_P2)
    report = audit_model(folder)
    assert (report["status"], report["format"]) == ("FAIL", "hf-folder")
    assert report["findings"][0].startswith("pytorch_model.bin: ")
    assert [f["path"] for f in report["files"]] == ["config.json", "pytorch_model.bin"]
    assert report["files"][1]["sha256"] == hashlib.sha256(OS_SYSTEM_P2).hexdigest()
    total = hashlib.sha256()
    for name in ("config.json", "pytorch_model.bin"):
        total.update(name.encode() + b"\0" + (folder / name).read_bytes())
    assert report["sha256"] == total.hexdigest()


def test_a_safetensors_state_dict_passes(tmp_path: Path) -> None:
    path = state_dict_file(tmp_path / "model.safetensors")
    report = audit_model(path)
    assert (report["status"], report["ok"], report["format"]) == ("PASS", True, "safetensors")
    assert report["findings"] == [] and report["pickle_based"] is False
    assert report["picklescan"]["ran"] is False
    assert report["sha256"] == sha256(path)
    assert report["files"] == [
        {"path": "model.safetensors", "size_bytes": path.stat().st_size, "sha256": sha256(path)}
    ]


def test_an_onnx_classifier_passes(onnx_classifier: tuple[Path, Path]) -> None:
    path, _ = onnx_classifier
    report = audit_model(path)
    assert (report["status"], report["format"]) == ("PASS", "onnx")
    assert any(n.startswith("opsets: ai.onnx") for n in report["notes"])
    assert report["sha256"] == sha256(path)


def test_truncated_and_unknown_files_are_unknown_and_missing_ones_raise(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2)[:10])
    assert audit_model(path)["status"] == "UNKNOWN"
    junk = tmp_path / "weights.dat"
    junk.write_bytes(b"\x00\x01not a model")
    report = audit_model(junk)
    assert (report["status"], report["ok"]) == ("UNKNOWN", False)
    with pytest.raises(ArtifactError, match="model file not found"):
        audit_model(tmp_path / "nope.onnx")


# ------------------------------------------------------------------------------ security.file_scan


def test_scan_measurement_passes_for_a_safetensors_candidate(tmp_path: Path) -> None:
    path = state_dict_file(tmp_path / "model.safetensors")
    m = candidate_scan_measurement(Candidate("baseline", "torch", path, SPEC))
    assert (m.name, m.value, m.unit, m.status) == ("security.file_scan", 1.0, "pass", "ok")
    assert m.details["verdict"] == "PASS" and m.details["format"] == "safetensors"
    assert m.details["files"] == [
        {"path": "model.safetensors", "size_bytes": path.stat().st_size, "sha256": sha256(path)}
    ]
    json.dumps(m.to_dict())


def test_scan_measurement_fails_for_a_malicious_candidate(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(OS_SYSTEM_P2)
    m = candidate_scan_measurement(Candidate("evil", "torch", path, SPEC, meta={"torch_kind": "torchscript"}))
    assert (m.value, m.status, m.details["verdict"]) == (0.0, "ok", "FAIL")
    assert m.details["pickle_based"] is True
    assert any("os.system" in f for f in m.details["findings"])


def test_scan_measurement_is_unknown_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x02]q\x00(K\x01")  # a pickle cut short
    m = candidate_scan_measurement(Candidate("cut", "torch", path, SPEC))
    assert (m.value, m.status, m.details["verdict"]) == (None, "unknown", "UNKNOWN")
    assert m.details["reason"].startswith(
        "the scan could not verify the artifact: pickle at byte 0 ended without"
    )
    gone = candidate_scan_measurement(Candidate("gone", "onnx", tmp_path / "missing.onnx", SPEC))
    assert (gone.value, gone.status) == (None, "unknown")
    assert gone.details["reason"].startswith("the artifact could not be scanned: model file not found")


def test_onnx_external_data_is_covered_by_the_onnx_scan(tmp_path: Path) -> None:
    path = onnx_with_external(tmp_path / "m", "model.onnx.data")
    (tmp_path / "m" / "model.onnx.data").write_bytes(np.zeros(2, dtype=np.float32).tobytes())
    cand = Candidate("x", "onnx", path, SPEC)
    assert [p.name for p in cand.files()] == ["model.onnx", "model.onnx.data"]
    m = candidate_scan_measurement(cand)
    assert (m.value, m.details["verdict"], m.details["n_files"]) == (1.0, "PASS", 2)
    assert "1 tensor(s) stored as external data inside the model folder" in m.details["notes"]
    assert [f["path"] for f in m.details["files"]] == ["model.onnx", "model.onnx.data"]


def test_a_stray_file_next_to_a_non_onnx_artifact_is_scanned(tmp_path: Path) -> None:
    path = state_dict_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors.data").write_bytes(OS_SYSTEM_P2)
    m = candidate_scan_measurement(Candidate("x", "torch", path, SPEC))
    assert (m.value, m.details["verdict"]) == (0.0, "FAIL")
    assert m.details["findings"][0].startswith("model.safetensors.data: GLOBAL at byte 2 imports os.system")


def test_a_hugging_face_folder_candidate_is_scanned_as_a_folder(tmp_path: Path) -> None:
    cand = tiny_bert_candidate(tmp_path / "bert", "classification")
    m = candidate_scan_measurement(cand)
    assert (m.value, m.details["format"]) == (1.0, "hf-folder")
    assert {f["path"] for f in m.details["files"]} >= {"config.json", "model.safetensors", "tokenizer.json"}


# -------------------------------------------------------------------- security.backdoor_flagged_classes


def _scan(poisoned: bool) -> dict[str, object]:
    rng = np.random.default_rng(0)
    main = rng.normal(size=(100, 8))
    if poisoned:
        extra = 2.0 * rng.normal(size=(30, 8))
        extra[:, 0] += 15.0
    else:
        extra = rng.normal(size=(30, 8))
    other = rng.normal(size=(130, 8)) + 20.0
    labels = np.repeat([0, 1], 130)
    return backdoor_scan(np.vstack([main, extra, other]), labels, classes=["cat", "dog"])


def test_backdoor_measurement_counts_flagged_classes() -> None:
    m = backdoor_measurement(_scan(poisoned=True))
    assert (m.name, m.value, m.unit, m.status) == ("security.backdoor_flagged_classes", 1.0, "classes", "ok")
    assert m.details["flagged_classes"] == ["cat"]
    assert m.details["n_suspicious"] == 30
    assert m.details["suspicious_indices"] == list(range(100, 130))
    assert "activation clustering" in m.details["method"]
    assert m.details["limits"].endswith("a clean scan is not proof")
    clean = backdoor_measurement(_scan(poisoned=False))
    assert (clean.value, clean.details["flagged_classes"], clean.details["n_suspicious"]) == (0.0, [], 0)
    json.dumps(m.to_dict())


def test_backdoor_measurement_is_unknown_when_the_scan_could_not_run() -> None:
    m = backdoor_measurement(None, "no labelled training data")
    assert (m.value, m.status, m.details) == (None, "unknown", {"reason": "no labelled training data"})
    assert backdoor_measurement(None).details["reason"] == "the backdoor scan did not run"
    tiny = backdoor_measurement(backdoor_scan(np.eye(6), np.arange(6)))
    assert (tiny.value, tiny.status) == (None, "unknown")
    assert tiny.details["reason"].startswith("the backdoor scan could analyse no class")
    assert tiny.details["skipped_classes"] == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(ConfigError, match="scan must be the dict backdoor_scan"):
        backdoor_measurement({"flagged": 1})
