"""Files that must never pass a model scan, built in code: the malicious pickles of metrics.md section 6.2
(hand-written opcodes, never unpickled), zip archives with chosen members, and ONNX files with external data."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

# --- hand-written pickle opcodes ---------------------------------------------------------------


def _u(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _x(text: str) -> bytes:
    """BINUNICODE (protocol 1+)."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _short_bytes(raw: bytes) -> bytes:
    """SHORT_BINBYTES (protocol 3+)."""
    return b"C" + bytes([len(raw)]) + raw


OS_SYSTEM_P0 = b"cos\nsystem\n(S'echo pwned'\ntR."
OS_SYSTEM_P2 = b"\x80\x02cos\nsystem\n" + _x("echo pwned") + b"\x85R."
# STACK_GLOBAL whose operands come back from the memo (MEMOIZE, POP, BINGET), picklescan #14.
STACK_GLOBAL_MEMO = (
    b"\x80\x04" + _u("os") + b"\x94" + b"0" + _u("system") + b"\x94" + b"0"
    b"h\x00" + b"h\x01" + b"\x93" + _u("echo pwned") + b"\x85R."
)
# The same through BINPUT / LONG_BINPUT and LONG_BINGET.
STACK_GLOBAL_LONG_MEMO = (
    b"\x80\x04" + _u("posix") + b"q\x07" + _u("system") + b"r\x08\x00\x00\x00" + b"00"
    b"j\x07\x00\x00\x00" + b"h\x08" + b"\x93" + _u("id") + b"\x85R."
)
# STACK_GLOBAL on SHORT_BINSTRING operands, which the unpickler decodes to str.
STACK_GLOBAL_BINSTRING = b"\x80\x04U\x02osU\x06system\x93" + _u("id") + b"\x85R."
INST_OPCODE = b"(S'echo pwned'\nios\nsystem\n."  # picklescan #13
NESTED_LOADS = b"\x80\x03cpickle\nloads\n" + _short_bytes(OS_SYSTEM_P2) + b"\x85R."  # modelscan #267
# Only allowlisted globals, but a value is a whole pickle that some later code might load.
NESTED_IN_DICT = b"\x80\x03ccollections\nOrderedDict\n)R" + _x("k") + _short_bytes(OS_SYSTEM_P2) + b"s."
# getattr(import_module("os"), "system")("id"), picklescan #66.
GETATTR_CHAIN = (
    b"\x80\x02cbuiltins\ngetattr\ncimportlib\nimport_module\n"
    + _x("os")
    + b"\x85R"
    + _x("system")
    + b"\x86R"
    + _x("id")
    + b"\x85R."
)
# Protocol 2 maps Python 2 names: __builtin__.eval is builtins.eval.
PY2_BUILTIN_EVAL = b"\x80\x02c__builtin__\neval\n" + _x("1") + b"\x85R."

MALICIOUS = {
    "os_system_protocol0": (OS_SYSTEM_P0, "os.system"),
    "os_system_protocol2": (OS_SYSTEM_P2, "os.system"),
    "stack_global_memo": (STACK_GLOBAL_MEMO, "os.system"),
    "stack_global_long_memo": (STACK_GLOBAL_LONG_MEMO, "posix.system"),
    "stack_global_binstring": (STACK_GLOBAL_BINSTRING, "os.system"),
    "inst_opcode": (INST_OPCODE, "os.system"),
    "nested_pickle_loads": (NESTED_LOADS, "pickle.loads"),
    "nested_pickle_in_dict": (NESTED_IN_DICT, "os.system"),
    "getattr_import_module": (GETATTR_CHAIN, "importlib.import_module"),
    "py2_builtin_eval": (PY2_BUILTIN_EVAL, "builtins.eval"),
}


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """A zip archive at ``path`` holding ``members`` (name: bytes) in order."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def onnx_with_external(folder: Path, location: str, *, offset: str = "0", length: str = "8") -> Path:
    """``folder``/model.onnx whose one initializer points at external data ``location`` (not written here)."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = TensorProto()
    weight.name = "W"
    weight.data_type = TensorProto.FLOAT
    weight.dims.extend([2])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path
