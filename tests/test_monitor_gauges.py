"""The monitor's Prometheus gauges: the "blobs" server in-process, fed clean, drifted and clean traffic; after
each batch of traffic a refresh (called directly, not waited for on the timer) sets the latest window's value,
threshold and alarm of each live check in /metrics; a failing evaluation is counted, never raised."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.errors import ConfigError
from modelyard.monitor.gauges import gauge_values
from modelyard.registry import Registry
from modelyard.serve.settings import ServeSettings
from tests.helpers.serving import MODEL, app_client, build_blobs_registry, infer_body, settings_for

pytestmark = pytest.mark.anyio

WINDOW = 20  # requests per window, 2 rows each: 40 rows, within a quarter of the reference's 192 fit rows
ROWS = 2


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    return build_blobs_registry(tmp_path_factory.mktemp("gauges-home"), onnx_classifier)


def blobs_like(n: int, seed: int) -> np.ndarray:
    """Fresh items of the blobs training distribution (same centres as ``make_blobs()``, new noise)."""
    centres = np.random.default_rng(0).normal(scale=3.0, size=(3, 6))
    rng = np.random.default_rng(seed)
    return (centres[np.arange(n) % 3] + rng.normal(size=(n, 6))).astype(np.float32)


async def _send(client: Any, x: np.ndarray) -> None:
    for i in range(0, len(x), ROWS):
        r = await client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x[i : i + ROWS]))
        assert r.status_code == 200, r.text


def _gauges(text: str) -> dict[str, dict[str, float]]:
    """{metric name: {check: value}} of the monitor gauges of blobs:1 in a /metrics body."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("modelyard_monitor_") and "check" in s.labels:
                assert s.labels["model"] == MODEL and s.labels["version"] == "1"
                out.setdefault(s.name, {})[s.labels["check"]] = s.value
    return out


async def _refresh(app: Any, client: Any) -> dict[str, dict[str, float]]:
    state = app.state.serve
    assert await asyncio.to_thread(state.monitor.flush, 10.0)
    (status,) = await state.refresh_monitor_gauges()
    assert status.requests == WINDOW
    r = await client.get("/metrics")
    assert r.status_code == 200
    got = _gauges(r.text)
    # the gauges are exactly the status's live checks
    assert got["modelyard_monitor_signal_value"] == {
        g.check: pytest.approx(g.value) for g in gauge_values(status)
    }
    assert got["modelyard_monitor_alarm"] == {s.name: float(bool(s.alarm)) for s in status.signals}
    return got


async def test_gauges_follow_the_latest_window(registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(
        registry, monitor_db=tmp_path / "monitor.db", monitor_window=WINDOW, monitor_every_s=0
    )
    async with app_client(settings, registry) as (app, c):
        r = await c.get("/metrics")
        assert "modelyard_monitor_alarm{" not in r.text  # nothing evaluated yet

        await _send(c, blobs_like(WINDOW * ROWS, seed=11))
        clean = await _refresh(app, c)
        assert clean["modelyard_monitor_alarm"]["drift.inputs"] == 0.0
        assert "drift.ood_rate" in clean["modelyard_monitor_alarm"]
        threshold = clean["modelyard_monitor_signal_threshold"]["drift.inputs"]
        assert threshold > 0
        assert clean["modelyard_monitor_signal_value"]["drift.inputs"] < threshold

        await _send(c, blobs_like(WINDOW * ROWS, seed=12) + 4.0)  # every feature moved by 4 (~1 sd of a blob)
        drifted = await _refresh(app, c)
        assert drifted["modelyard_monitor_alarm"]["drift.inputs"] == 1.0
        assert drifted["modelyard_monitor_signal_value"]["drift.inputs"] > threshold

        await _send(c, blobs_like(WINDOW * ROWS, seed=13))
        again = await _refresh(app, c)
        assert again["modelyard_monitor_alarm"]["drift.inputs"] == 0.0
        assert not any(again["modelyard_monitor_alarm"].values()), again["modelyard_monitor_alarm"]


async def test_a_failing_evaluation_is_counted_and_never_raised(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelyard.monitor.gauges as gauges

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gauges, "watch", broken)
    settings = settings_for(registry, monitor_db=tmp_path / "monitor.db", monitor_every_s=0)
    async with app_client(settings, registry) as (app, c):
        await _send(c, blobs_like(ROWS, seed=1))
        assert await asyncio.to_thread(app.state.serve.monitor.flush, 10.0)
        assert await app.state.serve.refresh_monitor_gauges() == []
        r = await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(blobs_like(1, seed=2)))
        assert r.status_code == 200
        text = (await c.get("/metrics")).text
    assert f'modelyard_monitor_evaluation_errors_total{{model="{MODEL}",version="1"}} 1.0' in text


def test_monitor_every_s_and_window_are_validated() -> None:
    assert ServeSettings().monitor_every_s == 30.0 and ServeSettings().monitor_window == 200
    with pytest.raises(ConfigError, match=r"monitor_every_s must be .*got -1.*monitor_window must be"):
        ServeSettings.from_env({}, monitor_every_s=-1, monitor_window=0)
