"""The HTTP surface: Open Inference Protocol v2 endpoints (health, metadata, inference), ``/predict``, label
feedback (``POST /v2/models/{name}/feedback``) and ``/metrics``, and :func:`install`, which adds them (and the rollout routes of
:mod:`modelyard.serve.rollout_routes`) to an app with the middleware (:mod:`modelyard.serve.middleware`) and the error handlers
(:mod:`modelyard.serve.error_handlers`).

Inference answers carry the request id in the ``x-request-id`` header and in the body's ``id``. A client's OIP
``id`` is echoed as the OIP specification asks and, when it is a safe token, is the request id; otherwise the
request id is the client's ``x-request-id`` header (when safe) or a new uuid4 hex, and the body's ``id`` is
that id when the client sent none. Labels posted later name the request by this id.

Handlers are thin: they find the model slot on ``request.app.state.serve`` (a
:class:`~modelyard.serve.state.ServerState`), let it validate and run the request, and encode the answer.
Errors are raised (ProtocolError, QueueFull, TimeoutError) and answered as ``{"error": ...}`` by the error
handlers: 400 bad request (FastAPI's 422 included), 401, 404, 405, 413, 503 (with Retry-After), 504, and 500
"internal error" with the details in the log only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from modelyard._version import __version__
from modelyard.errors import DataError
from modelyard.monitor.feedback import parse_feedback_body
from modelyard.serve import triton
from modelyard.serve.error_handlers import add_error_handlers
from modelyard.serve.middleware import ServerMiddleware, is_safe_request_id, new_request_id
from modelyard.serve.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)
from modelyard.serve.rollout_routes import router as rollout_router
from modelyard.serve.state import Inference, ServerState

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
    id: str | None = Field(
        default=None, description="request id (a safe token); default: x-request-id or new"
    )


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
    id: str = Field(description="the request id (also in the x-request-id header); labels name it")
    predictions: list[ClassPrediction | EmbeddingPrediction]


class FeedbackResponse(BaseModel):
    stored: int = Field(description="labels stored")
    requests: int = Field(description="distinct request ids labelled")


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


def _request_id(request: Request, given: str | None) -> str:
    """This request's id: the client's id when it is a safe token, else the middleware's (header or new)."""
    if given is not None and is_safe_request_id(given):
        request.state.request_id = given
    rid = getattr(request.state, "request_id", None)
    if not isinstance(rid, str):
        rid = request.state.request_id = new_request_id()
    return rid


def _capture(request: Request, result: Inference, endpoint: str) -> None:
    """Mark the request for the prediction log (the middleware logs it once the answer is sent)."""
    capture = _state(request).capture(result, endpoint)
    if capture is not None:
        request.state.monitor_capture = capture


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
    rid = _request_id(request, parsed.id)
    result = await state.infer(
        slot, version, lambda model: model.prepare(parsed.inputs), request_id=rid, headers=request.headers
    )
    model = result.deployment.model
    _label(request, model.name, str(model.version))
    payload, headers = encode_infer_response(
        model_name=model.name,
        model_version=str(model.version),
        request_id=parsed.id if parsed.id is not None else rid,
        outputs=result.outputs,
        requested=parsed.outputs,
        binary_output=parsed.binary_output,
    )
    _capture(request, result, "infer")
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
    if body.id is not None and not is_safe_request_id(body.id):
        raise ProtocolError(
            f"'id' {body.id[:40]!r} is not a usable request id; use 1 to 128 letters, digits and ._:- "
            "(or leave it out)"
        )
    rid = _request_id(request, body.id)
    result = await state.infer(
        slot, None, lambda model: model.prepare_json(body.inputs), request_id=rid, headers=request.headers
    )
    model = result.deployment.model
    _label(request, model.name, str(model.version))
    predictions = model.postprocess(result.outputs)
    _capture(request, result, "predict")
    return {"model": model.name, "version": str(model.version), "id": rid, "predictions": predictions}


# ---------------------------------------------------------------------------------------------------
# label feedback


_FEEDBACK_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["id", "label"],
                            "properties": {"id": {"type": "string"}, "label": {}},
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "required": ["feedback"],
                            "properties": {
                                "feedback": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["id", "label"],
                                        "properties": {"id": {"type": "string"}, "label": {}},
                                        "additionalProperties": False,
                                    },
                                }
                            },
                            "additionalProperties": False,
                        },
                    ]
                }
            }
        },
    }
}


@router.post(
    "/v2/models/{name}/feedback",
    response_model=FeedbackResponse,
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "the prediction log is off"}},
    openapi_extra=_FEEDBACK_OPENAPI,
    tags=["monitor"],
)
async def feedback(request: Request, name: str) -> dict[str, Any]:
    """Labels for logged requests, by request id: ``{"id", "label"}`` or ``{"feedback": [{"id", "label"},
    ...]}``; all stored or none (404 naming the unknown ids, 400 for a bad body or a label that is not a class
    of the model). A request labelled twice keeps both labels; readers use the latest."""
    state = _state(request)
    slot = state.slot(name)
    _label(request, name, str(slot.current.model.version))
    try:
        doc = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(
            'the body is not valid JSON; send {"id": "<request id>", "label": ...} or {"feedback": [...]}'
        ) from None
    try:
        items = parse_feedback_body(doc)
    except DataError as exc:
        raise ProtocolError(str(exc)) from None
    stored = await state.store_feedback(name, items)
    return {"stored": stored.labels, "requests": stored.requests}


@router.get("/metrics", responses={401: _ERRORS[401]}, tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = _state(request).metrics.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


# ---------------------------------------------------------------------------------------------------
# the inference routes answered directly


_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class DirectInfer:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` answered by the same :func:`infer` and the same
    error handlers, called by the middleware instead of through FastAPI's router: on a small model the
    router's matching and dependency solving cost a large share of a request's CPU. Every other request, and
    any other method on these paths, goes through the router as before."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes = {
            route.path: route
            for route in router.routes
            if isinstance(route, APIRoute) and route.endpoint is infer and "POST" in (route.methods or ())
        }

    def match(self, scope: dict[str, Any]) -> tuple[str, str | None] | None:
        """The model name and version of a POST to an inference path, else None."""
        if scope.get("method") != "POST" or len(self.routes) != 2:
            return None
        found = _INFER_PATH.fullmatch(scope.get("path", ""))
        return None if found is None else (found.group(1), found.group(2))

    async def __call__(
        self, scope: dict[str, Any], receive: Any, send: Any, name: str, version: str | None
    ) -> None:
        path = "/v2/models/{name}/infer" if version is None else "/v2/models/{name}/versions/{version}/infer"
        scope["route"] = self.routes[path]
        scope["path_params"] = {"name": name} if version is None else {"name": name, "version": version}
        request = Request(scope, receive)
        try:
            response = await infer(request, name, version)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Any:
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None


def install(app: FastAPI, state: ServerState) -> None:
    """Add the endpoints, the middleware and the error handlers to ``app``."""
    app.include_router(router)
    app.include_router(rollout_router)
    app.include_router(triton.router)
    app.add_middleware(ServerMiddleware, state=state, direct=DirectInfer(app))
    add_error_handlers(app)
