"""Triton's model-repository index and model-configuration requests, answered for what this server serves, so
Triton's own tooling and ``tritonclient``'s listing calls (``get_model_repository_index``,
``get_model_config``) work against modelyard.

- ``POST /v2/repository/index`` (body optional, ``{"ready": true}`` lists only ready models): one entry per
  served model, ``{"name", "version", "state", "reason"}``, state ``READY`` or ``UNAVAILABLE`` with the
  reason.
- ``GET /v2/models/{name}[/versions/{v}]/config``: the model configuration in Triton's JSON form (``name``,
  ``platform``, ``backend``, ``max_batch_size``, ``input``/``output`` with ``data_type`` ``TYPE_*`` and
  ``dims`` without the batch dimension, ``dynamic_batching`` with the batch size the server chose from the
  measured curve). The repository is read-only: load and unload are not offered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from modelyard.serve.inputs import bad_request
from modelyard.serve.protocol import tensor_metadata

if TYPE_CHECKING:
    from modelyard.serve.batcher import BatchingConfig
    from modelyard.serve.model import ServedModel
    from modelyard.serve.state import Deployment, ServerState

router = APIRouter(tags=["triton"])

# OIP datatype -> Triton model-configuration data type
_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


class IndexRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    ready: bool = False


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.serve
    return state


def _tensors(entries: list[dict[str, Any]], *, batched: bool) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        shape = list(e["shape"])
        dims = shape[1:] if batched and shape else shape
        out.append({"name": e["name"], "data_type": _TYPES.get(e["datatype"], "TYPE_INVALID"), "dims": dims})
    return out


def model_config(deployment: Deployment) -> dict[str, Any]:
    """Triton's model configuration for one served version (dims without the batch dimension when the model
    batches, as Triton writes them)."""
    return config_for(deployment.model, deployment.batching)


def config_for(model: ServedModel, batching: BatchingConfig, *, graph: bool = False) -> dict[str, Any]:
    """Triton's model configuration for ``model`` batched as ``batching``. ``graph=True`` lists the model
    file's own inputs and outputs (what Triton's ONNX Runtime backend serves; the Triton export uses it)
    instead of the ones this server answers with."""
    batched = model.batchable
    # Triton's names where it has a backend for the format (its OpenVINO backend takes no platform), else
    # the OIP platform with the Python backend that would have to wrap it there
    platform, backend = {
        "onnx": ("onnxruntime_onnx", "onnxruntime"),
        "openvino": ("", "openvino"),
    }.get(model.candidate.format, (model.platform, "python"))
    if graph:
        spec = model.runner.spec
        inputs = [tensor_metadata(t.name, t.dtype, _dims(t.shape)) for t in spec.inputs]
        outputs = [tensor_metadata(t.name, t.dtype, _dims(t.shape)) for t in spec.outputs]
    else:
        inputs, outputs = model.inputs_metadata(), model.outputs_metadata()
    config: dict[str, Any] = {
        "name": model.name,
        "platform": platform,
        "backend": backend,
        "version_policy": {"specific": {"versions": [model.version]}},
        "max_batch_size": batching.max_batch_size if batched else 0,
        "input": _tensors(inputs, batched=batched),
        "output": _tensors(outputs, batched=batched),
        "parameters": {"modelyard_batching": {"string_value": batching.why}},
    }
    if batched and batching.max_batch_size > 1:
        config["dynamic_batching"] = {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": int(batching.max_wait_s * 1e6),
        }
    return config


def _dims(shape: Any) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> list[dict[str, Any]]:
    raw = await request.body()
    try:
        ready_only = IndexRequest.model_validate_json(raw).ready if raw.strip() else False
    except ValidationError:
        raise bad_request('the repository index body must be empty or {"ready": true|false}') from None
    state = _state(request)
    out = []
    for name in sorted(state.slots):
        slot = state.slots[name]
        ok = state.ready and not state.shutting_down
        entry = {
            "name": name,
            "version": str(slot.current.model.version),
            "state": "READY" if ok else "UNAVAILABLE",
            "reason": "" if ok else state.not_ready_reason(),
        }
        if ok or not ready_only:
            out.append(entry)
    return out


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def config(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    return model_config(_state(request).slot(name, version).current)
