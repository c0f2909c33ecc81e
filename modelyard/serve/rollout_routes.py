"""The server's rollout routes, thin shells over :mod:`modelyard.rollout.control` (behind the API key like every
route but the health checks):

- ``POST /v2/models/{name}/rollout`` ``{"version": int, "mode": "shadow"|"canary", "percent": float?,
  "sticky_header": str?, "policy": {[rollout] table}?}``: 201 and the rollout's view; the server picks it up at
  its next tick (:mod:`modelyard.serve.rollouts`);
- ``GET /v2/models/{name}/rollout``: the running rollout, else the latest ended one (404 when none);
- ``DELETE /v2/models/{name}/rollout``: stop the running one, champion kept (404 when none);
- ``GET /v2/rollouts``: ``{"rollouts": [view, ...]}``, running first.

Bad input is ``{"error": ...}`` with 400 (a bad value), 404 (unknown model, version or no rollout) or 409 (the
version is the champion, no champion, a rollout already runs); nothing is written then.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from modelyard.config import RolloutPolicy, policy_from_dict
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.rollout.control import RolloutError, rollout_status, start_rollout, stop_rollout
from modelyard.serve.protocol import ProtocolError

router = APIRouter(tags=["rollout"])

_FIELDS = ("version", "mode", "percent", "sticky_header", "policy")


def _registry(request: Request) -> Registry:
    return request.app.state.serve.registry  # type: ignore[no-any-return]


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a control call off the event loop; its errors become ``{"error": ...}`` answers."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except RolloutError as exc:
        raise ProtocolError(str(exc), exc.status) from None
    except ConfigError as exc:
        raise ProtocolError(str(exc), 400) from None


def _policy(raw: Any) -> RolloutPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError(f"'policy' must be an object (a [rollout] table), got {type(raw).__name__}")
    try:
        return policy_from_dict({"rollout": raw}).rollout
    except ConfigError as exc:
        raise ProtocolError(str(exc)) from None


@router.post("/v2/models/{name}/rollout", status_code=201)
async def start(request: Request, name: str) -> JSONResponse:
    try:
        doc = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise ProtocolError('the body must be a JSON object: {"version": 2, "mode": "shadow"|"canary", ...}')
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    if "version" not in doc or "mode" not in doc:
        raise ProtocolError("'version' and 'mode' are required")
    view = await _call(
        start_rollout,
        _registry(request),
        name,
        doc["version"],
        mode=doc["mode"],
        percent=doc.get("percent"),
        sticky_header=doc.get("sticky_header"),
        policy=_policy(doc.get("policy")),
    )
    return JSONResponse(view.to_dict(), status_code=201)


@router.get("/v2/models/{name}/rollout")
async def status(request: Request, name: str) -> dict[str, Any]:
    views = await _call(rollout_status, _registry(request), name)
    if not views:
        raise ProtocolError(
            f"model {name!r} has had no rollout; start one with POST /v2/models/{name}/rollout", 404
        )
    return views[0].to_dict()  # type: ignore[no-any-return]


@router.delete("/v2/models/{name}/rollout")
async def stop(request: Request, name: str) -> dict[str, Any]:
    view = await _call(stop_rollout, _registry(request), name, reason="stopped over HTTP")
    return view.to_dict()  # type: ignore[no-any-return]


@router.get("/v2/rollouts")
async def every(request: Request) -> dict[str, Any]:
    views = await _call(rollout_status, _registry(request))
    return {"rollouts": [v.to_dict() for v in views]}
