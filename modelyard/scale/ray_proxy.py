"""What Ray Serve's HTTP proxy loads for ``modelyard serve --ray auto`` (named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): one ASGI middleware that keeps a single ``x-request-id``.

Ray's proxy appends its own ``x-request-id`` to every answer, after the one the server set (the client's id,
the OIP ``id`` of an inference request, or a new one): a client then sees two, which may differ. The
server's comes first and is the one its prediction log and feedback know, so the later ones are dropped.
Imported in the proxy's process: it needs nothing but the standard library and Starlette."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["OneRequestId", "proxy_middlewares"]

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Any, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

HEADER = b"x-request-id"


def first_request_id_only(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without every ``x-request-id`` after the first."""
    out, seen = [], False
    for key, value in headers:
        if key.lower() == HEADER:
            if seen:
                continue
            seen = True
        out.append((key, value))
    return out


class OneRequestId:
    """Pure ASGI middleware: an HTTP answer leaves with at most one ``x-request-id`` (the first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_one(message: Message) -> None:
            if message.get("type") == "http.response.start":
                message["headers"] = first_request_id_only(list(message.get("headers") or []))
            await send(message)

        await self.app(scope, receive, send_one)


def proxy_middlewares() -> list[Any]:
    """The middlewares Ray Serve's proxy wraps its app in (outside its own request-id middleware)."""
    from starlette.middleware import Middleware

    return [Middleware(OneRequestId)]
