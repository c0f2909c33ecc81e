"""OIP v2 tensors: datatypes, and the JSON and binary encodings of one tensor (the request/response codec
is ``modelyard.serve.protocol``). BOOL is one byte; a BYTES element is a 4-byte little-endian length followed by
that many bytes; JSON ``data`` is row-major, flat or nested, BYTES elements are UTF-8 strings."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from modelyard.errors import ModelyardError


class ProtocolError(ModelyardError):
    """A request (or a response) does not follow the protocol; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}
_FLOATS = ("FP16", "FP32", "FP64")


def datatype_of(dtype: str | np.dtype) -> str:
    """The protocol datatype of a numpy dtype (``"float32"`` -> ``"FP32"``); text and objects are BYTES."""
    if isinstance(dtype, str) and dtype in DATATYPES:
        return dtype
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ProtocolError(
            f"dtype {dtype!r} is not a numpy dtype; use a name such as 'float32', 'int64' or 'bool'",
            status=500,
        ) from None
    if dt.kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise ProtocolError(
            f"numpy dtype {dt} has no Open Inference Protocol datatype; cast it to bool, an integer, "
            "float16/32/64 or bytes",
            status=500,
        )
    return name


def tensor_metadata(name: str, dtype: str, shape: Sequence[int | None]) -> dict[str, Any]:
    """Model-metadata entry of one tensor: ``{"name", "datatype", "shape"}`` with -1 for a dynamic axis."""
    return {
        "name": name,
        "datatype": datatype_of(dtype),
        "shape": [-1 if d is None or d < 0 else int(d) for d in shape],
    }


def encode_bytes_tensor(arr: np.ndarray | Sequence[Any], *, what: str = "BYTES tensor") -> bytes:
    """Row-major BYTES elements, each as a 4-byte little-endian length then its bytes (str is UTF-8)."""
    parts: list[bytes] = []
    for value in np.asarray(arr, dtype=object).ravel():
        b = _as_bytes(value, what)
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes_tensor(buf: bytes | memoryview, *, what: str = "BYTES tensor") -> np.ndarray:
    """The inverse of ``encode_bytes_tensor``: a 1-D object array of bytes."""
    items: list[bytes] = []
    offset, end = 0, len(buf)
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError(
                f"{what}: BYTES data ends inside a 4-byte length prefix at byte {offset}; each element is "
                "a 4-byte little-endian length followed by that many bytes"
            )
        (length,) = struct.unpack_from("<I", buf, offset)
        offset += 4
        if offset + length > end:
            raise ProtocolError(
                f"{what}: a BYTES element declares {length} bytes at byte {offset - 4} but only "
                f"{end - offset} remain; each element is a 4-byte little-endian length followed by its bytes"
            )
        items.append(bytes(buf[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def json_data(arr: np.ndarray, *, what: str = "tensor") -> list[Any]:
    """Flat row-major JSON values of an array. Floats are written as the exact double of each value (so
    FP16/FP32 read back bit-exact); BYTES become UTF-8 strings (other bytes cannot travel in JSON)."""
    arr = np.asarray(arr)
    datatype = datatype_of(arr.dtype)
    flat = arr.ravel()
    if datatype == "BYTES":
        try:
            return [_as_bytes(v, what).decode("utf-8") for v in flat]
        except UnicodeDecodeError:
            raise ProtocolError(
                f"{what} holds bytes that are not UTF-8 text, which JSON cannot carry; request it with "
                'parameters {"binary_data": true}'
            ) from None
    return flat.tolist()


# -- tensors --------------------------------------------------------------------------------------------------


def _json_array(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(
            f"input '{name}' 'data' must be a JSON array (flat row-major or nested), got {_describe(data)}"
        )
    flat, types = _flatten(name, data)
    count = math.prod(shape)
    if len(flat) != count:
        raise ProtocolError(
            f"input '{name}' has {len(flat)} values in 'data' but shape {shape} needs {count}; "
            "data is row-major, flat or nested"
        )
    dt = DATATYPES[datatype]
    if datatype == "BYTES":
        _check_types(
            name, datatype, flat, types, (str,), "strings (UTF-8 text; send raw bytes as binary data)"
        )
        try:
            encoded = [s.encode("utf-8") for s in flat]
        except UnicodeEncodeError:
            raise ProtocolError(
                f"input '{name}' (BYTES) has a string with a lone surrogate escape, which is not UTF-8 text"
            ) from None
        arr = np.empty(count, dtype=object)
        arr[:] = encoded
    elif datatype == "BOOL":
        _check_types(name, datatype, flat, types, (bool,), "true or false")
        arr = np.array(flat, dtype=dt)
    elif datatype in _FLOATS:
        _check_types(name, datatype, flat, types, (int, float), "numbers")
        try:
            wide = np.array(flat, dtype=np.float64)
        except OverflowError:
            raise ProtocolError(f"input '{name}' ({datatype}) has an integer too large for a float") from None
        with np.errstate(over="ignore"):
            arr = wide.astype(dt)
        overflow = np.isinf(arr) & np.isfinite(wide)
        if overflow.any():
            bad = float(wide[int(overflow.argmax())])
            raise ProtocolError(
                f"input '{name}' ({datatype}) has value {bad!r}, beyond the largest {datatype} "
                f"({float(np.finfo(dt).max)!r}); pick a wider datatype or fix the value"
            )
    else:
        _check_types(name, datatype, flat, types, (int,), "integers")
        info = np.iinfo(dt)
        if flat:
            lo, hi = min(flat), max(flat)
            if lo < info.min or hi > info.max:
                bad = lo if lo < info.min else hi
                raise ProtocolError(
                    f"input '{name}' ({datatype}) has value {bad}, outside [{info.min}, {info.max}]; "
                    "pick a wider datatype or fix the value"
                )
        arr = np.array(flat, dtype=dt)
    return arr.reshape(shape)


def _flatten(name: str, data: list[Any]) -> tuple[list[Any], set[type]]:
    """Nested lists to one flat row-major list, level by level; refuses levels that mix lists and values."""
    flat = data
    types = set(map(type, flat))
    while list in types:
        if types != {list}:
            raise ProtocolError(
                f"input '{name}' 'data' mixes arrays and values at the same depth; send flat row-major "
                "values or nest them evenly"
            )
        flat = list(chain.from_iterable(flat))
        types = set(map(type, flat))
    return flat, types


def _check_types(
    name: str, datatype: str, flat: list[Any], types: set[type], allowed: tuple[type, ...], wants: str
) -> None:
    if types <= set(allowed):
        return
    bad = next(v for v in flat if type(v) not in allowed)
    raise ProtocolError(f"input '{name}' ({datatype}) takes {wants} in 'data', got {_describe(bad)}")


def _binary_array(name: str, datatype: str, shape: list[int], buf: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        arr = decode_bytes_tensor(buf, what=f"input '{name}'")
        if arr.size != count:
            raise ProtocolError(
                f"input '{name}' has {arr.size} BYTES elements in its binary data but shape {shape} "
                f"needs {count}"
            )
        return arr.reshape(shape)
    dt = DATATYPES[datatype]
    need = count * dt.itemsize
    if len(buf) != need:
        raise ProtocolError(
            f"input '{name}' has binary_data_size {len(buf)} but {datatype} of shape {shape} needs "
            f"{need} bytes ({count} x {dt.itemsize})"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(buf, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise ProtocolError(
                f"input '{name}' (BOOL) has byte value {int(raw.max())}; BOOL elements are one byte, 0 or 1"
            )
        return raw.astype(np.bool_).reshape(shape)
    return np.frombuffer(buf, dtype=dt.newbyteorder("<")).astype(dt).reshape(shape)


def _tensor_bytes(arr: np.ndarray, datatype: str, what: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_tensor(arr, what=what)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ProtocolError(
        f"{what} holds a {type(value).__name__}; BYTES elements must be bytes or str", status=500
    )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    return f"{type(value).__name__} {value!r}"
