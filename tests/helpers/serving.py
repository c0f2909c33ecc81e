"""The "blobs" registry that the in-process, real-process and schemathesis server tests serve, the server
settings for it, and the server as a real process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.config import Policy, Settings
from modelyard.pipeline import EvalOptions, run_pipeline
from modelyard.registry import Registry
from modelyard.serve.settings import ServeSettings

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

QUICK = EvalOptions(batch_sizes=(1, 8), latency_calls=10, min_time_s=0.05, measure_rss=False, n_resamples=200)
# the cheapest whole pipeline run: one batch size, a few timing calls, no data audit and no backdoor scan (a
# policy that gates on the scan must waive it)
FAST = EvalOptions(
    batch_sizes=(1,),
    latency_calls=3,
    min_time_s=1e-3,
    measure_rss=False,
    n_resamples=200,
    data_audit=False,
    backdoor_scan=False,
)
MODEL = "blobs"
DEADLINE_S = 60.0


def build_blobs_registry(home: Path, onnx_classifier: tuple[Path, Path]) -> Registry:
    """A registry with model "blobs": v1 the user's ONNX classifier, v2 its re-exported copy, both with serving
    rules (temperature, an OOD rule fitted on a far-away set, the input contract); champion v1."""
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    model, data = onnx_classifier
    ds = load_dataset(data)
    base = load_baseline(model, ds)
    far = 40.0 + np.random.default_rng(7).normal(size=(60, 6))
    run_pipeline(
        base,
        ds,
        model_name=MODEL,
        model_source="test",
        recipes=["onnx"],
        policy=Policy(),
        settings=Settings(home=home),
        options=QUICK,
        ood_data={"far": far.astype(np.float32)},
    )
    registry = Registry(home)
    aliases = registry.list_models()[0]["aliases"]
    if aliases.get("champion") != 1:
        registry.promote(MODEL, 1, reason="test: serve version 1 first")
    return registry


def settings_for(registry: Registry, **overrides: Any) -> ServeSettings:
    values: dict[str, Any] = {
        "home": registry.home,
        "models": (f"{MODEL}:1",),
        "threads": 1,
        "warmup_calls": 1,
    }
    values.update(overrides)
    return ServeSettings.from_env({}, **values)


# ---------------------------------------------------------------------------------------------------
# the server as a real process (`modelyard serve`), polled ready with a deadline


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(home: Path, log_dir: Path, *args: str) -> Iterator[ServerProcess]:
    """Start ``modelyard serve ARGS`` on a free port of 127.0.0.1 with ``home``, wait (deadline-bound) until
    /v2/health/ready answers 200, and kill it at the end if it still runs."""
    import httpx

    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MODELYARD_API_KEY", None)
    log = log_dir / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli", "serve", *args, "--port", str(port), "--home", str(home)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                if httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready before the deadline:\n{server.output()}"
            with contextlib.suppress(
                subprocess.TimeoutExpired
            ):  # wait a little, or return at once if it died
                proc.wait(0.05)
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{server.output()}"
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE_S)


# ---------------------------------------------------------------------------------------------------
# the server in-process


@contextlib.asynccontextmanager
async def app_client(
    settings: ServeSettings, registry: Registry
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running and every model loaded, and a client talking to it in-process."""
    import asyncio

    import httpx

    from modelyard.serve.app import create_app

    app = create_app(settings, registry=registry)
    async with app.router.lifespan_context(app):
        assert await asyncio.to_thread(app.state.serve.loaded.wait, DEADLINE_S)
        assert app.state.serve.ready, app.state.serve.load_error
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    """An OIP JSON inference body for the "blobs" model's ``features`` input."""
    return {
        "inputs": [
            {"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        **extra,
    }
