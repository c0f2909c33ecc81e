"""The server's dashboard: ``GET /dashboard`` (one static page), its script and style under
``/dashboard/static/``, and the data it polls, ``GET /v2/dashboard/data``.

The page is plain HTML, JavaScript and inline SVG shipped in the package (``serve/static/``): no build step,
nothing fetched from another origin (a Content-Security-Policy header holds it to its own origin). Every path
here is behind the API key when one is set, like the rest of the API (the middleware checks it); since a
browser cannot send a bearer token, these paths also take the key as the password of HTTP Basic credentials
(any user name): the browser asks for it once and sends it with the page's polls.

The data endpoint answers one JSON document (see :mod:`modelyard.serve.dashboard_data`): the server (ready,
served versions), the registry (models, versions with lineage and the evidence and verdict each was chosen
on, aliases, the audit log of alias moves with reasons), live request rate, latency and errors of the
inference endpoints, the monitor's drift per feature and estimated vs realised accuracy per window for each
served version, and the rollouts with their per-signal statistics and decision boundaries. The slow parts
(registry reads, the monitor's checks) run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse

from modelyard._version import __version__
from modelyard.errors import first_line
from modelyard.serve.dashboard_data import LiveMeter, MonitorView, clean_json, registry_view, rollout_view
from modelyard.serve.state import ServerState

__all__ = ["DATA_PATH", "PAGE_PATH", "DashboardState", "install"]

log = logging.getLogger(__name__)

PAGE_PATH = "/dashboard"
DATA_PATH = "/v2/dashboard/data"
STATIC_PREFIX = "/dashboard/static/"
ASSETS = {  # file in serve/static -> content type
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> bytes:
    return resources.files("modelyard.serve").joinpath("static", name).read_bytes()


class DashboardState:
    """What the dashboard keeps between polls: the live meter's snapshots, the monitor's cached view and the
    registry details that never change once a version is registered."""

    def __init__(self, server: ServerState) -> None:
        self.server = server
        self.live = LiveMeter(server.metrics)
        self.details: dict[tuple[str, int], dict[str, Any]] = {}
        self.monitor: MonitorView | None = None
        self.started_unix_s = time.time()

    def _monitor(self) -> MonitorView | None:
        writer = self.server.monitor
        if writer is None:
            return None
        if self.monitor is None or self.monitor.log_path != writer.path:
            self.monitor = MonitorView(
                self.server.registry, writer.path, window=self.server.settings.monitor_window
            )
        return self.monitor

    def _slow_parts(self, served: dict[str, int]) -> dict[str, Any]:
        """Registry, monitor and rollouts (blocking; each failure is shown in its own part)."""
        out: dict[str, Any] = {}
        registry = self.server.registry
        try:
            out["registry"] = registry_view(registry, served, self.details)
        except Exception as exc:
            log.warning("dashboard: reading the registry failed: %s", first_line(exc), exc_info=True)
            out["registry"] = {"error": first_line(exc), "models": [], "audit_log": [], "audit_total": 0}
        monitor = self._monitor()
        if monitor is None:
            out["monitor"] = {"enabled": False, "note": "the prediction log is off on this server"}
        else:
            try:
                out["monitor"] = monitor.view((name, str(v)) for name, v in served.items())
            except Exception as exc:
                log.warning("dashboard: the monitor view failed: %s", first_line(exc), exc_info=True)
                out["monitor"] = {"enabled": True, "error": first_line(exc), "versions": []}
        try:
            out["rollouts"] = rollout_view(registry)
        except Exception as exc:
            log.warning("dashboard: reading the rollouts failed: %s", first_line(exc), exc_info=True)
            out["rollouts"] = {"error": first_line(exc), "rollouts": []}
        return out

    async def data(self) -> dict[str, Any]:
        """The whole document the page renders."""
        s = self.server
        served = {name: slot.current.model.version for name, slot in s.slots.items()}
        live = self.live.view()
        slow = await asyncio.to_thread(self._slow_parts, served)
        doc = {
            "schema": "modelyard.dashboard/1",
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "server": {
                "name": "modelyard",
                "version": __version__,
                "ready": s.ready and not s.shutting_down,
                "status": "ready" if s.ready and not s.shutting_down else s.not_ready_reason(),
                "auth": s.settings.auth,
                "uptime_s": time.time() - self.started_unix_s,
                "served": [
                    {
                        "model": name,
                        "version": slot.current.model.version,
                        "ref": slot.ref,
                        "follows_alias": slot.follows_alias,
                        "batching": slot.current.batching.why,
                    }
                    for name, slot in sorted(s.slots.items())
                ],
            },
            "live": live,
            "watch": [] if s.watcher is None else s.watcher.status(),
            **slow,
        }
        return clean_json(doc)  # type: ignore[no-any-return]


def install(app: FastAPI, state: ServerState) -> None:
    """Add the dashboard page, its assets and its data endpoint to ``app`` (behind the server's API key)."""
    board = DashboardState(state)
    page = _asset("dashboard.html")
    assets = {name: (_asset(name), kind) for name, kind in ASSETS.items()}
    router = APIRouter()

    @router.get(PAGE_PATH, include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(content=page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get(STATIC_PREFIX + "{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return JSONResponse(
                {"error": f"no such dashboard file {name!r}; the dashboard is at {PAGE_PATH}"},
                status_code=404,
            )
        body, kind = found
        return Response(content=body, media_type=kind, headers=_HEADERS)

    @router.get(
        DATA_PATH,
        tags=["dashboard"],
        summary="Everything the dashboard shows, as JSON",
        responses={401: {"description": "missing or wrong API key"}},
    )
    async def dashboard_data() -> dict[str, Any]:
        """Models and versions (lineage, key evidence, verdict, aliases), the audit log of alias moves, live
        request rate, latency and errors, the monitor's drift and accuracy per served version, the rollouts."""
        return await board.data()

    app.include_router(router)
    app.state.dashboard = board
