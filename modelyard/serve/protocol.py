"""Open Inference Protocol v2 (KServe v2) codec: inference requests and responses, JSON and binary tensors.

Pure functions over bytes and numpy arrays, no web framework. A request body is a JSON header, optionally
followed by raw tensor bytes (the binary tensor data extension): the ``Inference-Header-Content-Length``
header gives the JSON part's byte length, each binary input carries ``parameters.binary_data_size``, and the
bytes follow in input order, little-endian and row-major. BOOL is one byte; a BYTES element is a 4-byte
little-endian length followed by that many bytes. In JSON, ``data`` is row-major, flat or nested, BYTES
elements are UTF-8 strings and FP16 is sent as plain numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from modelyard.serve.tensors import (
    DATATYPES,
    ProtocolError,
    _binary_array,
    _describe,
    _json_array,
    _tensor_bytes,
    datatype_of,
    decode_bytes_tensor,
    encode_bytes_tensor,
    json_data,
    tensor_metadata,
)

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferInput",
    "InferRequest",
    "ProtocolError",
    "RequestedOutput",
    "datatype_of",
    "decode_bytes_tensor",
    "encode_bytes_tensor",
    "encode_infer_response",
    "json_data",
    "parse_infer_request",
    "tensor_metadata",
]

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferInput:
    """One decoded input tensor. ``data`` has dtype ``DATATYPES[datatype]`` and shape ``shape``."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    """An output asked for by name; ``binary`` sends it as binary tensor data instead of JSON."""

    name: str
    binary: bool


@dataclass
class InferRequest:
    """A parsed inference request. ``outputs`` is None when the client asked for every output."""

    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any]
    binary_output: bool

    def feeds(self) -> dict[str, np.ndarray]:
        """The input arrays by name."""
        return {i.name: i.data for i in self.inputs}


def parse_infer_request(body: bytes, *, header_length: int | None) -> InferRequest:
    """Parse an inference request body; ``header_length`` is the Inference-Header-Content-Length header.

    Every problem raises ProtocolError (400) naming the field that is wrong.
    """
    view = memoryview(body)
    if header_length is None:
        header, tail = bytes(view), view[len(view) :]
    else:
        if header_length < 0:
            raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative byte count, got {header_length}")
        if header_length > len(view):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {header_length} but the body has only {len(view)} bytes; set it to "
                "the byte length of the JSON header that starts the body"
            )
        header, tail = bytes(view[:header_length]), view[header_length:]
    doc = _load_json(header, header_length=header_length)
    if not isinstance(doc, dict):
        raise ProtocolError(
            f'request body must be a JSON object such as {{"inputs": [...]}}, got {_describe(doc)}'
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"request 'id' must be a string, got {_describe(request_id)}")
    parameters = _parameters(doc.get("parameters"), "request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError(
            f"request parameters.binary_data_output must be true or false, got {_describe(binary_output)}"
        )

    metas = _input_metas(doc)
    binary_names = [m.name for m in metas if m.size is not None]
    if binary_names and header_length is None:
        raise ProtocolError(
            f"input '{binary_names[0]}' has parameters.binary_data_size but the request has no "
            f"{HEADER_LENGTH} header; set it to the byte length of the JSON header"
        )
    declared = sum(m.size for m in metas if m.size is not None)
    if declared != len(tail):
        which = "short" if declared > len(tail) else "long"
        raise ProtocolError(
            f"binary tensor data is too {which}: the inputs' parameters.binary_data_size add up to "
            f"{declared} bytes but {len(tail)} bytes follow the {len(header)}-byte JSON header; check each "
            f"binary_data_size and the {HEADER_LENGTH} header"
        )

    inputs: list[InferInput] = []
    offset = 0
    for name, datatype, shape, params, size, data in metas:
        if size is None:
            arr = _json_array(name, datatype, shape, data)
        else:
            arr = _binary_array(name, datatype, shape, tail[offset : offset + size])
            offset += size
        inputs.append(InferInput(name=name, datatype=datatype, shape=shape, data=arr, parameters=params))
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(doc.get("outputs"), binary_output),
        parameters=parameters,
        binary_output=binary_output,
    )


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput] | None,
    binary_output: bool,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response; returns (body, headers).

    ``requested`` None sends every output, binary when ``binary_output``. With binary parts the body is the
    JSON header followed by the tensor bytes, and the headers carry Inference-Header-Content-Length.
    Non-finite floats in JSON are written as NaN / Infinity (as Python's json and tritonclient read them).
    """
    if requested is None:
        chosen = [(name, binary_output) for name in outputs]
    else:
        for r in requested:
            if r.name not in outputs:
                raise ProtocolError(
                    f"unknown output '{r.name}'; this model's outputs are: {', '.join(outputs) or '(none)'}"
                )
        chosen = [(r.name, r.binary) for r in requested]
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        arr = np.asarray(outputs[name])
        datatype = datatype_of(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _tensor_bytes(arr, datatype, f"output '{name}'")
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(arr, what=f"output '{name}'")
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters is not None:
        doc["parameters"] = parameters
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if not any(binary for _, binary in chosen):
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


# -- request pieces -------------------------------------------------------------------------------------------


class _Meta(NamedTuple):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]
    size: int | None  # binary_data_size; None for JSON data
    data: Any


def _load_json(header: bytes, *, header_length: int | None) -> Any:
    try:
        return json.loads(header)
    except (ValueError, UnicodeDecodeError) as e:
        if header_length is None and b'"binary_data_size"' in header:
            raise ProtocolError(
                f"request body is a JSON header followed by binary tensor data but has no {HEADER_LENGTH} "
                "header; set it to the byte length of the JSON header"
            ) from None
        raise ProtocolError(
            f"request body is not valid JSON ({e}); send a JSON object, and with binary tensor data set "
            f"{HEADER_LENGTH} to the JSON header's byte length"
        ) from None
    except RecursionError:
        raise ProtocolError("request JSON is nested too deeply; send flat row-major 'data'") from None


def _input_metas(doc: dict[str, Any]) -> list[_Meta]:
    if "inputs" not in doc:
        raise ProtocolError(
            'request has no "inputs"; send {"inputs": [{"name": ..., "shape": [...], "datatype": ..., '
            '"data": [...]}]}'
        )
    raw_inputs = doc["inputs"]
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError(f'"inputs" must be a non-empty list of tensors, got {_describe(raw_inputs)}')
    metas: list[_Meta] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_inputs):
        meta = _input_meta(i, raw)
        if meta.name in seen:
            raise ProtocolError(f"input '{meta.name}' appears twice in \"inputs\"; send each input once")
        seen.add(meta.name)
        metas.append(meta)
    return metas


def _input_meta(i: int, raw: Any) -> _Meta:
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"inputs[{i}] must be an object with name, shape, datatype and data, got {_describe(raw)}"
        )
    missing = [k for k in ("name", "shape", "datatype") if k not in raw]
    if missing:
        raise ProtocolError(
            f"inputs[{i}] has no {' or '.join(repr(k) for k in missing)}; every input needs name, shape "
            "and datatype"
        )
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{i}] 'name' must be a non-empty string, got {_describe(name)}")
    datatype = raw["datatype"]
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(
            f"input '{name}' has unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        )
    shape = raw["shape"]
    if not isinstance(shape, list) or any(type(d) is not int for d in shape):
        raise ProtocolError(f"input '{name}' shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ProtocolError(
            f"input '{name}' shape {shape} has a negative dimension; give the actual size of every axis"
        )
    params = _parameters(raw.get("parameters"), f"input '{name}'")
    size = params.get("binary_data_size")
    if "shared_memory_region" in params:
        raise ProtocolError(
            f"input '{name}' uses shared memory, which this server does not support; send 'data' or "
            "binary tensor data"
        )
    if size is not None:
        if "data" in raw:
            raise ProtocolError(
                f"input '{name}' has both 'data' and parameters.binary_data_size; send its values in one "
                "place only"
            )
        if type(size) is not int or size < 0:
            raise ProtocolError(
                f"input '{name}' parameters.binary_data_size must be a non-negative integer, got {size!r}"
            )
    elif "data" not in raw:
        raise ProtocolError(
            f"input '{name}' has no 'data' and no parameters.binary_data_size; send its values in one of them"
        )
    return _Meta(name, datatype, list(shape), params, size, raw.get("data"))


def _requested_outputs(raw: Any, binary_output: bool) -> list[RequestedOutput] | None:
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise ProtocolError(f'"outputs" must be a list of {{"name": ...}} objects, got {_describe(raw)}')
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for j, o in enumerate(raw):
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"outputs[{j}] must be an object with a non-empty 'name', got {_describe(o)}")
        if name in seen:
            raise ProtocolError(f"output '{name}' is requested twice in \"outputs\"; list each output once")
        seen.add(name)
        params = _parameters(o.get("parameters"), f"output '{name}'")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in params:
                raise ProtocolError(
                    f"output '{name}' asks for parameters.{unsupported}, which this server does not support; "
                    "request the plain output"
                )
        binary = params.get("binary_data", binary_output)
        if not isinstance(binary, bool):
            raise ProtocolError(
                f"output '{name}' parameters.binary_data must be true or false, got {_describe(binary)}"
            )
        out.append(RequestedOutput(name=name, binary=binary))
    return out


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} 'parameters' must be a JSON object, got {_describe(raw)}")
    return raw
