"""Open Inference Protocol v2 codec, with the standard client (tritonclient.http) as the oracle."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import serialize_byte_tensor

from modelyard.errors import ModelyardError
from modelyard.serve.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    datatype_of,
    decode_bytes_tensor,
    encode_bytes_tensor,
    encode_infer_response,
    json_data,
    parse_infer_request,
    tensor_metadata,
)

Client = triton.InferenceServerClient


def sample(datatype: str, *, text: bool = False) -> np.ndarray:
    """A 2 x 3 array of the datatype, with its extreme values; BYTES as UTF-8 text when ``text``."""
    if datatype == "BYTES":
        raw = [b"", b"hello", "h\u00e9llo \u4e16".encode(), b"a b", b"x" * 300, b"z"]
        if not text:
            raw[1] = b"\x00\xff\xfe"
        arr = np.empty(6, dtype=object)
        arr[:] = raw
        return arr.reshape(2, 3)
    dt = DATATYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dt.kind in "iu":
        ints = np.iinfo(dt)
        return np.array([[ints.min, ints.max, 0], [1, ints.max - 1, 7]], dtype=dt)
    floats = np.finfo(dt)
    return np.array([[0.1, -2.5, floats.max], [floats.smallest_subnormal, -0.0, np.nan]], dtype=dt)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert got.ravel().tolist() == want.ravel().tolist()
        return
    assert got.dtype == want.dtype
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f")
    if want.dtype.kind == "f":
        assert np.array_equal(np.signbit(got), np.signbit(want))


def client_request(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool | dict[str, bool],
    outputs: list[Any] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    inputs = []
    for name, arr in arrays.items():
        i = triton.InferInput(name, list(arr.shape), datatype_of(arr.dtype))
        i.set_data_from_numpy(arr, binary_data=binary if isinstance(binary, bool) else binary[name])
        inputs.append(i)
    body, json_size = Client.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )
    return body, json_size


def client_result(body: bytes, headers: dict[str, str]) -> Any:
    length = headers.get(HEADER_LENGTH)
    return Client.parse_response_body(body, header_length=None if length is None else int(length))


def request_body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def one_input(**fields: Any) -> bytes:
    return request_body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", **fields}]})


# -- requests, with the standard client building them ---------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_parses_exactly_as_the_client_sent_it(datatype: str, binary: bool) -> None:
    arr = sample(datatype, text=not binary)
    body, json_size = client_request({"x": arr}, binary=binary)
    assert (json_size is not None) is binary
    req = parse_infer_request(body, header_length=json_size)
    (inp,) = req.inputs
    assert (inp.name, inp.datatype, inp.shape) == ("x", datatype, [2, 3])
    assert_same(inp.data, arr)
    assert inp.data.flags.writeable
    assert inp.data.dtype == DATATYPES[datatype]


def test_mixed_binary_and_json_inputs_are_sliced_in_input_order() -> None:
    arrays: dict[str, np.ndarray] = {
        "a": np.arange(12, dtype=np.int64).reshape(3, 4),
        "b": np.array([[1.5, -2.0]], dtype=np.float32),
        "c": sample("BYTES"),
        "d": np.array([True, False]),
        "e": np.arange(5, dtype=np.uint16),
    }
    binary = {"a": True, "b": False, "c": True, "d": False, "e": True}
    body, json_size = client_request(arrays, binary=binary, request_id="req-1")
    req = parse_infer_request(body, header_length=json_size)
    assert req.id == "req-1"
    assert [i.name for i in req.inputs] == list(arrays)
    for name, arr in arrays.items():
        assert_same(req.feeds()[name], arr)


def test_requested_outputs_id_and_parameters_are_read() -> None:
    outputs = [triton.InferRequestedOutput("logits", binary_data=False), triton.InferRequestedOutput("p")]
    body, json_size = client_request(
        {"x": np.zeros((1, 2), np.float32)},
        binary=True,
        outputs=outputs,
        request_id="42",
        parameters={"temperature": 0.5, "tag": "a"},
    )
    req = parse_infer_request(body, header_length=json_size)
    assert req.id == "42"
    assert req.outputs == [RequestedOutput("logits", binary=False), RequestedOutput("p", binary=True)]
    assert req.parameters == {"temperature": 0.5, "tag": "a"}
    assert req.binary_output is False


def test_no_outputs_means_all_and_the_request_level_binary_flag_applies() -> None:
    body, json_size = client_request({"x": np.zeros(2, np.float32)}, binary=False)
    req = parse_infer_request(body, header_length=json_size)
    assert req.outputs is None
    assert req.binary_output is True  # tritonclient asks for binary outputs when none are named
    doc = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
        "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    }
    req = parse_infer_request(request_body(doc), header_length=None)
    assert req.outputs == [RequestedOutput("a", binary=True), RequestedOutput("b", binary=False)]
    assert req.id is None


def test_nested_and_flat_json_data_are_the_same_row_major_tensor() -> None:
    flat = list(range(12))
    nested = [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    partly = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    want = np.arange(12, dtype=np.int32).reshape(2, 2, 3)
    for data in (flat, nested, partly):
        body = request_body(
            {"inputs": [{"name": "x", "shape": [2, 2, 3], "datatype": "INT32", "data": data}]}
        )
        assert_same(parse_infer_request(body, header_length=None).inputs[0].data, want)


def test_json_numbers_are_accepted_for_fp16_and_empty_and_scalar_shapes_work() -> None:
    doc = {
        "inputs": [
            {"name": "h", "shape": [3], "datatype": "FP16", "data": [0.5, 65504, -1]},
            {"name": "e", "shape": [0, 4], "datatype": "FP32", "data": []},
            {"name": "s", "shape": [], "datatype": "INT8", "data": [-3]},
        ]
    }
    feeds = parse_infer_request(request_body(doc), header_length=None).feeds()
    assert_same(feeds["h"], np.array([0.5, 65504, -1], np.float16))
    assert_same(feeds["e"], np.zeros((0, 4), np.float32))
    assert_same(feeds["s"], np.array(-3, np.int8))


def test_a_header_length_equal_to_the_body_means_no_binary_data() -> None:
    body = one_input(data=[1, 2])
    assert_same(
        parse_infer_request(body, header_length=len(body)).inputs[0].data, np.array([1, 2], np.float32)
    )


# -- responses, with the standard client reading them ---------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_decodes_exactly_in_the_client(datatype: str, binary: bool) -> None:
    arr = sample(datatype, text=not binary)
    body, headers = encode_infer_response(
        model_name="m", model_version="3", request_id=None, outputs={"y": arr}, requested=None,
        binary_output=binary,
    )  # fmt: skip
    if binary:
        assert headers["content-type"] == "application/octet-stream"
        assert int(headers[HEADER_LENGTH]) < len(body)
    else:
        assert headers == {"content-type": "application/json"}
        json.loads(body)
    got = client_result(body, headers).as_numpy("y")
    if datatype == "BYTES" and not binary:  # JSON carries text: the client gets str
        assert got.ravel().tolist() == [b.decode() for b in arr.ravel()]
        assert got.shape == arr.shape
    else:
        assert_same(got, arr)


def test_requested_outputs_pick_order_and_binary_per_output() -> None:
    outputs = {
        "logits": np.array([[1.25, -3.0]], np.float32),
        "label": np.array([b"cat"], dtype=object),
        "flag": np.array([True]),
    }
    requested = [RequestedOutput("flag", binary=False), RequestedOutput("logits", binary=True)]
    body, headers = encode_infer_response(
        model_name="m", model_version="1", request_id="7", outputs=outputs, requested=requested,
        binary_output=False, parameters={"served_by": "modelyard"},
    )  # fmt: skip
    result = client_result(body, headers)
    doc = result.get_response()
    assert [o["name"] for o in doc["outputs"]] == ["flag", "logits"]
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("m", "1", "7")
    assert doc["parameters"] == {"served_by": "modelyard"}
    assert doc["outputs"][0]["data"] == [True]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert_same(result.as_numpy("logits"), outputs["logits"])
    assert result.as_numpy("label") is None


def test_response_without_id_or_parameters_leaves_them_out() -> None:
    body, _ = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs={"y": np.zeros(1, np.int64)},
        requested=None, binary_output=False,
    )  # fmt: skip
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [1], "data": [0]}],
    }


def test_big_endian_transposed_and_text_outputs_are_sent_row_major_little_endian() -> None:
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    outputs = {"be": base.astype(">f4"), "t": base.T, "text": np.array(["\u00e9t\u00e9", "b"])}
    body, headers = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs=outputs, requested=None,
        binary_output=True,
    )  # fmt: skip
    result = client_result(body, headers)
    assert_same(result.as_numpy("be"), base)
    assert_same(result.as_numpy("t"), np.ascontiguousarray(base.T))
    assert result.as_numpy("text").tolist() == ["\u00e9t\u00e9".encode(), b"b"]


def test_unknown_requested_output_is_refused_with_the_known_names() -> None:
    with pytest.raises(
        ProtocolError, match=r"unknown output 'probs'; this model's outputs are: logits, ood"
    ) as e:
        encode_infer_response(
            model_name="m", model_version="1", request_id=None,
            outputs={"logits": np.zeros(1), "ood": np.zeros(1)},
            requested=[RequestedOutput("probs", binary=False)], binary_output=False,
        )  # fmt: skip
    assert e.value.status == 400


def test_outputs_json_cannot_carry_are_refused() -> None:
    bad = np.array([b"\xff"], dtype=object)
    with pytest.raises(ProtocolError, match=r"output 'y' holds bytes that are not UTF-8.*binary_data") as e:
        encode_infer_response(
            model_name="m", model_version="1", request_id=None, outputs={"y": bad}, requested=None,
            binary_output=False,
        )  # fmt: skip
    assert e.value.status == 400
    with pytest.raises(
        ProtocolError, match=r"output 'y' holds a int; BYTES elements must be bytes or str"
    ) as e:
        encode_infer_response(
            model_name="m", model_version="1", request_id=None, outputs={"y": np.array([1, b"a"], dtype=object)},
            requested=None, binary_output=True,
        )  # fmt: skip
    assert e.value.status == 500
    with pytest.raises(ProtocolError, match=r"complex64 has no Open Inference Protocol datatype") as e:
        encode_infer_response(
            model_name="m", model_version="1", request_id=None, outputs={"y": np.zeros(1, np.complex64)},
            requested=None, binary_output=True,
        )  # fmt: skip
    assert e.value.status == 500


# -- helpers --------------------------------------------------------------------------------------------------


def test_datatype_of_and_tensor_metadata() -> None:
    want = {
        "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
        "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
        "float32": "FP32", "float64": "FP64", "object": "BYTES", "<U3": "BYTES", "S2": "BYTES",
    }  # fmt: skip
    assert {k: datatype_of(k) for k in want} == want
    assert datatype_of(np.dtype(">i4")) == "INT32"
    assert datatype_of("FP16") == "FP16"
    assert {datatype_of(dt) for dt in DATATYPES.values()} == set(DATATYPES)
    assert tensor_metadata("input_ids", "int64", (None, 128)) == {
        "name": "input_ids",
        "datatype": "INT64",
        "shape": [-1, 128],
    }
    with pytest.raises(ProtocolError, match=r"'floaty' is not a numpy dtype"):
        datatype_of("floaty")


def test_bytes_tensor_codec_matches_the_client() -> None:
    arr = sample("BYTES")
    encoded = encode_bytes_tensor(arr)
    assert encoded == serialize_byte_tensor(arr).item()
    assert encoded[:4] == struct.pack("<I", 0)
    assert decode_bytes_tensor(encoded).tolist() == arr.ravel().tolist()
    assert decode_bytes_tensor(b"").shape == (0,)
    assert json_data(np.array([[1, 2], [3, 4]], np.uint8)) == [1, 2, 3, 4]


# -- every malformed request is a 400 that names the problem --------------------------------------------------

X = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}
BAD_JSON_REQUESTS: list[tuple[bytes, str]] = [
    (b'{"inputs": [', r"request body is not valid JSON"),
    (b"\xff\xfe{", r"request body is not valid JSON"),
    (b"[" * 100_000, r"(not valid JSON|nested too deeply)"),
    (b"[1, 2]", r"request body must be a JSON object .*got an array of 2"),
    (b'"text"', r"request body must be a JSON object .*got the string 'text'"),
    (request_body({"id": "1"}), r'request has no "inputs"'),
    (request_body({"inputs": []}), r'"inputs" must be a non-empty list'),
    (request_body({"inputs": {"x": 1}}), r'"inputs" must be a non-empty list of tensors, got an object'),
    (request_body({"inputs": [5]}), r"inputs\[0\] must be an object"),
    (request_body({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}), r"inputs\[0\] has no 'name'"),
    (request_body({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}), r"inputs\[0\] has no 'shape'"),
    (request_body({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}), r"inputs\[0\] has no 'datatype'"),
    (request_body({"inputs": [{**X, "name": ""}]}), r"inputs\[0\] 'name' must be a non-empty string"),
    (request_body({"inputs": [{**X, "name": 3}]}), r"inputs\[0\] 'name' must be a non-empty string, got int 3"),
    (request_body({"inputs": [X, {**X, "name": "y"}, X]}), r"input 'x' appears twice"),
    (one_input(datatype="FP8", data=[1, 2]), r"input 'x' has unknown datatype 'FP8'; use one of BOOL, UINT8"),
    (one_input(datatype="fp32", data=[1, 2]), r"unknown datatype 'fp32'"),
    (request_body({"inputs": [{**X, "shape": [-1]}]}), r"input 'x' shape \[-1\] has a negative dimension"),
    (request_body({"inputs": [{**X, "shape": [2.0]}]}), r"input 'x' shape must be a list of integers"),
    (request_body({"inputs": [{**X, "shape": "2"}]}), r"input 'x' shape must be a list of integers"),
    (request_body({"inputs": [{**X, "shape": [True]}]}), r"input 'x' shape must be a list of integers"),
    (one_input(), r"input 'x' has no 'data' and no parameters.binary_data_size"),
    (one_input(data=3), r"input 'x' 'data' must be a JSON array .*got int 3"),
    (one_input(data=[1, 2, 3]), r"input 'x' has 3 values in 'data' but shape \[2\] needs 2"),
    (one_input(data=[[1], 2]), r"input 'x' 'data' mixes arrays and values at the same depth"),
    (one_input(data=[1, "abc"]), r"input 'x' \(FP32\) takes numbers in 'data', got the string 'abc'"),
    (one_input(data=[1, None]), r"input 'x' \(FP32\) takes numbers in 'data', got null"),
    (one_input(data=[1, True]), r"input 'x' \(FP32\) takes numbers in 'data', got true"),
    (one_input(data=[1, 1e39]), r"input 'x' \(FP32\) has value 1e\+39, beyond the largest FP32"),
    (one_input(data=[1, 10**400]), r"input 'x' \(FP32\) has an integer too large for a float"),
    (one_input(datatype="FP16", data=[1, 70000]), r"input 'x' \(FP16\) has value 70000.0, beyond the largest FP16"),
    (one_input(datatype="UINT8", data=[300, 1]), r"input 'x' \(UINT8\) has value 300, outside \[0, 255\]"),
    (one_input(datatype="INT8", data=[-129, 1]), r"input 'x' \(INT8\) has value -129, outside \[-128, 127\]"),
    (one_input(datatype="UINT64", data=[-1, 1]), r"input 'x' \(UINT64\) has value -1, outside"),
    (one_input(datatype="INT64", data=[2**63, 1]), r"input 'x' \(INT64\) has value 9223372036854775808, outside"),
    (one_input(datatype="INT32", data=[1, 2.5]), r"input 'x' \(INT32\) takes integers in 'data', got float 2.5"),
    (one_input(datatype="INT32", data=[1, False]), r"input 'x' \(INT32\) takes integers in 'data', got false"),
    (one_input(datatype="BOOL", data=[1, 0]), r"input 'x' \(BOOL\) takes true or false in 'data', got int 1"),
    (one_input(datatype="BYTES", data=["a", 5]), r"input 'x' \(BYTES\) takes strings .*got int 5"),
    (one_input(datatype="BYTES", data=["a", "\ud800"]), r"input 'x' \(BYTES\) has a string with a lone surrogate"),
    (one_input(data=[1, 2], parameters=[1]), r"input 'x' 'parameters' must be a JSON object"),
    (one_input(data=[1, 2], parameters={"binary_data_size": 8}), r"input 'x' has both 'data' and parameters"),
    (one_input(parameters={"shared_memory_region": "r"}), r"input 'x' uses shared memory"),
    (request_body({"id": 5, "inputs": [X]}), r"request 'id' must be a string, got int 5"),
    (request_body({"parameters": "p", "inputs": [X]}), r"request 'parameters' must be a JSON object"),
    (
        request_body({"parameters": {"binary_data_output": "yes"}, "inputs": [X]}),
        r"request parameters.binary_data_output must be true or false, got the string 'yes'",
    ),
    (request_body({"inputs": [X], "outputs": {"name": "y"}}), r'"outputs" must be a list'),
    (request_body({"inputs": [X], "outputs": [{"nom": "y"}]}), r"outputs\[0\] must be an object with a non-empty 'name'"),
    (request_body({"inputs": [X], "outputs": [{"name": "y"}, {"name": "y"}]}), r"output 'y' is requested twice"),
    (
        request_body({"inputs": [X], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}),
        r"output 'y' parameters.binary_data must be true or false, got int 1",
    ),
    (
        request_body({"inputs": [X], "outputs": [{"name": "y", "parameters": {"classification": 3}}]}),
        r"output 'y' asks for parameters.classification, which this server does not support",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "match"), BAD_JSON_REQUESTS)
def test_malformed_requests_are_400_with_a_message_naming_the_field(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as e:
        parse_infer_request(body, header_length=None)
    assert e.value.status == 400
    assert isinstance(e.value, ModelyardError)
    assert "\n" not in str(e.value)


def binary_request(inputs: list[dict[str, Any]], payload: bytes) -> tuple[bytes, int]:
    header = request_body({"inputs": inputs})
    return header + payload, len(header)


F32 = {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
TWO_F32 = np.array([1, 2], np.float32).tobytes()


def bytes_input(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "s", "shape": shape or [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}


BAD_BINARY_REQUESTS: list[tuple[list[dict[str, Any]], bytes, str]] = [
    ([F32], TWO_F32[:7], r"binary tensor data is too short: .* add up to 8 bytes but 7 bytes follow"),
    ([F32], TWO_F32 + b"\x00", r"binary tensor data is too long: .* add up to 8 bytes but 9 bytes follow"),
    ([X], b"\x00", r"binary tensor data is too long: .* add up to 0 bytes but 1 bytes follow"),
    ([{**F32, "parameters": {"binary_data_size": 4}}], TWO_F32[:4], r"input 'x' has binary_data_size 4 but FP32 of shape \[2\] needs 8 bytes"),
    ([{**F32, "parameters": {"binary_data_size": -8}}], b"", r"input 'x' parameters.binary_data_size must be a non-negative integer, got -8"),
    ([{**F32, "parameters": {"binary_data_size": "8"}}], TWO_F32, r"binary_data_size must be a non-negative integer, got '8'"),
    ([{**F32, "datatype": "BOOL", "parameters": {"binary_data_size": 2}}], b"\x01\x02", r"input 'x' \(BOOL\) has byte value 2"),
    ([bytes_input(3)], b"\x01\x00\x00", r"input 's': BYTES data ends inside a 4-byte length prefix at byte 0"),
    ([bytes_input(6)], struct.pack("<I", 10) + b"ab", r"input 's': a BYTES element declares 10 bytes at byte 0 but only 2 remain"),
    ([bytes_input(10)], encode_bytes_tensor([b"a", b"b"]), r"input 's' has 2 BYTES elements in its binary data but shape \[1\] needs 1"),
]  # fmt: skip


@pytest.mark.parametrize(("inputs", "payload", "match"), BAD_BINARY_REQUESTS)
def test_malformed_binary_requests_are_400_with_a_message_naming_the_field(
    inputs: list[dict[str, Any]], payload: bytes, match: str
) -> None:
    body, header_length = binary_request(inputs, payload)
    with pytest.raises(ProtocolError, match=match) as e:
        parse_infer_request(body, header_length=header_length)
    assert e.value.status == 400


def test_header_length_problems_are_400() -> None:
    body, header_length = binary_request([F32], TWO_F32)
    assert_same(
        parse_infer_request(body, header_length=header_length).inputs[0].data, np.array([1, 2], np.float32)
    )
    with pytest.raises(
        ProtocolError, match=rf"{HEADER_LENGTH} is 999 but the body has only {len(body)} bytes"
    ):
        parse_infer_request(body, header_length=999)
    with pytest.raises(ProtocolError, match=rf"{HEADER_LENGTH} must be a non-negative byte count, got -1"):
        parse_infer_request(body, header_length=-1)
    with pytest.raises(
        ProtocolError,
        match=rf"JSON header followed by binary tensor data but has no {HEADER_LENGTH} header",
    ):
        parse_infer_request(body, header_length=None)
    header_only = body[:header_length]
    with pytest.raises(
        ProtocolError,
        match=rf"input 'x' has parameters.binary_data_size but the request has no {HEADER_LENGTH}",
    ):
        parse_infer_request(header_only, header_length=None)
    with pytest.raises(ProtocolError, match=r"request body is not valid JSON"):
        parse_infer_request(body, header_length=header_length - 1)


# -- properties -----------------------------------------------------------------------------------------------


@st.composite
def tensors(draw: st.DrawFn, *, text: bool) -> np.ndarray:
    datatype = draw(st.sampled_from(list(DATATYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if datatype != "BYTES":
        return draw(hnp.arrays(DATATYPES[datatype], shape))
    elements = (
        st.text(st.characters(codec="utf-8"), max_size=6).map(str.encode) if text else st.binary(max_size=6)
    )
    arr = np.empty(math.prod(shape), dtype=object)
    arr[:] = draw(st.lists(elements, min_size=arr.size, max_size=arr.size))
    return arr.reshape(shape)


@settings(max_examples=80, deadline=None)
@given(st.booleans().flatmap(lambda b: st.tuples(st.just(b), tensors(text=not b))))
def test_any_tensor_round_trips_from_the_client(case: tuple[bool, np.ndarray]) -> None:
    binary, arr = case
    body, json_size = client_request({"t": arr}, binary=binary)
    req = parse_infer_request(body, header_length=json_size)
    assert isinstance(req, InferRequest)
    got = req.inputs[0].data
    if binary and arr.dtype != object:
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()  # bit-exact, NaN payloads included
    else:
        assert_same(got, arr)


@settings(max_examples=80, deadline=None)
@given(st.booleans().flatmap(lambda b: st.tuples(st.just(b), tensors(text=not b))))
def test_any_tensor_round_trips_to_the_client(case: tuple[bool, np.ndarray]) -> None:
    binary, arr = case
    body, headers = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs={"t": arr}, requested=None,
        binary_output=binary,
    )  # fmt: skip
    got = client_result(body, headers).as_numpy("t")
    if arr.dtype == object:
        want = arr.ravel().tolist() if binary else [b.decode() for b in arr.ravel()]
        assert got.ravel().tolist() == want and got.shape == arr.shape
    elif arr.size == 0:
        assert got.shape == arr.shape
    else:
        assert_same(got, arr)
