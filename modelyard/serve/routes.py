"""The HTTP surface: Open Inference Protocol v2 endpoints (health, metadata, inference), ``/predict``,
``/metrics``, the middleware and the error handlers.

Handlers are thin: they find the model slot on ``request.app.state.serve`` (a
:class:`~modelyard.serve.app.ServerState`), let it validate and run the request, and encode the answer.
Errors are raised (ProtocolError, QueueFull, TimeoutError) and answered as ``{"error": ...}`` by the handlers
below: 400 bad request (FastAPI's 422 included), 401, 404, 405, 413, 503 (with Retry-After), 504, and 500
"internal error" with the details in the log only.

A pure ASGI middleware checks the API key (every path but ``/v2/health/*`` when a key is set, compared in
constant time), the body size (413 as soon as ``Content-Length`` or the streamed bytes pass
``max_body_bytes``), counts in-flight requests, records request metrics, and answers any unexpected
exception with a 500 whose traceback goes to the log, never to the client.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.errors import ModelyardError
from modelyard.serve.batcher import QueueFull
from modelyard.serve.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)

if TYPE_CHECKING:
    from modelyard.serve.app import ServerState

log = logging.getLogger(__name__)
router = APIRouter()

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no API key needed
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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
    from modelyard import __version__

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


# ---------------------------------------------------------------------------------------------------
# middleware


async def _send_json(
    send: Send, status: int, doc: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(doc).encode("utf-8")
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ServerMiddleware:
    """Auth, body-size limit, in-flight gauge, request metrics and the last-resort 500, as pure ASGI."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    def _authorized(self, scope: Scope) -> bool:
        key = self.state.settings.api_key
        if key is None:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(token.strip(), key.encode("utf-8"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.state.metrics
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = int(message["status"]), True
            await send(message)

        metrics.inflight_requests.inc()
        try:
            await self._handle(scope, receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not status["sent"]:
                await _send_json(tracked_send, 500, {"error": "internal error"})
        finally:
            metrics.inflight_requests.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            labels = (scope.get("state") or {}).get("model_labels") or ("", "")
            if status["sent"]:  # a client that left before any answer is not counted
                metrics.observe_request(
                    labels[0], labels[1], endpoint, int(status["code"]), time.perf_counter() - started
                )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path not in OPEN_PATHS and not self._authorized(scope):
            await _send_json(
                send,
                401,
                {
                    "error": "missing or wrong API key; send the header 'Authorization: Bearer <MODELYARD_API_KEY>'"
                },
                [(b"www-authenticate", b'Bearer realm="modelyard"')],
            )
            return
        limit = self.state.settings.max_body_bytes
        too_big = {
            "error": f"request body is larger than the server's limit of {limit} bytes; send less data per request or raise --max-body-mb"
        }
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_json(
                    send,
                    400,
                    {"error": f"Content-Length {length.decode(errors='replace')!r} is not a byte count"},
                )
                return
            if declared > limit:
                await _send_json(send, 413, too_big)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        if self.state.shutting_down and path not in OPEN_PATHS:
            await _send_json(send, 503, {"error": "the server is shutting down; retry on another instance"})
            return
        await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------------------------
# error handlers: every error is {"error": "..."}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _protocol_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProtocolError)
    status = exc.status
    if status >= 500 and status != 503:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return _error(status, str(exc), {"Retry-After": "1"} if status == 503 else None)


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return _error(503, str(exc), {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})


async def _timeout(request: Request, exc: Exception) -> JSONResponse:
    state: ServerState = request.app.state.serve
    t = state.settings.request_timeout_s
    return _error(
        504, f"inference did not finish within {t:g} s; retry later, or raise the server's --timeout-s"
    )


async def _modelyard_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return _error(500, "internal error")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = (
            f"no such endpoint: {request.method} {request.url.path}; the API is described at /openapi.json"
        )
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    else:
        message = str(exc.detail)
    return _error(exc.status_code, message, dict(exc.headers or {}) or None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for e in list(exc.errors())[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return _error(400, "invalid request: " + "; ".join(parts))


def install(app: FastAPI, state: ServerState) -> None:
    """Add the endpoints, the middleware and the error handlers to ``app``."""
    app.include_router(router)
    app.add_middleware(ServerMiddleware, state=state)
    app.add_exception_handler(ProtocolError, _protocol_error)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(TimeoutError, _timeout)
    app.add_exception_handler(ModelyardError, _modelyard_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
