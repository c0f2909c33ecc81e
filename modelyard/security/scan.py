"""Scan a model file or folder before anything loads it, and the gate loaders call.

Model files are data, not code: :func:`require_safe` refuses a file the scan does not clear, and
refuses every pickle-based file unless the user trusts it (``--trust-pickle``), which still scans.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any, BinaryIO

from modelyard.errors import UnsafeModelError
from modelyard.security.formats import (
    FAIL,
    HDF5,
    HF_FOLDER,
    ONNX,
    OPENVINO_IR,
    PICKLE,
    SAFETENSORS,
    TORCH_EXPORT,
    TORCH_ZIP,
    TORCHSCRIPT,
    UNKNOWN_FORMAT,
    ZIP,
    FindingsCollector,
    ScanResult,
    classify_zip_names,
    detect_format,
    detect_stream,
    read_safetensors_header_length,
)
from modelyard.security.openvino_ir import scan_openvino_ir
from modelyard.security.pickle_scan import scan_pickle_stream

logger = logging.getLogger(__name__)

_MAX_PICKLE_MEMBER_BYTES = 256 * 1024**2
_MAX_NESTED_ARCHIVE_BYTES = 16 * 1024**3
_MAX_ZIP_MEMBERS = 100_000
_MAX_ARCHIVE_DEPTH = 3
_MAX_FOLDER_FILES = 10_000
_PICKLE_MEMBER_SUFFIXES = (".pkl", ".debug_pkl", ".pickle")
_NESTED_MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".bin", ".ckpt", ".zip", ".tar")
_NATIVE_CODE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd")
_ZIP_MAGIC = b"PK\x03\x04"

# safetensors dtype -> bits per element (sub-byte types pack several elements per byte).
_SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_SAFETENSORS_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_STANDARD_ONNX_DOMAINS = frozenset(
    ["", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"]
)


def scan_file(path: Path) -> ScanResult:
    """Scan a model file or Hugging Face folder without loading it; never raises on content.

    Dispatches on :func:`detect_format`: pickles are walked opcode by opcode; PyTorch archives
    have every pickle member walked; safetensors headers and ONNX external-data paths are
    validated; a Hugging Face folder has each model file inside scanned. Raises
    :class:`~modelyard.errors.ArtifactError` only when the path does not exist.
    """
    path = Path(path)
    return _scan_as(path, detect_format(path))


def require_safe(path: Path, *, trust_pickle: bool) -> ScanResult:
    """The gate every loader calls first: returns the passing scan result or raises.

    Raises :class:`~modelyard.errors.UnsafeModelError` when the scan does not pass, and for any
    pickle-based file (pickle, PyTorch archive, TorchScript, a folder holding one) unless
    ``trust_pickle`` is True.
    """
    path = Path(path)
    result = scan_file(path)
    if not result.ok:
        shown = "; ".join(result.findings[:3]) or "no details"
        if len(result.findings) > 3:
            shown += f" (and {len(result.findings) - 3} more)"
        if result.verdict == FAIL:
            advice = "do not load it; get the model as safetensors or ONNX from a source you trust"
        else:
            advice = "modelyard could not verify it; re-export the model as safetensors or ONNX"
        raise UnsafeModelError(
            f"refused {path} ({result.format}): security scan verdict is {result.verdict}: {shown}; {advice}"
        )
    if result.pickle_based and not trust_pickle:
        raise UnsafeModelError(
            f"refused {path} ({result.format}): pickle-based model files can run code when loaded; "
            "convert it to safetensors or ONNX, or pass --trust-pickle if you trust the file "
            "(it is still scanned first)"
        )
    if result.pickle_based:
        logger.info("loading pickle-based %s (%s) on --trust-pickle; the scan passed", path, result.format)
    return result


def _scan_as(path: Path, fmt: str) -> ScanResult:
    c = FindingsCollector()
    try:
        if fmt == HF_FOLDER:
            _scan_folder(path, c)
        elif fmt == PICKLE:
            with path.open("rb") as f:
                scan_pickle_stream(f, c)
        elif fmt in (ZIP, TORCH_ZIP, TORCHSCRIPT, TORCH_EXPORT):
            with path.open("rb") as f:
                _scan_zip(f, c, prefix="", depth=0)
        elif fmt == SAFETENSORS:
            _scan_safetensors(path, c)
        elif fmt == ONNX:
            _scan_onnx(path, c)
        elif fmt == OPENVINO_IR:
            scan_openvino_ir(path, c)
        elif fmt == HDF5:
            c.cannot_tell(
                "HDF5 (Keras) files are not scanned and modelyard does not load them; export to ONNX"
            )
        elif path.is_dir():
            c.cannot_tell("folder has no config.json, so it is not a Hugging Face model folder")
        else:
            c.cannot_tell(
                "format not recognised (not ONNX, OpenVINO IR, safetensors, a PyTorch archive or a pickle)"
            )
    except OSError as exc:
        c.cannot_tell(f"could not read it: {exc}")
    if c.pickle_based and fmt != HF_FOLDER:
        _picklescan_opinion(path, c)
    return c.result(path, fmt)


# --- archives -------------------------------------------------------------------------------
def _member_name_problem(name: str) -> str | None:
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "climbs out of the archive with '..'"
    return None


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, c: FindingsCollector, where: str
) -> bytes | None:
    if info.flag_bits & 0x1:
        c.cannot_tell(f"{where}: member is encrypted and cannot be scanned")
        return None
    try:
        with zf.open(info) as member:
            data = member.read(_MAX_PICKLE_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, NotImplementedError, OSError, ValueError, EOFError) as exc:
        c.cannot_tell(f"{where}: member could not be read: {exc}")
        return None
    if len(data) > _MAX_PICKLE_MEMBER_BYTES:
        c.cannot_tell(f"{where}: member is larger than {_MAX_PICKLE_MEMBER_BYTES} bytes; not scanned")
        return None
    return data


def _scan_zip(f: BinaryIO, c: FindingsCollector, *, prefix: str, depth: int) -> None:
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        c.cannot_tell(f"{prefix}not a readable zip archive: {exc}")
        return
    with zf:
        infos = zf.infolist()
        if len(infos) > _MAX_ZIP_MEMBERS:
            c.cannot_tell(
                f"{prefix}archive has {len(infos)} members, more than {_MAX_ZIP_MEMBERS}; not scanned"
            )
            return
        names = [i.filename for i in infos]
        for name in sorted(n for n, k in Counter(names).items() if k > 1):
            c.fail(
                f"{prefix}{name}: member name appears more than once (readers disagree on which is loaded)"
            )
        for name in names:
            problem = _member_name_problem(name)
            if problem:
                c.fail(f"{prefix}member path {name!r} {problem}")
        kind = classify_zip_names(names)
        n_pickles = 0
        n_code = 0
        for info in infos:
            if info.is_dir():
                continue
            lower = info.filename.lower()
            where = f"{prefix}{info.filename}"
            if lower.endswith(_PICKLE_MEMBER_SUFFIXES):
                data = _read_member(zf, info, c, where)
                if data is not None:
                    sub = FindingsCollector()
                    scan_pickle_stream(io.BytesIO(data), sub, torchscript=kind == TORCHSCRIPT)
                    c.merge(sub.result(None, PICKLE), prefix=f"{where}: ")
                    n_pickles += 1
            elif lower.endswith(_NESTED_MODEL_SUFFIXES):
                n_pickles += _scan_nested(zf, info, c, where, depth)
            elif lower.endswith(_NATIVE_CODE_SUFFIXES):
                c.fail(f"{where}: archive holds native code, which modelyard never loads")
            elif "/code/" in f"/{info.filename}" and lower.endswith(".py"):
                n_code += 1
        if n_code:
            c.note(f"{prefix}TorchScript archive holds {n_code} code file(s) that torch.jit.load compiles")
        if n_pickles:
            c.pickle_based = True
        elif kind == ZIP:
            c.cannot_tell(
                f"{prefix}zip archive holds no model members modelyard knows (no *.pkl, no PyTorch layout)"
            )


def _scan_nested(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, c: FindingsCollector, where: str, depth: int
) -> int:
    """Scan an archive member that is itself a model file; returns 1 when it held pickles."""
    if info.flag_bits & 0x1:
        c.cannot_tell(f"{where}: member is encrypted and cannot be scanned")
        return 0
    if depth + 1 > _MAX_ARCHIVE_DEPTH:
        c.cannot_tell(f"{where}: archives nested more than {_MAX_ARCHIVE_DEPTH} deep are not scanned")
        return 0
    sub = FindingsCollector()
    with tempfile.TemporaryFile() as tmp:
        try:
            with zf.open(info) as member:
                copied = _copy_capped(member, tmp, _MAX_NESTED_ARCHIVE_BYTES)
        except (zipfile.BadZipFile, NotImplementedError, OSError, ValueError, EOFError) as exc:
            c.cannot_tell(f"{where}: member could not be read: {exc}")
            return 0
        if copied is None:
            c.cannot_tell(f"{where}: member is larger than {_MAX_NESTED_ARCHIVE_BYTES} bytes; not scanned")
            return 0
        tmp.seek(0)
        head = tmp.read(4)
        if head == _ZIP_MAGIC:
            _scan_zip(tmp, sub, prefix="", depth=depth + 1)
        elif detect_stream(tmp, copied) == PICKLE:
            tmp.seek(0)
            scan_pickle_stream(tmp, sub)
        else:
            return 0
    c.merge(sub.result(None, ZIP), prefix=f"{where}: ")
    return 1 if sub.pickle_based else 0


def _copy_capped(src: IO[bytes], dst: IO[bytes], cap: int) -> int | None:
    total = 0
    while chunk := src.read(1024 * 1024):
        total += len(chunk)
        if total > cap:
            return None
        dst.write(chunk)
    return total


# --- safetensors ----------------------------------------------------------------------------
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys {dupes}")
    return dict(pairs)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(entry: object) -> tuple[int, int] | str:
    """The (begin, end) byte span of one header entry, or what is wrong with it."""
    if not isinstance(entry, dict) or set(entry) != _SAFETENSORS_ENTRY_KEYS:
        return "entry must be an object with exactly dtype, shape and data_offsets"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _SAFETENSORS_DTYPE_BITS:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        return f"data_offsets {offsets!r} is not [begin, end] with non-negative integers"
    begin, end = offsets
    bits = math.prod(shape) * _SAFETENSORS_DTYPE_BITS[dtype]
    if bits % 8:
        return f"shape {shape} of {dtype} does not fill whole bytes"
    if end < begin or end - begin != bits // 8:
        return (
            f"data_offsets {offsets} span {end - begin} bytes but shape {shape} of {dtype} needs {bits // 8}"
        )
    return begin, end


def _scan_safetensors(path: Path, c: FindingsCollector) -> None:
    size = path.stat().st_size
    with path.open("rb") as f:
        n = read_safetensors_header_length(f, size)
        if n is None:
            c.fail("safetensors header length is not sane for the file size")
            return
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        c.fail(f"safetensors header is not valid JSON: {exc}")
        return
    if not isinstance(header, dict):
        c.fail("safetensors header is not a JSON object")
        return
    data_size = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                c.fail("__metadata__ must map strings to strings")
            continue
        span = _tensor_entry(entry)
        if isinstance(span, str):
            c.fail(f"tensor {name!r}: {span}")
        else:
            spans.append((span[0], span[1], name))
    spans.sort()
    covered = 0
    for begin, end, name in spans:
        if begin < covered:
            c.fail(
                f"tensor {name!r}: bytes [{begin}, {end}) overlap the tensor before it (which ends at {covered})"
            )
        elif begin > covered:
            c.fail(f"tensor {name!r}: gap of {begin - covered} unclaimed bytes before it")
        covered = max(covered, end)
    if covered > data_size:
        c.fail(f"tensor data ends at byte {covered} but the file holds only {data_size} data bytes")
    elif covered < data_size:
        c.fail(f"{data_size - covered} trailing data bytes belong to no tensor")


# --- ONNX ------------------------------------------------------------------------------------
def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
        for s in sparse:
            yield s.values
            yield s.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _model_graphs(model: Any) -> list[Any]:
    graphs = [model.graph]
    for info in model.training_info:
        graphs.extend([info.initialization, info.algorithm])
    return graphs


def _external_location_problem(location: str, base: Path) -> str | None:
    if not location:
        return "is empty"
    if "\x00" in location:
        return "contains a NUL byte"
    if (
        location.startswith(("/", "\\"))
        or PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
    ):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", location):
        return "climbs out of the model folder with '..'"
    if not (base / location).resolve().is_relative_to(base):
        return "resolves (through a symlink) outside the model folder"
    return None


def _check_external_tensor(tensor: Any, base: Path, c: FindingsCollector) -> None:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    problem = _external_location_problem(location, base)
    if problem:
        c.fail(f"tensor {tensor.name!r}: external data location {location!r} {problem}")
        return
    numbers: dict[str, int] = {}
    for key in ("offset", "length"):
        if key in entries:
            if not re.fullmatch(r"\d+", entries[key]):
                c.fail(
                    f"tensor {tensor.name!r}: external data {key} {entries[key]!r} is not a non-negative integer"
                )
                return
            numbers[key] = int(entries[key])
    target = base / location
    if not target.is_file():
        c.cannot_tell(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        return
    end = numbers.get("offset", 0) + numbers.get("length", 0)
    if end > target.stat().st_size:
        c.fail(f"tensor {tensor.name!r}: external data [..{end}) runs past the end of {location!r}")


def _scan_onnx(path: Path, c: FindingsCollector) -> None:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends; the file cannot be vouched for
        c.cannot_tell(f"ONNX model could not be parsed: {exc}")
        return
    base = path.absolute().parent.resolve()
    domains: set[str] = {op.domain for op in model.opset_import}
    graphs = _model_graphs(model)
    n_external = 0
    for graph in graphs:
        for tensor in _graph_tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                n_external += 1
                _check_external_tensor(tensor, base, c)
        domains.update(node.domain for node in graph.node)
    for function in model.functions:
        domains.add(function.domain)
        for node in function.node:
            domains.add(node.domain)
            for tensor in _node_tensors(node):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    n_external += 1
                    _check_external_tensor(tensor, base, c)
    custom = sorted(domains - _STANDARD_ONNX_DOMAINS)
    opsets = ", ".join(f"{op.domain or 'ai.onnx'} {op.version}" for op in model.opset_import)
    c.note(f"opsets: {opsets}")
    if custom:
        c.note(f"custom operator domains: {', '.join(custom)} (need a runtime that provides them)")
    if n_external:
        c.note(f"{n_external} tensor(s) stored as external data inside the model folder")


# --- Hugging Face folders --------------------------------------------------------------------
def _folder_files(path: Path) -> Iterator[Path]:
    """Regular files under a folder in a stable order, skipping hidden entries; directory symlinks
    are not followed (no loops), file symlinks are (Hugging Face caches are made of them)."""
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            file = Path(root) / name
            if not name.startswith(".") and file.is_file():
                yield file


def _scan_folder(path: Path, c: FindingsCollector) -> None:
    n_models = 0
    code_files: list[str] = []
    for n_files, file in enumerate(_folder_files(path), start=1):
        if n_files > _MAX_FOLDER_FILES:
            c.cannot_tell(f"folder holds more than {_MAX_FOLDER_FILES} files; the rest were not scanned")
            break
        rel = file.relative_to(path).as_posix()
        fmt = detect_format(file)
        if fmt == UNKNOWN_FORMAT:
            if file.suffix == ".py":
                code_files.append(rel)
            continue
        if fmt == HDF5:
            c.note(f"{rel}: HDF5 file not scanned; modelyard never loads it")
            continue
        n_models += 1
        c.merge(_scan_as(file, fmt), prefix=f"{rel}: ")
    if code_files:
        c.note(f"folder holds Python code ({', '.join(code_files[:5])}); load it without trust_remote_code")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        c.cannot_tell(f"config.json is not readable JSON: {exc}")
        config = {}
    if isinstance(config, dict) and "auto_map" in config:
        c.note("config.json asks for custom model code (auto_map); load it without trust_remote_code")
    if n_models == 0:
        c.cannot_tell("folder holds no weight files (safetensors, ONNX, PyTorch or pickle)")


# --- second opinion --------------------------------------------------------------------------
def _picklescan_opinion(path: Path, c: FindingsCollector) -> None:
    """Run picklescan when it is installed; it can only add failures, never clear a file."""
    try:
        from picklescan.scanner import scan_file_path
    except ImportError:
        return
    try:
        report = scan_file_path(str(path))
    except Exception as exc:  # a second opinion that crashes must not hide the first one
        c.note(f"picklescan could not scan the file: {exc}")
        return
    dangerous = [
        f"{getattr(g, 'module', '?')}.{getattr(g, 'name', '?')}"
        for g in getattr(report, "globals", [])
        if str(getattr(getattr(g, "safety", None), "value", "")).lower() == "dangerous"
    ]
    infected = int(getattr(report, "infected_files", 0) or 0)
    if dangerous or infected:
        c.fail(
            f"picklescan (second opinion) reports dangerous globals: {', '.join(dangerous) or 'see picklescan'}"
        )
