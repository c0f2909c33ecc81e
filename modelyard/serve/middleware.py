"""The server's pure ASGI middleware: the request id, the API key, the body-size limit, the in-flight gauge,
request metrics, the prediction log and the last-resort 500.

Every response carries an ``x-request-id`` header: the client's own ``x-request-id`` when it is a safe token
(letters, digits and ``._:-``, at most 128 characters, see :func:`is_safe_request_id`), else a new uuid4 hex; an
inference route may replace it with the request's OIP ``id`` (``request.state.request_id``). Once the answer
is sent, a request a route marked for the prediction log (``request.state.monitor_capture``) is logged under
that id with the whole request's latency; only 200 answers are logged.

It checks the API key (every path but ``/v2/health/*`` when a key is set, compared in constant time; the
dashboard's paths also take it as the password of HTTP Basic credentials, which a browser asks for) and the
body size (413 as soon as ``Content-Length`` or the streamed bytes pass ``max_body_bytes``), refuses new
requests while the server shuts down, counts in-flight requests, records request metrics, and answers any
unexpected exception with a 500 whose traceback goes to the log, never to the client.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from modelyard.serve.state import Capture, ServerState

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no API key needed
REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# The dashboard, opened in a browser, which cannot send a bearer token: these paths also take HTTP Basic
# credentials whose password is the API key (any user name), and their 401 asks the browser for them.
BROWSER_PATHS = ("/dashboard/", "/v2/dashboard/")


def _browser_path(path: str) -> bool:
    return path == "/dashboard" or path.startswith(BROWSER_PATHS)


def _basic_password(token: bytes) -> bytes:
    """The password of HTTP Basic credentials (base64 of ``user:password``); empty when malformed."""
    try:
        return base64.b64decode(token, validate=True).partition(b":")[2]
    except ValueError:
        return b""


def is_safe_request_id(value: object) -> bool:
    """Whether ``value`` can be a request id as given: 1 to 128 letters, digits and ``._:-``, starting with a
    letter or digit (safe in a header, a log line and a file)."""
    return isinstance(value, str) and _SAFE_ID.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def _client_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers") or []:
        if name.lower() == REQUEST_ID_HEADER:
            given = value.decode("latin-1")
            return given if is_safe_request_id(given) else new_request_id()
    return new_request_id()


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


class DirectRoute(Protocol):
    """A route the middleware answers itself, bypassing the app's router (see ``routes.DirectInfer``)."""

    def match(self, scope: Scope) -> tuple[str, str | None] | None: ...

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None: ...


class ServerMiddleware:
    """Auth, body-size limit, in-flight gauge, request metrics and the last-resort 500, as pure ASGI."""

    def __init__(self, app: Any, state: ServerState, direct: DirectRoute | None = None) -> None:
        self.app = app
        self.state = state
        self.direct = direct

    def _authorized(self, scope: Scope) -> bool:
        key = self.state.settings.api_key
        if key is None:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"basic" and _browser_path(str(scope.get("path", ""))):
            token = _basic_password(token.strip())
        elif scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(token.strip(), key.encode("utf-8"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.state.metrics
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        request_state: dict[str, Any] = scope.setdefault("state", {})
        request_state["request_id"] = _client_request_id(scope)

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = int(message["status"]), True
                rid = str(request_state.get("request_id") or "").encode("latin-1")
                headers = [(k, v) for k, v in message.get("headers") or [] if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid)]}
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
            labels = request_state.get("model_labels") or ("", "")
            seconds = time.perf_counter() - started
            if status["sent"]:  # a client that left before any answer is not counted
                metrics.observe_request(labels[0], labels[1], endpoint, int(status["code"]), seconds)
            capture = request_state.get("monitor_capture")
            if capture is not None and status["sent"] and status["code"] == 200:
                self._log(capture, str(request_state["request_id"]), seconds * 1000.0)

    def _log(self, capture: Capture, request_id: str, latency_ms: float) -> None:
        try:
            self.state.log_prediction(capture, request_id, latency_ms)
        except Exception:  # logging never fails a request; log_prediction counts its own errors
            if self.state.monitor is not None:
                self.state.monitor.count_dropped("error")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path not in OPEN_PATHS and not self._authorized(scope):
            await _send_json(
                send,
                401,
                {
                    "error": "missing or wrong API key; send the header 'Authorization: Bearer <MODELYARD_API_KEY>'"
                },
                [(b"www-authenticate", b'Bearer realm="modelyard"')]
                + ([(b"www-authenticate", b'Basic realm="modelyard"')] if _browser_path(path) else []),
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
        if self.direct is not None and (target := self.direct.match(scope)) is not None:
            await self.direct(scope, replay, send, *target)
            return
        await self.app(scope, replay, send)
