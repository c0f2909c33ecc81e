"""An allowlist pickle scanner that never unpickles.

The scanner walks opcodes with :func:`pickletools.genops` and models the unpickler's stack and
memo well enough to know, for every GLOBAL / STACK_GLOBAL / INST, which ``(module, name)`` the real
unpickler would import, and for every call opcode (REDUCE, NEWOBJ, OBJ, INST, BUILD) what it
would call. Only the globals a plain PyTorch state dict or a numpy array needs are allowed;
anything else fails, and anything the model cannot follow (a parse error, a truncated file, an
operand it cannot resolve) is ``unknown``, which fails too.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
from dataclasses import dataclass
from typing import Any, BinaryIO

from modelyard.security.formats import PICKLE, FindingsCollector, ScanResult

_TORCH_STORAGES = (
    "FloatStorage",
    "HalfStorage",
    "DoubleStorage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "BFloat16Storage",
    "ComplexFloatStorage",
    "ComplexDoubleStorage",
    "QInt8Storage",
    "QUInt8Storage",
    "QInt32Storage",
    "QUInt4x2Storage",
    "QUInt2x4Storage",
)
# torch.save names dtypes without a legacy typed storage (float8, uint16, ...) as torch.<dtype>.
_TORCH_DTYPES = (
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "complex64",
    "complex128",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
)
_TORCH_QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")

#: The (module, name) pairs a plain state dict or numpy array may import. Checked after the
#: unpickler's own Python 2 name mapping, exactly as ``pickle.Unpickler.find_class`` applies it.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch.storage", "UntypedStorage"),
        ("torch", "Size"),
        ("torch", "device"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    ]
    + [("torch", s) for s in _TORCH_STORAGES]
    + [("torch", d) for d in _TORCH_DTYPES]
    + [("torch", q) for q in _TORCH_QSCHEMES]
)

# TorchScript archives are unpickled by TorchScript's own unpickler, which resolves these from the
# archive's compiled code (never by importing Python); allowed only inside a TorchScript archive.
_TORCHSCRIPT_PICKLE_HELPERS = frozenset(
    [
        "build_intlist",
        "build_tensorlist",
        "build_doublelist",
        "build_boollist",
        "build_tensor_from_id",
        "restore_type_tag",
    ]
)

_NESTED_LOADERS = frozenset(
    [
        ("pickle", "loads"),
        ("pickle", "load"),
        ("pickle", "Unpickler"),
        ("_pickle", "loads"),
        ("_pickle", "load"),
        ("_pickle", "Unpickler"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("numpy", "load"),
        ("joblib", "load"),
        ("marshal", "loads"),
    ]
)
_NESTED_LOADER_MODULES = frozenset(["dill", "cloudpickle", "joblib", "pickle", "_pickle"])
_DANGEROUS_MODULES = frozenset(
    [
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "builtins",
        "importlib",
        "runpy",
        "socket",
        "shutil",
        "pty",
        "ctypes",
        "code",
        "codeop",
        "webbrowser",
        "types",
        "operator",
        "functools",
        "marshal",
        "asyncio",
        "multiprocessing",
        "platform",
        "requests",
        "urllib",
        "http",
    ]
)
_MAX_NESTING = 3
# The magic number torch's legacy (pre-1.6) format writes as its first pickle; four more follow
# (protocol version, system info, the object, the storage keys), then raw storage bytes.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PICKLES = 5


class _Malformed(Exception):
    """The opcode stream does not fit the unpickler's rules (stack underflow, missing memo...)."""


class _Mark:
    """The unpickler's MARK on the modelled stack."""


class _Opaque:
    """A value the scanner does not track (numbers, containers, call results...)."""


@dataclass(frozen=True)
class _Global:
    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


_MARK = _Mark()
_OPAQUE = _Opaque()
_STRING_OPS = frozenset(
    ["STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"]
)
_PUT_OPS = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
_GET_OPS = frozenset(["GET", "BINGET", "LONG_BINGET"])
_BOOKKEEPING_OPS = frozenset(["PROTO", "FRAME", "STOP", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"])
_MUTATING_OPS = frozenset(["BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"])


def scan_pickle_bytes(data: bytes, *, torchscript: bool = False) -> ScanResult:
    """Scan pickle bytes without unpickling them; every pickle in the stream is walked.

    ``torchscript=True`` also allows the ``__torch__.*`` classes and ``torch.jit._pickle`` helpers
    that TorchScript's own unpickler resolves (use it for pickles inside TorchScript archives).
    """
    collector = FindingsCollector()
    scan_pickle_stream(io.BytesIO(data), collector, torchscript=torchscript)
    return collector.result(None, PICKLE)


def scan_pickle_stream(f: BinaryIO, collector: FindingsCollector, *, torchscript: bool = False) -> None:
    """Walk every pickle in a seekable stream into ``collector``.

    Data after a pickle's STOP is walked as a further pickle (a loader may read several), except
    after torch's legacy five pickles, where raw storage bytes follow.
    """
    collector.pickle_based = True
    count = 0
    legacy = False
    while True:
        walker = _Walker(collector, torchscript=torchscript, depth=0)
        if not walker.walk(f):
            return
        count += 1
        if count == 1 and walker.only_int == _TORCH_LEGACY_MAGIC:
            legacy = True
        if legacy and count == _TORCH_LEGACY_PICKLES:
            return
        if not f.read(1):
            return
        f.seek(-1, io.SEEK_CUR)


def _is_allowed(g: _Global, *, torchscript: bool) -> bool:
    if (g.module, g.name) in ALLOWED_GLOBALS:
        return True
    if not torchscript:
        return False
    if g.module == "__torch__" or g.module.startswith("__torch__."):
        return True
    return g.module == "torch.jit._pickle" and g.name in _TORCHSCRIPT_PICKLE_HELPERS


def _why_not(g: _Global) -> str:
    top = g.module.split(".")[0]
    if (g.module, g.name) in _NESTED_LOADERS or top in _NESTED_LOADER_MODULES:
        return "a nested unpickler that can run any code"
    if top in _DANGEROUS_MODULES:
        return "dangerous: it can run code or touch the system"
    return "not on the allowlist of state-dict globals"


def _find_class_mapping(module: str, name: str, protocol: int) -> tuple[str, str]:
    """The (module, name) the unpickler really imports (Python 2 names are remapped below protocol 3)."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        if module in _compat_pickle.IMPORT_MAPPING:
            return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


def _operand_bytes(arg: Any) -> bytes | None:
    if isinstance(arg, bytes | bytearray):
        return bytes(arg)
    if isinstance(arg, str) and arg.startswith("\x80"):
        try:
            return arg.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _is_whole_pickle(data: bytes) -> bool:
    if len(data) < 3 or data[0] != 0x80 or data[1] > 5:
        return False
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "STOP":
                return True
    except Exception:  # not a pickle: any parse error says so
        return False
    return False


class _Walker:
    """Walks one pickle (up to its STOP) with a modelled stack and memo."""

    def __init__(self, collector: FindingsCollector, *, torchscript: bool, depth: int) -> None:
        self.c = collector
        self.torchscript = torchscript
        self.depth = depth
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.protocol = 0
        self._first_values: list[tuple[str, Any]] = []

    def walk(self, f: BinaryIO) -> bool:
        """Walk until STOP; False (and an ``unknown`` finding) when the stream cannot be followed."""
        start = f.tell()
        pos = start
        try:
            for opcode, arg, op_pos in pickletools.genops(f):
                pos = op_pos if op_pos is not None else pos
                self._step(opcode, arg, pos)
                if opcode.name == "STOP":
                    return True
        except _Malformed as exc:
            self.c.cannot_tell(f"pickle at byte {start} is malformed at byte {pos}: {exc}")
            return False
        except Exception as exc:  # genops raises ValueError, EOFError, UnicodeDecodeError...: fail closed
            if f.read(1):
                self.c.cannot_tell(f"pickle at byte {start} could not be parsed after byte {pos}: {exc}")
            else:
                self.c.cannot_tell(f"pickle at byte {start} ended without a STOP opcode (truncated): {exc}")
            return False
        self.c.cannot_tell(f"pickle at byte {start} ended without a STOP opcode (truncated)")
        return False

    @property
    def only_int(self) -> int | None:
        """The pickle's value when it is a single long integer (torch's legacy magic number)."""
        if len(self._first_values) == 1 and self._first_values[0][0] in ("LONG1", "LONG4"):
            value = self._first_values[0][1]
            return value if isinstance(value, int) else None
        return None

    # --- the modelled stack -------------------------------------------------------------------
    def _pop(self) -> object:
        if not self.stack:
            raise _Malformed("stack underflow")
        value = self.stack.pop()
        if value is _MARK:
            raise _Malformed("an opcode consumed a MARK as a value")
        return value

    def _pop_to_mark(self) -> list[object]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise _Malformed("no MARK on the stack")

    def _top(self) -> object:
        if not self.stack or self.stack[-1] is _MARK:
            raise _Malformed("memo store with no value on the stack")
        return self.stack[-1]

    def _consume(self, opcode: pickletools.OpcodeInfo) -> list[object]:
        """Pop what ``opcode`` takes, per pickletools' stack metadata; returns the popped values in
        stack order (for mark-taking opcodes, the fixed items before the mark then those after)."""
        before = opcode.stack_before
        if pickletools.markobject in before:
            i = before.index(pickletools.markobject)
            after_mark = [x for x in before[i + 1 :] if x is not pickletools.stackslice]
            items = self._pop_to_mark()
            if len(items) < len(after_mark):
                raise _Malformed(f"{opcode.name} needs {len(after_mark)} item(s) after its MARK")
            fixed = [self._pop() for _ in before[:i]][::-1]
            return fixed + items
        return [self._pop() for _ in before][::-1]

    # --- one opcode ---------------------------------------------------------------------------
    def _step(self, opcode: pickletools.OpcodeInfo, arg: Any, pos: int) -> None:
        name = opcode.name
        if name not in _BOOKKEEPING_OPS and len(self._first_values) < 2:
            self._first_values.append((name, arg))
        nested = _operand_bytes(arg)
        if nested is not None and _is_whole_pickle(nested):
            self._nested(nested, pos)

        if name == "PROTO":
            self.protocol = int(arg)
            if self.protocol > 5:
                self.c.cannot_tell(f"pickle protocol {self.protocol} at byte {pos} is not supported")
        elif name in _STRING_OPS:
            self.stack.append(str(arg))
        elif name in _PUT_OPS:
            self.memo[int(arg)] = self._top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self._top()
        elif name in _GET_OPS:
            if int(arg) not in self.memo:
                raise _Malformed(f"{name} of memo slot {arg} that was never stored")
            self.stack.append(self.memo[int(arg)])
        elif name == "DUP":
            self.stack.append(self._top())
        elif name == "POP":
            if self.stack and self.stack[-1] is _MARK:
                self.stack.pop()
            else:
                self._pop()
        elif name == "GLOBAL":
            self.stack.append(self._global_from_pair(arg, name, pos))
        elif name == "STACK_GLOBAL":
            gname, module = self._pop(), self._pop()
            if not isinstance(module, str) or not isinstance(gname, str):
                self.c.fail(f"STACK_GLOBAL at byte {pos} takes operands the scanner cannot resolve to names")
                self.stack.append(_OPAQUE)
            else:
                self.stack.append(self._check_global(module, gname, name, pos))
        elif name == "INST":
            self._consume(opcode)
            cls = self._global_from_pair(arg, name, pos)
            if isinstance(cls, _Global):
                self._call(cls, name, pos)
            self.stack.append(_OPAQUE)
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.c.fail(f"{name} at byte {pos} imports through the copyreg extension registry")
            self.stack.append(_OPAQUE)
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            self.c.cannot_tell(f"{name} at byte {pos}: out-of-band buffers are not supported")
            self._consume(opcode)
            self.stack.append(_OPAQUE)
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ"):
            popped = self._consume(opcode)
            self._call(popped[0], name, pos)
            self.stack.append(_OPAQUE)
        elif name in _MUTATING_OPS:
            popped = self._consume(opcode)
            if isinstance(popped[0], _Global):
                self.c.fail(f"{name} at byte {pos} modifies the imported object {popped[0].dotted}")
            self.stack.append(_OPAQUE)
        else:
            self._consume(opcode)
            for item in opcode.stack_after:
                self.stack.append(_MARK if item is pickletools.markobject else _OPAQUE)

    def _global_from_pair(self, arg: Any, opname: str, pos: int) -> object:
        parts = str(arg).split(" ")
        if len(parts) != 2 or not all(parts):
            self.c.fail(f"{opname} at byte {pos} has an ambiguous operand {arg!r}")
            return _OPAQUE
        return self._check_global(parts[0], parts[1], opname, pos)

    def _check_global(self, module: str, name: str, opname: str, pos: int) -> _Global:
        raw = _Global(module, name)
        g = _Global(*_find_class_mapping(module, name, self.protocol))
        self.c.add_global(g.dotted)
        if not _is_allowed(g, torchscript=self.torchscript):
            self.c.fail(f"{opname} at byte {pos} imports {g.dotted}: {_why_not(g)}")
        elif raw != g and not _is_allowed(raw, torchscript=self.torchscript):
            # An unpickler without fix_imports would import the raw Python 2 name instead.
            self.c.fail(
                f"{opname} at byte {pos} names {raw.dotted}, which only maps to {g.dotted} in some unpicklers"
            )
        return g

    def _call(self, target: object, opname: str, pos: int) -> None:
        """Only imported globals may be called (a disallowed one has already failed the scan)."""
        if not isinstance(target, _Global):
            self.c.fail(f"{opname} at byte {pos} calls a value that is not an allowlisted global")

    def _nested(self, data: bytes, pos: int) -> None:
        self.c.fail(f"operand at byte {pos} holds a nested pickle ({len(data)} bytes)")
        if self.depth >= _MAX_NESTING:
            self.c.cannot_tell(f"nested pickle at byte {pos} is nested too deeply to scan")
            return
        inner = FindingsCollector()
        _Walker(inner, torchscript=self.torchscript, depth=self.depth + 1).walk(io.BytesIO(data))
        for finding in inner.findings:
            self.c.add_finding(f"nested pickle at byte {pos}: {finding}")
        for g in inner.globals:
            self.c.add_global(g)
