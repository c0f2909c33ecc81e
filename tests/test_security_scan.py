"""Model-file scanner: the malicious fixtures of metrics.md section 6.2, built in code, must never
pass and must be refused by require_safe; plain state dicts, safetensors and ONNX files must pass.
The malicious pickles are never unpickled: the ``no_unpickling`` fixture makes sure of it."""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from modelyard.errors import ArtifactError, UnsafeModelError
from modelyard.security import (
    ALLOWED_GLOBALS,
    ScanResult,
    detect_format,
    require_safe,
    scan_file,
    scan_pickle_bytes,
)
from tests.helpers.security import (
    MALICIOUS,
    NESTED_IN_DICT,
    NESTED_LOADS,
    OS_SYSTEM_P0,
    OS_SYSTEM_P2,
    STACK_GLOBAL_MEMO,
    onnx_with_external,
    write_zip,
)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to unpickle during the test fail loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scanner must never unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()


# --- pickle walker: section 6.2 fixtures --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_pickle_bytes_fail(name: str, no_unpickling: None) -> None:
    data, dangerous = MALICIOUS[name]
    result = scan_pickle_bytes(data)
    assert result.verdict == "fail"
    assert not result.ok
    assert dangerous in result.globals
    assert any(dangerous in f for f in result.findings)


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_pickle_file_refused_even_when_trusted(
    name: str, tmp_path: Path, no_unpickling: None
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(MALICIOUS[name][0])
    assert detect_format(path) == "pickle"
    assert scan_file(path).verdict == "fail"
    with pytest.raises(UnsafeModelError, match=r"model\.bin \(pickle\): security scan verdict is fail"):
        require_safe(path, trust_pickle=True)
    with pytest.raises(UnsafeModelError, match="verdict is fail"):
        require_safe(path, trust_pickle=False)


def test_stack_global_resolved_through_memo_names_the_real_callable() -> None:
    result = scan_pickle_bytes(STACK_GLOBAL_MEMO)
    assert result.globals == ["os.system"]
    assert (
        result.findings[0]
        == "STACK_GLOBAL at byte 22 imports os.system: dangerous: it can run code or touch the system"
    )


def test_nested_pickle_is_reported_with_its_inner_globals() -> None:
    result = scan_pickle_bytes(NESTED_IN_DICT)
    assert result.verdict == "fail"
    assert "collections.OrderedDict" in result.globals
    assert any("holds a nested pickle" in f for f in result.findings)
    assert any(f.startswith("nested pickle at byte") and "os.system" in f for f in result.findings)


def test_nested_loader_is_named_as_such() -> None:
    result = scan_pickle_bytes(NESTED_LOADS)
    assert any("pickle.loads: a nested unpickler" in f for f in result.findings)


def test_python2_names_must_be_allowed_before_and_after_mapping() -> None:
    result = scan_pickle_bytes(b"\x80\x02cUserDict\nOrderedDict\n)R.")
    assert result.globals == ["collections.OrderedDict"]
    assert result.verdict == "fail"
    assert "names UserDict.OrderedDict, which only maps to collections.OrderedDict" in result.findings[0]


def test_findings_are_capped_but_counted() -> None:
    data = b"\x80\x02" + b"".join(b"cos\nf%d\n0" % i for i in range(250)) + b"N."
    result = scan_pickle_bytes(data)
    assert result.verdict == "fail"
    assert len(result.globals) == 250
    assert len(result.findings) == 201
    assert result.findings[-1] == "... and 50 more findings"


def test_every_truncation_of_a_malicious_pickle_is_refused(no_unpickling: None) -> None:
    for data, _ in MALICIOUS.values():
        for end in range(len(data)):
            assert scan_pickle_bytes(data[:end]).verdict != "pass", (data, end)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # REDUCE on the result of a call, not on an allowlisted global.
        (b"\x80\x02ccollections\nOrderedDict\n)R)R.", "REDUCE at byte 30 calls a value that is not"),
        # BUILD that would set attributes on an imported class.
        (b"\x80\x02ccollections\nOrderedDict\nN}\x86b.", "BUILD at byte 30 modifies the imported object"),
        # copyreg extension registry import.
        (b"\x80\x02\x82\x01.", "EXT1 at byte 2 imports through the copyreg extension registry"),
        # STACK_GLOBAL whose operands are not strings.
        (b"\x80\x04K\x01K\x02\x93.", "STACK_GLOBAL at byte 6 takes operands the scanner cannot resolve"),
        # A GLOBAL whose operand cannot be split into module and name unambiguously.
        (b"\x80\x02ctorch nn\nModule\n.", "has an ambiguous operand"),
    ],
)
def test_walker_fails_closed_on_tricks(data: bytes, expected: str) -> None:
    result = scan_pickle_bytes(data)
    assert result.verdict == "fail"
    assert any(expected in f for f in result.findings), result.findings


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "ended without a STOP opcode"),
        (b"\x80\x02]q\x00(K\x01K\x02", "ended without a STOP opcode"),
        (b"\x80\x02h\x05.", "BINGET of memo slot 5 that was never stored"),
        (b"\x80\x02\xff.", "could not be parsed"),
        (b"\x80\x02N.\xff\xff", "pickle at byte 4 could not be parsed"),
        (b"\x80\x02N.garbage", "pickle at byte 4 ended without a STOP opcode"),
        (b"\x80\x02t.", "no MARK on the stack"),
        (b"\x80\x06N.", "protocol 6"),
    ],
)
def test_unreadable_pickles_are_unknown(data: bytes, expected: str) -> None:
    result = scan_pickle_bytes(data)
    assert result.verdict == "unknown"
    assert not result.ok
    assert any(expected in f for f in result.findings), result.findings


def test_truncated_state_dict_file_is_unknown_and_refused(tmp_path: Path) -> None:
    full = pickle.dumps(OrderedDict(a=1, b=[1.0, 2.0]), protocol=2)
    assert scan_pickle_bytes(full).verdict == "pass"
    path = tmp_path / "state.pkl"
    path.write_bytes(full[: len(full) // 2])
    result = scan_file(path)
    assert (result.format, result.verdict) == ("pickle", "unknown")
    with pytest.raises(UnsafeModelError, match=r"verdict is unknown: pickle at byte 0 ended without a STOP"):
        require_safe(path, trust_pickle=True)


def test_plain_pickles_of_builtins_and_numpy_pass() -> None:
    assert scan_pickle_bytes(b"N.").verdict == "pass"
    assert scan_pickle_bytes(pickle.dumps({"a": [1, 2.5, "x", b"y", (None, True)]}, protocol=0)).ok
    for protocol in (2, 3, 4, 5):
        data = pickle.dumps(
            {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(1.5)}, protocol
        )
        result = scan_pickle_bytes(data)
        assert result.ok, (protocol, result.findings)
        assert "numpy.dtype" in result.globals


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_and_only_allowlisted_globals_pass(data: bytes) -> None:
    result = scan_pickle_bytes(data)
    assert result.verdict in {"pass", "fail", "unknown"}
    if result.ok:
        assert all(tuple(g.rsplit(".", 1)) in ALLOWED_GLOBALS for g in result.globals)


# --- PyTorch files ------------------------------------------------------------------------------
def test_torch_state_dict_passes_but_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_tiny_model().state_dict(), path)
    result = scan_file(path)
    assert result.format == "torch-zip"
    assert result.ok, result.findings
    assert result.pickle_based
    assert set(result.globals) == {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
    }
    with pytest.raises(UnsafeModelError, match=r"weights\.pt \(torch-zip\): pickle-based .*--trust-pickle"):
        require_safe(path, trust_pickle=False)
    assert require_safe(path, trust_pickle=True).ok


def test_torch_checkpoint_with_many_dtypes_and_legacy_format_pass(tmp_path: Path) -> None:
    state = {
        "half": torch.ones(2, dtype=torch.float16),
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "long": torch.arange(3),
        "bool": torch.ones(2, dtype=torch.bool),
        "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
        "u16": torch.zeros(2, dtype=torch.uint16),
        "param": torch.nn.Parameter(torch.ones(2)),
        "epoch": 3,
        "best": np.float64(0.9),
    }
    new, legacy = tmp_path / "new.pt", tmp_path / "legacy.pt"
    torch.save(state, new)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert scan_file(new).ok, scan_file(new).findings
    result = scan_file(legacy)
    assert (result.format, result.verdict) == ("pickle", "pass"), result.findings
    assert "torch._utils._rebuild_parameter" in result.globals


def test_whole_module_pickle_fails(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(_tiny_model(), path)
    result = scan_file(path)
    assert result.verdict == "fail"
    assert "torch.nn.modules.linear.Linear" in result.globals


def test_zip_named_like_checkpoint_with_malicious_data_pkl(tmp_path: Path, no_unpickling: None) -> None:
    path = tmp_path / "pytorch_model.bin"
    write_zip(
        path, {"archive/data.pkl": OS_SYSTEM_P2, "archive/version": b"3\n", "archive/data/0": b"\0" * 8}
    )
    assert detect_format(path) == "torch-zip"
    result = scan_file(path)
    assert result.verdict == "fail"
    assert result.findings[0].startswith("archive/data.pkl: GLOBAL at byte 2 imports os.system")
    with pytest.raises(UnsafeModelError, match=r"pytorch_model\.bin \(torch-zip\).*os\.system"):
        require_safe(path, trust_pickle=True)


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ("../evil.pkl", "climbs out of the archive"),
        ("/abs/data.pkl", "is an absolute path"),
        ("archive/..\\..\\x.pkl", "climbs out of the archive"),
    ],
)
def test_zip_with_odd_member_paths_fails(tmp_path: Path, member: str, expected: str) -> None:
    path = tmp_path / "ckpt.pt"
    benign = pickle.dumps(OrderedDict(), protocol=2)
    write_zip(path, {"archive/data.pkl": benign, member: benign})
    result = scan_file(path)
    assert result.verdict == "fail"
    assert any(expected in f for f in result.findings), result.findings


def test_zip_with_duplicate_member_names_fails(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        write_zip(path, {"archive/data.pkl": pickle.dumps(OrderedDict(), protocol=2)})
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("archive/data.pkl", OS_SYSTEM_P2)
    result = scan_file(path)
    assert result.verdict == "fail"
    assert any("appears more than once" in f for f in result.findings)


def test_zip_without_model_members_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    write_zip(path, {"readme.txt": b"hello"})
    result = scan_file(path)
    assert (result.format, result.verdict) == ("zip", "unknown")


def test_nested_checkpoint_inside_archive_is_scanned(tmp_path: Path) -> None:
    inner = tmp_path / "inner.pt"
    write_zip(inner, {"inner/data.pkl": OS_SYSTEM_P2})
    outer = tmp_path / "outer.pt2"
    write_zip(outer, {"m/archive_format": b"pt2", "m/data/sample_inputs/model.pt": inner.read_bytes()})
    result = scan_file(outer)
    assert result.format == "torch-export"
    assert result.verdict == "fail"
    assert any(f.startswith("m/data/sample_inputs/model.pt: inner/data.pkl:") for f in result.findings)


def test_torchscript_archive_is_recognised_and_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "scripted.bin"
    torch.jit.trace(_tiny_model(), torch.randn(1, 3)).save(str(path))
    result = scan_file(path)
    assert result.format == "torchscript"
    assert result.ok, result.findings
    assert any("code file(s)" in n for n in result.notes)
    with pytest.raises(UnsafeModelError, match=r"\(torchscript\): pickle-based"):
        require_safe(path, trust_pickle=False)
    assert require_safe(path, trust_pickle=True).ok


def test_torchscript_classes_are_not_allowed_outside_torchscript() -> None:
    data = b"\x80\x02c__torch__\nM\n)\x81."
    assert scan_pickle_bytes(data).verdict == "fail"
    assert scan_pickle_bytes(data, torchscript=True).verdict == "pass"


# --- safetensors --------------------------------------------------------------------------------
def test_safetensors_save_file_passes_without_trust(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in _tiny_model().state_dict().items()}
    state["empty"] = torch.zeros(0)
    save_file(state, str(path), metadata={"format": "pt"})
    assert detect_format(path) == "safetensors"
    result = require_safe(path, trust_pickle=False)
    assert result.ok
    assert not result.pickle_based


def _safetensors(path: Path, header: object, data_len: int, *, raw_header: bytes | None = None) -> Path:
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)
    return path


def _entry(shape: list[int], begin: int, end: int, dtype: str = "F32") -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data_len", "expected"),
    [
        ({"a": _entry([2], 0, 8), "b": _entry([2], 4, 12)}, 12, "overlap the tensor before it"),
        ({"a": _entry([4], 0, 16)}, 8, "tensor data ends at byte 16 but the file holds only 8"),
        ({"a": _entry([2], 0, 8), "b": _entry([2], 12, 20)}, 20, "gap of 4 unclaimed bytes"),
        ({"a": _entry([2], 0, 8)}, 12, "4 trailing data bytes belong to no tensor"),
        ({"a": _entry([3], 0, 8)}, 8, "span 8 bytes but shape [3] of F32 needs 12"),
        ({"a": _entry([2], 0, 8, dtype="F128")}, 8, "unknown dtype 'F128'"),
        ({"a": _entry([-2], 0, 8)}, 8, "is not a list of non-negative integers"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "needs 8"),
        ({"a": _entry([2], 0, 8), "__metadata__": {"k": 1}}, 8, "__metadata__ must map strings to strings"),
    ],
)
def test_bad_safetensors_headers_fail(tmp_path: Path, header: object, data_len: int, expected: str) -> None:
    path = _safetensors(tmp_path / "bad.safetensors", header, data_len)
    assert detect_format(path) == "safetensors"
    result = scan_file(path)
    assert result.verdict == "fail"
    assert any(expected in f for f in result.findings), result.findings
    with pytest.raises(UnsafeModelError, match="safetensors"):
        require_safe(path, trust_pickle=False)


def test_safetensors_duplicate_keys_and_broken_json_fail(tmp_path: Path) -> None:
    dup = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    result = scan_file(_safetensors(tmp_path / "dup.safetensors", None, 4, raw_header=dup))
    assert result.verdict == "fail"
    assert "duplicate keys ['a']" in result.findings[0]
    broken = scan_file(_safetensors(tmp_path / "broken.safetensors", None, 4, raw_header=b'{"a": }'))
    assert broken.verdict == "fail"
    assert broken.findings[0].startswith("safetensors header is not valid JSON")


# --- ONNX ---------------------------------------------------------------------------------------
def test_exported_onnx_passes_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_tiny_model(), (torch.randn(1, 3),), str(path), dynamo=False)
    assert detect_format(path) == "onnx"
    result = require_safe(path, trust_pickle=False)
    assert result.ok
    assert result.notes[0].startswith("opsets: ai.onnx ")


def test_onnx_external_data_inside_folder_passes(tmp_path: Path) -> None:
    path = onnx_with_external(tmp_path / "m", "weights.bin")
    (tmp_path / "m" / "weights.bin").write_bytes(b"\0" * 8)
    result = scan_file(path)
    assert result.ok, result.findings
    assert "1 tensor(s) stored as external data inside the model folder" in result.notes


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("../outside.bin", "climbs out of the model folder with '..'"),
        ("sub/../../outside.bin", "climbs out of the model folder with '..'"),
        ("ABSOLUTE", "is an absolute path"),
        ("C:\\weights.bin", "is an absolute path"),
    ],
)
def test_onnx_external_data_outside_folder_fails(tmp_path: Path, location: str, expected: str) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 8)
    if location == "ABSOLUTE":
        location = str(outside)
    path = onnx_with_external(tmp_path / "m", location)
    assert detect_format(path) == "onnx"
    result = scan_file(path)
    assert result.verdict == "fail"
    assert result.findings == [f"tensor 'W': external data location {location!r} {expected}"]
    with pytest.raises(UnsafeModelError, match=r"model\.onnx \(onnx\): security scan verdict is fail"):
        require_safe(path, trust_pickle=True)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_onnx_external_data_symlink_escape_fails(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 8)
    path = onnx_with_external(tmp_path / "m", "weights.bin")
    (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "outside.bin")
    result = scan_file(path)
    assert result.verdict == "fail"
    assert "resolves (through a symlink) outside the model folder" in result.findings[0]


def test_onnx_external_data_bounds_and_missing_file(tmp_path: Path) -> None:
    path = onnx_with_external(tmp_path / "m", "weights.bin", offset="4")
    (tmp_path / "m" / "weights.bin").write_bytes(b"\0" * 8)
    assert "runs past the end of 'weights.bin'" in scan_file(path).findings[0]
    missing = onnx_with_external(tmp_path / "n", "absent.bin")
    result = scan_file(missing)
    assert result.verdict == "unknown"
    assert "external data file 'absent.bin' is missing" in result.findings[0]


def test_onnx_custom_domains_are_listed(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    path = tmp_path / "custom.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=opsets), str(path))
    result = scan_file(path)
    assert result.ok
    assert any(n.startswith("custom operator domains: com.microsoft") for n in result.notes)


# --- detection ----------------------------------------------------------------------------------
def test_detect_format_ignores_misleading_extensions(tmp_path: Path) -> None:
    pickled = tmp_path / "model.onnx"
    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert detect_format(pickled) == "pickle"
    proto0 = tmp_path / "notes.txt"
    proto0.write_bytes(OS_SYSTEM_P0)
    assert detect_format(proto0) == "pickle"
    st_file = _safetensors(tmp_path / "weights.pkl", {"a": _entry([1], 0, 4)}, 4)
    assert detect_format(st_file) == "safetensors"
    onnx_file = onnx_with_external(tmp_path / "o", "w.bin")
    renamed = onnx_file.rename(tmp_path / "model.safetensors")
    assert detect_format(renamed) == "onnx"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"a": 1}',
        b"\x08\x07\x3a\x00garbage-after-a-valid-looking-start",  # ir_version + empty graph + junk
        bytes(range(256)) * 4,
        b"\x89HDF\r\n\x1a\n",
    ],
)
def test_arbitrary_bytes_are_not_mistaken_for_models(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    fmt = detect_format(path)
    assert fmt in {"unknown", "hdf5"}
    result = scan_file(path)
    assert result.verdict == "unknown"
    with pytest.raises(UnsafeModelError, match="verdict is unknown"):
        require_safe(path, trust_pickle=True)


def test_missing_path_raises_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="model file not found"):
        scan_file(tmp_path / "nope.onnx")


# --- Hugging Face folders -----------------------------------------------------------------------
def _hf_folder(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    save_file({"w": torch.ones(2, 2)}, str(folder / "model.safetensors"))
    return folder


def test_hf_folder_with_only_safetensors_needs_no_trust(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "hf")
    assert detect_format(folder) == "hf-folder"
    result = require_safe(folder, trust_pickle=False)
    assert result.ok
    assert not result.pickle_based


def test_hf_folder_with_pickle_weights_needs_trust(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "hf")
    torch.save({"w": torch.ones(2, 2)}, folder / "pytorch_model.bin")
    result = scan_file(folder)
    assert result.ok and result.pickle_based
    with pytest.raises(UnsafeModelError, match=r"\(hf-folder\): pickle-based"):
        require_safe(folder, trust_pickle=False)
    assert require_safe(folder, trust_pickle=True).ok


def test_hf_folder_notes_custom_code(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "hf")
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.XModel"}}))
    (folder / "modeling_x.py").write_text("import os\n")
    result = scan_file(folder)
    assert result.ok
    assert "folder holds Python code (modeling_x.py); load it without trust_remote_code" in result.notes
    assert any("auto_map" in n for n in result.notes)


def test_hf_folder_with_malicious_bin_fails(tmp_path: Path, no_unpickling: None) -> None:
    folder = _hf_folder(tmp_path / "hf")
    (folder / "pytorch_model.bin").write_bytes(STACK_GLOBAL_MEMO)
    result = scan_file(folder)
    assert result.verdict == "fail"
    assert result.findings[0].startswith("pytorch_model.bin: STACK_GLOBAL at byte 22 imports os.system")


def test_folder_without_config_or_weights_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert detect_format(tmp_path / "empty") == "unknown"
    assert scan_file(tmp_path / "empty").verdict == "unknown"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    result = scan_file(tmp_path / "cfg")
    assert (result.format, result.verdict) == ("hf-folder", "unknown")
    assert "no weight files" in result.findings[0]


# --- result shape -------------------------------------------------------------------------------
def test_scan_result_to_dict_is_json_ready(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(OS_SYSTEM_P2)
    result = scan_file(path)
    assert isinstance(result, ScanResult)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["path"] == str(path)
    assert (d["format"], d["verdict"], d["ok"], d["pickle_based"]) == ("pickle", "fail", False, True)
    assert d["globals"] == ["os.system"]
