"""Model-file formats by magic bytes, and the one result shape every scan returns.

A file's format is decided by what its bytes are, never by its extension: a pickle named
``model.onnx`` is a pickle. Detection is cheap and reads only what it must (the first bytes, a
safetensors header, an ONNX file's top-level protobuf tags, a zip's member names).
"""

from __future__ import annotations

import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from modelyard.errors import ArtifactError

PASS = "pass"
FAIL = "fail"
UNKNOWN = "unknown"

ONNX = "onnx"
SAFETENSORS = "safetensors"
ZIP = "zip"
TORCH_ZIP = "torch-zip"
TORCHSCRIPT = "torchscript"
TORCH_EXPORT = "torch-export"
PICKLE = "pickle"
HF_FOLDER = "hf-folder"
HDF5 = "hdf5"
OPENVINO_IR = "openvino-ir"
UNKNOWN_FORMAT = "unknown"

#: Formats that run pickle (code) when loaded, whatever their content.
PICKLE_BASED_FORMATS = frozenset({PICKLE, TORCH_ZIP, TORCHSCRIPT})

SAFETENSORS_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HIGHEST_PICKLE_PROTOCOL = 5
_MAX_FINDINGS = 200
_XML_HEAD_BYTES = 4096

# ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited).
_MODEL_PROTO_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_MAX_IR_VERSION = 64


@dataclass
class ScanResult:
    """What a scan found in one model file or folder.

    ``verdict`` is ``"pass"`` only when the scan cleared everything it read; ``"unknown"`` (could
    not read or parse) counts as a failure. ``findings`` are the reasons for a non-pass verdict,
    ``notes`` are facts worth showing that do not fail the scan (custom ONNX domains, TorchScript
    code), ``globals`` are the pickle globals seen as ``module.name``.
    """

    path: Path | None
    format: str
    verdict: str
    findings: list[str] = field(default_factory=list)
    globals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pickle_based: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": None if self.path is None else str(self.path),
            "format": self.format,
            "verdict": self.verdict,
            "ok": self.ok,
            "pickle_based": self.pickle_based,
            "findings": list(self.findings),
            "globals": list(self.globals),
            "notes": list(self.notes),
        }


class FindingsCollector:
    """Accumulates findings while a scan runs; the verdict is the worst thing recorded.

    Findings beyond the first ``_MAX_FINDINGS`` are counted, not kept, so a hostile file cannot
    make the report itself huge.
    """

    def __init__(self) -> None:
        self.findings: list[str] = []
        self.notes: list[str] = []
        self._globals: dict[str, None] = {}
        self.failed = False
        self.unknown = False
        self.pickle_based = False
        self.suppressed = 0

    def add_finding(self, message: str) -> None:
        """Record a finding without changing the verdict (the caller has already decided it)."""
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(message)
        else:
            self.suppressed += 1

    def fail(self, message: str) -> None:
        self.failed = True
        self.add_finding(message)

    def cannot_tell(self, message: str) -> None:
        self.unknown = True
        self.add_finding(message)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def add_global(self, dotted: str) -> None:
        self._globals[dotted] = None

    @property
    def globals(self) -> list[str]:
        return list(self._globals)

    def merge(self, other: ScanResult, *, prefix: str = "") -> None:
        """Fold a sub-scan (an archive member, a file of a folder) into this one."""
        for finding in other.findings:
            self.add_finding(prefix + finding)
        self.notes.extend(prefix + n for n in other.notes)
        for g in other.globals:
            self.add_global(g)
        self.failed = self.failed or other.verdict == FAIL
        self.unknown = self.unknown or other.verdict == UNKNOWN
        self.pickle_based = self.pickle_based or other.pickle_based

    @property
    def verdict(self) -> str:
        if self.failed:
            return FAIL
        if self.unknown:
            return UNKNOWN
        return PASS

    def result(self, path: Path | None, fmt: str) -> ScanResult:
        findings = list(self.findings)
        if self.suppressed:
            findings.append(f"... and {self.suppressed} more findings")
        return ScanResult(
            path=path,
            format=fmt,
            verdict=self.verdict,
            findings=findings,
            globals=self.globals,
            notes=list(self.notes),
            pickle_based=self.pickle_based or fmt in PICKLE_BASED_FORMATS,
        )


def detect_format(path: Path) -> str:
    """Name the format of a model file or folder from its bytes, never from its extension.

    Returns one of ``"onnx"``, ``"safetensors"``, ``"torch-zip"``, ``"torchscript"``,
    ``"torch-export"``, ``"zip"``, ``"pickle"``, ``"hdf5"``, ``"openvino-ir"`` (an OpenVINO IR .xml),
    ``"hf-folder"`` or ``"unknown"``.
    """
    path = Path(path)
    if path.is_dir():
        return HF_FOLDER if (path / "config.json").is_file() else UNKNOWN_FORMAT
    if not path.exists():
        raise ArtifactError(f"model file not found: {path}; check the path")
    if not path.is_file():
        return UNKNOWN_FORMAT  # a socket, FIFO or device: never opened (a FIFO would block)
    try:
        with path.open("rb") as f:
            return detect_stream(f, path.stat().st_size)
    except OSError:
        return UNKNOWN_FORMAT


def detect_stream(f: BinaryIO, size: int) -> str:
    """Like :func:`detect_format` for an open, seekable binary stream of ``size`` bytes."""
    f.seek(0)
    head = f.read(16)
    if not head:
        return UNKNOWN_FORMAT
    if head.startswith(_ZIP_MAGIC):
        return _classify_zip_stream(f)
    if head.startswith(_EMPTY_ZIP_MAGIC):
        return ZIP
    if head.startswith(_HDF5_MAGIC):
        return HDF5
    if _looks_like_safetensors(f, size):
        return SAFETENSORS
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= _HIGHEST_PICKLE_PROTOCOL:
        return PICKLE
    if _looks_like_openvino_ir(f):
        return OPENVINO_IR
    if _looks_like_onnx(f, size):
        return ONNX
    if _parses_as_pickle(f):
        return PICKLE
    return UNKNOWN_FORMAT


def classify_zip_names(names: list[str]) -> str:
    """Which kind of PyTorch archive a zip is, from its member names."""
    if any(n.endswith("/archive_format") or n.endswith("serialized_exported_program.json") for n in names):
        return TORCH_EXPORT
    has_data_pkl = any(_depth(n) == 2 and n.endswith("/data.pkl") for n in names)
    if any(
        (_depth(n) == 2 and n.endswith("/constants.pkl")) or (_depth(n) >= 3 and n.split("/")[1] == "code")
        for n in names
    ):
        return TORCHSCRIPT
    if has_data_pkl:
        return TORCH_ZIP
    return ZIP


def _depth(name: str) -> int:
    return len(name.split("/"))


def _classify_zip_stream(f: BinaryIO) -> str:
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as zf:
            return classify_zip_names(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return ZIP


def read_safetensors_header_length(f: BinaryIO, size: int) -> int | None:
    """The header length N of a safetensors file, or None when it cannot be one."""
    f.seek(0)
    raw = f.read(8)
    if len(raw) != 8:
        return None
    n = int.from_bytes(raw, "little")
    if n < 2 or n > SAFETENSORS_MAX_HEADER_BYTES or n > size - 8:
        return None
    return n


def _looks_like_safetensors(f: BinaryIO, size: int) -> bool:
    n = read_safetensors_header_length(f, size)
    if n is None:
        return False
    header = f.read(n)
    return header[:1] == b"{" and header.rstrip(b" ")[-1:] == b"}"


def _looks_like_openvino_ir(f: BinaryIO) -> bool:
    """An OpenVINO IR .xml: an optional XML declaration, then the ``<net`` root element."""
    f.seek(0)
    head = f.read(_XML_HEAD_BYTES).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<?xml"):
        end = head.find(b"?>")
        if end < 0:
            return False
        head = head[end + 2 :].lstrip()
    return head.startswith((b"<net ", b"<net>"))


def _read_varint(f: BinaryIO) -> int | None:
    result = 0
    for shift in range(0, 70, 7):
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
    return None


def _looks_like_onnx(f: BinaryIO, size: int) -> bool:
    """Walk the top-level protobuf fields: every one must be well formed and in bounds, the
    fields ModelProto knows must carry their wire types, and ir_version and graph must be there."""
    f.seek(0)
    seen: set[int] = set()
    ir_version = 0
    while f.tell() < size:
        tag = _read_varint(f)
        if tag is None:
            return False
        number, wire = tag >> 3, tag & 7
        if number == 0 or wire not in (0, 1, 2, 5):
            return False
        if number in _MODEL_PROTO_FIELDS and _MODEL_PROTO_FIELDS[number] != wire:
            return False
        if wire == 0:
            value = _read_varint(f)
            if value is None:
                return False
            if number == 1:
                ir_version = value
        elif wire == 2:
            length = _read_varint(f)
            if length is None or f.tell() + length > size:
                return False
            f.seek(length, 1)
        else:
            width = 8 if wire == 1 else 4
            if f.tell() + width > size:
                return False
            f.seek(width, 1)
        seen.add(number)
    return 1 in seen and 7 in seen and 1 <= ir_version <= _ONNX_MAX_IR_VERSION


def _parses_as_pickle(f: BinaryIO) -> bool:
    """True when the stream starts with a whole pickle (any protocol, up to its STOP opcode)."""
    f.seek(0)
    try:
        for opcode, _arg, _pos in pickletools.genops(f):
            if opcode.name == "STOP":
                return True
    except Exception:  # any parse error means "not a pickle"; detection never raises on content
        return False
    return False
