"""The server in this process: ``open_app`` builds the app and runs the checks that must fail in one line before
a port is bound; ``run_app`` serves it with uvicorn until SIGINT or SIGTERM (both drain, then return), calling
``on_ready`` once the socket listens and the models have loaded (or failed to)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.serve.app import create_app
from modelyard.serve.settings import ServeSettings
from modelyard.serve.state import ServerState, check_trust, resolve_refs

__all__ = ["open_app", "run_app"]

LOADED_POLL_S = 0.05


def open_app(
    settings: ServeSettings, *, registry: Registry | None = None
) -> tuple[FastAPI, list[tuple[str, str, int]]]:
    """The app and the (reference, name, version) it serves; raises on a bad reference, a version nobody said
    to trust, or a prediction log that cannot be written."""
    app = create_app(settings, registry=registry)
    refs = resolve_refs(settings, app.state.serve.registry)
    check_trust(settings, app.state.serve.registry, refs)
    if settings.monitor:
        from modelyard.monitor.db import connect

        connect(settings.monitor_path).close()
    return app, refs


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``on_ready`` when it listens and loading has ended."""

    def __init__(self, config: uvicorn.Config, state: ServerState, on_ready: Callable[[ServerState], None]):
        super().__init__(config)
        self._state, self._on_ready = state, on_ready
        self._announce: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._announce = asyncio.get_running_loop().create_task(self._when_loaded())

    async def _when_loaded(self) -> None:
        while not self._state.loaded.is_set():
            await asyncio.sleep(LOADED_POLL_S)
        if not self._state.shutting_down:
            self._on_ready(self._state)


def run_app(
    app: FastAPI, settings: ServeSettings, *, on_ready: Callable[[ServerState], None] | None = None
) -> None:
    """Serve ``app`` on ``settings.host:port`` until SIGINT or SIGTERM, then drain and return; raises ConfigError
    when the address cannot be bound."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
    )
    server = _Server(config, app.state.serve, on_ready or (lambda state: None))
    # uvicorn re-raises the SIGTERM it handled once the graceful drain is over; a no-op handler makes a drained
    # shutdown exit 0 instead of dying by that signal (a re-raised SIGINT ends as KeyboardInterrupt, caught).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except SystemExit:  # uvicorn exits when the socket cannot be bound (it logged why)
        if server.started:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise ConfigError(
            f"the server did not start on {settings.host}:{settings.port} (see the log line above: the port "
            "may be in use); choose another --port or stop what listens there"
        )
