"""The server's error handlers: every error is answered as ``{"error": "..."}``.

ProtocolError with its status (503 with Retry-After), QueueFull 503 with Retry-After, TimeoutError 504, any
other ModelyardError 500 "internal error" (details in the log only), FastAPI's 404/405 with the endpoint and
the allowed methods, and its 422 validation errors as 400.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.errors import ModelyardError
from modelyard.serve.batcher import QueueFull
from modelyard.serve.protocol import ProtocolError
from modelyard.serve.state import ServerState

log = logging.getLogger(__name__)


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


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error raised by a handler as ``{"error": ...}`` with its status."""
    app.add_exception_handler(ProtocolError, _protocol_error)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(TimeoutError, _timeout)
    app.add_exception_handler(ModelyardError, _modelyard_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
