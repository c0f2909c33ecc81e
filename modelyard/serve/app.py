"""The server application: ``create_app(settings)`` builds a FastAPI app with no module globals.

Everything the app holds lives on ``app.state.serve``, a :class:`~modelyard.serve.state.ServerState`, whose
start-up and shut-down run in the app's lifespan (loading in the background, alias reloads, draining: see
:mod:`modelyard.serve.state`). The HTTP surface (endpoints, middleware, error handlers) is in
:mod:`modelyard.serve.routes`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelyard._version import __version__
from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.registry.mlflow_backend import open_registry
from modelyard.serve import dashboard
from modelyard.serve.routes import install
from modelyard.serve.settings import ServeSettings
from modelyard.serve.state import ServerState, check_trust, resolve_refs

__all__ = ["check_trust", "create_app", "resolve_refs"]  # the CLI checks the references before it starts


def create_app(settings: ServeSettings, *, registry: Registry | None = None) -> FastAPI:
    """A new server app for ``settings`` (models load in the background once the app starts)."""
    if registry is None:  # MODELYARD_REGISTRY=mlflow+<uri>: a rollout's alias moves are mirrored to MLflow
        registry = open_registry(Settings.from_env(home=settings.home))
    state = ServerState(settings=settings, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title="modelyard server",
        version=__version__,
        description="Open Inference Protocol v2 (REST, with the binary tensor extension) and a simple JSON /predict.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.serve = state
    install(app, state)
    dashboard.install(app, state)  # /dashboard and /v2/dashboard/data
    return app
