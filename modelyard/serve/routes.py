"""The HTTP surface: Open Inference Protocol v2 endpoints (health, metadata, inference), ``/predict`` and
``/metrics``, and :func:`install`, which adds them to an app with the middleware
(:mod:`modelyard.serve.middleware`) and the error handlers (:mod:`modelyard.serve.error_handlers`).

Handlers are thin: they find the model slot on ``request.app.state.serve`` (a
:class:`~modelyard.serve.state.ServerState`), let it validate and run the request, and encode the answer.
Errors are raised (ProtocolError, QueueFull, TimeoutError) and answered as ``{"error": ...}`` by the error
handlers: 400 bad request (FastAPI's 422 included), 401, 404, 405, 413, 503 (with Retry-After), 504, and 500
"internal error" with the details in the log only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modelyard._version import __version__
from modelyard.serve.error_handlers import add_error_handlers
from modelyard.serve.middleware import ServerMiddleware
from modelyard.serve.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)
from modelyard.serve.state import ServerState

router = APIRouter()

# ---------------------------------------------------------------------------------------------------
# schemas (for /openapi.json and response validation)


class ErrorBody(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class PredictRequest(BaseModel):
    """The simple JSON API: ``inputs`` holds texts (text models), rows of the single input, or records
    ``{input name: row}``; ``model`` may be left out when the server serves one model."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, description="model name; optional when one model is served")
    inputs: list[Any] = Field(min_length=1, description="texts, rows, or records {input name: row}")


class ClassPrediction(BaseModel):
    label: str
    class_index: int
    probabilities: list[float] = Field(description="softmax(logits / T) with the fitted temperature")
    ood: bool | None = Field(description="out-of-distribution flag; null when the model has no OOD rule")
    ood_score: float | None = None


class EmbeddingPrediction(BaseModel):
    embedding: list[float]


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[ClassPrediction | EmbeddingPrediction]


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "bad request",
        401: "missing or wrong API key",
        404: "unknown model or version",
        413: "request body too large",
        503: "not ready, queue full (see Retry-After) or shutting down",
        504: "inference timed out",
    }.items()
}

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "row-major values, flat or nested"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_BINARY = {
    "type": "string",
    "format": "binary",
    "description": f"JSON header, then tensor bytes; see {HEADER_LENGTH}",
}
_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {"schema": _BINARY},
        },
    },
    "responses": {
        "200": {
            "description": "inference result (binary parts follow the JSON header when requested)",
            "content": {
                "application/json": {"schema": _INFER_RESPONSE},
                "application/octet-stream": {"schema": _BINARY},
            },
        }
    },
}


def _state(request: Request) -> ServerState:
    return request.app.state.serve  # type: ignore[no-any-return]


def _label(request: Request, name: str, version: str) -> None:
    """Name the model and version in this request's metrics."""
    request.state.model_labels = (name, version)


# ---------------------------------------------------------------------------------------------------
# health and metadata


@router.get("/v2", response_model=ServerMetadata, responses=_ERRORS, tags=["oip"])
async def server_metadata() -> dict[str, Any]:
    return {"name": "modelyard", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live", response_model=Live, tags=["oip"])
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/v2/health/ready", response_model=Ready, responses={503: _ERRORS[503]}, tags=["oip"])
async def ready(request: Request) -> Any:
    state = _state(request)
    if state.ready and not state.shutting_down:
        return {"ready": True}
    return JSONResponse({"ready": False, "error": f"not ready: {state.not_ready_reason()}"}, status_code=503)


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=_ERRORS, tags=["oip"])
@router.get(
    "/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_ERRORS, tags=["oip"]
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    slot = _state(request).slot(name, version)
    return slot.current.model.metadata()


@router.get("/v2/models/{name}/ready", response_model=ModelReady, responses=_ERRORS, tags=["oip"])
@router.get(
    "/v2/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=_ERRORS, tags=["oip"]
)
async def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    _state(request).slot(name, version)
    return {"name": name, "ready": True}


# ---------------------------------------------------------------------------------------------------
# inference


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be a byte count, got {raw!r}")
    return int(raw)


@router.post("/v2/models/{name}/infer", responses=_ERRORS, openapi_extra=_INFER_OPENAPI, tags=["oip"])
@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    responses=_ERRORS,
    openapi_extra=_INFER_OPENAPI,
    tags=["oip"],
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request)
    slot = state.slot(name, version)
    _label(request, name, str(slot.current.model.version))
    body = await request.body()
    parsed = parse_infer_request(body, header_length=_header_length(request))
    if parsed.outputs is not None:
        known = slot.current.model.output_names
        for o in parsed.outputs:
            if o.name not in known:
                raise ProtocolError(
                    f"unknown output {o.name!r}; this model's outputs are: {', '.join(known)}"
                )
    outputs, dep = await state.infer(slot, version, lambda model: model.prepare(parsed.inputs))
    model = dep.model
    _label(request, model.name, str(model.version))
    payload, headers = encode_infer_response(
        model_name=model.name,
        model_version=str(model.version),
        request_id=parsed.id,
        outputs=outputs,
        requested=parsed.outputs,
        binary_output=parsed.binary_output,
    )
    return Response(content=payload, headers=headers)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    tags=["simple"],
)
async def predict(request: Request, body: PredictRequest) -> dict[str, Any]:
    state = _state(request)
    slot = state.slot(body.model) if body.model is not None else state.default_slot()
    outputs, dep = await state.infer(slot, None, lambda model: model.prepare_json(body.inputs))
    model = dep.model
    _label(request, model.name, str(model.version))
    return {"model": model.name, "version": str(model.version), "predictions": model.postprocess(outputs)}


@router.get("/metrics", responses={401: _ERRORS[401]}, tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = _state(request).metrics.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


def install(app: FastAPI, state: ServerState) -> None:
    """Add the endpoints, the middleware and the error handlers to ``app``."""
    app.include_router(router)
    app.add_middleware(ServerMiddleware, state=state)
    add_error_handlers(app)
