"""One call from a model to a monitored endpoint: optimize, gate and register it (:func:`ship`), then serve its
champion with the prediction log on (:func:`serve_shipped`).

The first ship of a model name makes its champion the served version. A later ship of the same name registers
the new run without moving the champion alias: the new champion starts as a shadow rollout against the serving
one (:func:`modelyard.rollout.start_rollout`), whose controller promotes or rolls it back on live traffic. A new
champion with the serving version's very artifact starts nothing. When a modelyard server already serves the
model at the address, ship does not start another: that server follows the alias and the rollout.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from modelyard.errors import ConfigError
from modelyard.evaluate.suite import Progress, no_progress
from modelyard.pipeline import RunResult, run_pipeline

if TYPE_CHECKING:
    from modelyard.candidate import Candidate
    from modelyard.config import Policy, Settings
    from modelyard.data.dataset import Dataset
    from modelyard.evaluate.run import EvalOptions
    from modelyard.registry import Registry
    from modelyard.rollout import RolloutView
    from modelyard.serve.settings import ServeSettings
    from modelyard.serve.state import ServerState

__all__ = ["ShipResult", "ShipUrls", "serve_shipped", "ship"]

Server = Literal["start", "running"]
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ShipUrls:
    """Where the shipped model answers: its Open Inference Protocol infer URL, the Prometheus metrics, the
    dashboard and the readiness probe."""

    base: str
    infer: str
    metrics: str
    dashboard: str
    ready: str

    @classmethod
    def at(cls, host: str, port: int, model: str) -> ShipUrls:
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{port}"
        return cls(
            base=base,
            infer=f"{base}/v2/models/{model}/infer",
            metrics=f"{base}/metrics",
            dashboard=f"{base}/dashboard",
            ready=f"{base}/v2/health/ready",
        )

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("base", "infer", "metrics", "dashboard", "ready")}


@dataclass(frozen=True)
class ShipResult:
    """What :func:`ship` did. ``new_version``: the run's champion's version (None when no candidate passed).
    ``serving_version``: what the champion alias points at now. ``rollout``: the shadow rollout started (a
    later ship). ``unchanged``: the new champion is the serving version's artifact, so nothing was rolled out.
    ``server``: "start" (call :func:`serve_shipped`), "running" (a modelyard server already serves the model
    at ``urls``) or None (no champion, or not asked to serve)."""

    run: RunResult
    model: str
    new_version: int | None
    serving_version: int | None
    rollout: RolloutView | None
    unchanged: bool
    serve: ServeSettings | None
    server: Server | None
    urls: ShipUrls | None

    @property
    def action(self) -> Literal["champion", "rollout", "unchanged", "no champion"]:
        if self.new_version is None:
            return "no champion"
        if self.rollout is not None:
            return "rollout"
        return "unchanged" if self.unchanged else "champion"


def ship(
    baseline: Candidate,
    dataset: Dataset,
    *,
    model_name: str,
    model_source: str,
    recipes: list[str],
    policy: Policy,
    settings: Settings,
    serve: ServeSettings | None,
    options: EvalOptions | None = None,
    ood_data: dict[str, Any] | None = None,
    ood_source: str | None = None,
    progress: Progress = no_progress,
) -> ShipResult:
    """Run the pipeline on ``baseline`` and register the run; a first champion becomes the served version, a
    later one starts a shadow rollout against the serving version. ``serve``: where the champion will be
    served (its home and models are set here: ``model_name@champion``, following the alias), or None not to
    serve. Refused before any work: a rollout still running on the model, an address taken by something that
    is not a modelyard server of this model."""
    from modelyard.registry.mlflow_backend import open_registry

    registry = open_registry(settings)
    serving = _champion(registry, model_name)
    if serving is not None:
        _refuse_running_rollout(registry, model_name)
    serve_settings = server = None
    if serve is not None:
        serve_settings = replace(
            serve, home=settings.home, models=(f"{model_name}@champion",), reload_on_alias=True
        )
        server = _probe(serve_settings, model_name)
    result = run_pipeline(
        baseline,
        dataset,
        model_name=model_name,
        model_source=model_source,
        recipes=recipes,
        policy=policy,
        settings=settings,
        options=options,
        register=True,
        ood_data=ood_data,
        ood_source=ood_source,
        progress=progress,
        move_champion=serving is None,
    )
    if result.champion is None:
        return ShipResult(
            result,
            model_name,
            None,
            serving,
            rollout=None,
            unchanged=False,
            serve=None,
            server=None,
            urls=None,
        )
    new = result.versions[result.champion]
    rollout, unchanged = None, False
    if serving is not None:
        unchanged = _same_artifact(registry, model_name, serving, new)
        if not unchanged:
            progress(f"starting a shadow rollout of v{new} against v{serving}", 0.0)
            rollout = _start_shadow(registry, result, new, serving, policy)
    urls = (
        None if serve_settings is None else ShipUrls.at(serve_settings.host, serve_settings.port, model_name)
    )
    return ShipResult(
        result,
        model_name,
        new_version=new,
        serving_version=_champion(registry, model_name),
        rollout=rollout,
        unchanged=unchanged,
        serve=serve_settings,
        server=server,
        urls=urls,
    )


def serve_shipped(result: ShipResult, *, on_ready: Callable[[ServerState], None] | None = None) -> None:
    """Serve the shipped champion (with its rollout, if one runs) until SIGINT or SIGTERM; ``on_ready`` is
    called once the port listens and the model has loaded (or failed to: ``state.load_error``)."""
    from modelyard.serve.process import open_app, run_app

    if result.server != "start" or result.serve is None:
        raise ConfigError(
            f"nothing to serve for {result.model} ({result.action}, server {result.server or 'off'})"
        )
    app, _ = open_app(result.serve)
    run_app(app, result.serve, on_ready=on_ready)


def _champion(registry: Registry, model: str) -> int | None:
    for m in registry.list_models():
        if m["name"] == model:
            champion = m["aliases"].get("champion")
            return None if champion is None else int(champion)
    return None


def _refuse_running_rollout(registry: Registry, model: str) -> None:
    from modelyard.rollout import rollout_status

    for view in rollout_status(registry, model):
        if view.state == "running":
            raise ConfigError(
                f"a {view.mode} rollout of {model} v{view.challenger} against v{view.champion} is still running; "
                f"follow it with 'modelyard rollout status {model}' or end it with 'modelyard rollout stop "
                f"{model}', then ship again"
            )


def _same_artifact(registry: Registry, model: str, a: int, b: int) -> bool:
    return bool(
        registry.get_version(model, a)["artifact_sha256"] == registry.get_version(model, b)["artifact_sha256"]
    )


def _start_shadow(
    registry: Registry, result: RunResult, new: int, serving: int, policy: Policy
) -> RolloutView:
    from modelyard.rollout import start_rollout

    try:  # decided by the margins of the shipped policy's [rollout] table
        return start_rollout(registry, result.model_name, new, mode="shadow", policy=policy.rollout)
    except ConfigError as exc:
        raise ConfigError(
            f"run {result.run_id} is registered ({result.model_name} v{new}; the champion stays v{serving}) but "
            f"its shadow rollout did not start: {exc}"
        ) from None


def _probe(settings: ServeSettings, model: str) -> Server:
    """ "start" when nothing listens at the address, "running" when a modelyard server there serves ``model``;
    raises ConfigError when something else holds it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    try:
        with socket.create_connection((host, settings.port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError:
        return "start"
    urls = ShipUrls.at(host, settings.port, model)
    meta = _get_json(urls.base + "/v2", settings.api_key)
    if not isinstance(meta, dict) or meta.get("name") != "modelyard":
        raise ConfigError(
            f"{settings.host}:{settings.port} is in use by another program; stop it or choose another --port"
        )
    if _get_json(f"{urls.base}/v2/models/{model}/ready", settings.api_key) is None:
        raise ConfigError(
            f"the modelyard server at {urls.base} does not serve {model} (or needs another API key); stop it "
            "or choose another --port"
        )
    return "running"


def _get_json(url: str, api_key: str | None) -> Any:
    """The JSON of a 200 answer to GET ``url``, else None."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=PROBE_TIMEOUT_S
        ) as answer:
            return json.loads(answer.read()) if answer.status == 200 else None
    except (OSError, ValueError, urllib.error.URLError):
        return None
