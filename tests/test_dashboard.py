"""The dashboard: the data endpoint's JSON (in-process: shape, live numbers, auth, the static page with no
outside reference), the live meter's arithmetic, and the real server's /dashboard in headless Chromium showing
the live request count, the audit log and a rollout in progress.

The browser test drives Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it) through
Playwright with the system executable; it is skipped, saying so, only when that file is absent. Its screenshot
is a test artifact: ``dashboard.png`` in the test's tmp folder and in ``$MODELYARD_TEST_ARTIFACTS`` (default
``test-artifacts/`` at the repository root, ignored by git).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.config import RolloutPolicy
from modelyard.registry import Registry
from modelyard.rollout import RolloutView, rollout_status, start_rollout
from modelyard.serve.dashboard_data import LiveMeter, clean_json, quantile_ms
from modelyard.serve.metrics import ServerMetrics
from tests.helpers.models import make_blobs
from tests.helpers.serving import (
    DEADLINE_S,
    MODEL,
    app_client,
    build_blobs_registry,
    infer_body,
    server_process,
    settings_for,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("MODELYARD_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts"
)
PROMOTE_REASON = "dashboard test: v2 passed every gate on the holdout"
BACK_REASON = "dashboard test: back to v1 so that v2 can be shadowed first"
KEY = "dashboard-test-key"
BEARER, BASIC = 'Bearer realm="modelyard"', 'Basic realm="modelyard"'


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    """The "blobs" model (v1 the user's, v2 its re-export), with v2 promoted and v1 rolled back to: two alias
    moves with their reasons in the audit log; champion v1."""
    reg = build_blobs_registry(tmp_path_factory.mktemp("dashboard-home"), onnx_classifier)
    reg.promote(MODEL, 2, reason=PROMOTE_REASON)
    reg.rollback(MODEL, reason=BACK_REASON)
    return reg


def wait_for(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check()`` until it returns something truthy (deadline-bound); returns it."""
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} not reached before the deadline"
        pause.wait(0.05)
    return found


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the dashboard data: it is not JSON")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------
# the live meter's arithmetic


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    buckets = {0.001: 10.0, 0.002: 30.0, 0.004: 40.0, float("inf"): 40.0}  # seconds -> cumulative count
    assert quantile_ms(buckets, 0.5) == pytest.approx(1.5)  # rank 20: halfway through (1 ms, 2 ms]
    assert quantile_ms(buckets, 0.25) == pytest.approx(1.0)  # rank 10: the end of the first bucket
    assert quantile_ms(buckets, 0.99) == pytest.approx(2.0 + 2.0 * (39.6 - 30) / 10)
    assert quantile_ms({0.001: 0.0, float("inf"): 5.0}, 0.5) == pytest.approx(1.0)  # in +Inf: largest bound
    assert quantile_ms({0.001: 0.0, float("inf"): 0.0}, 0.5) is None


def test_the_live_meter_counts_inference_requests_errors_and_the_recent_rate() -> None:
    metrics = ServerMetrics()
    meter = LiveMeter(metrics, window_s=60.0, min_step_s=0.0)
    first = meter.view()
    assert (
        first["totals"]["requests"] == 0 and first["totals"]["recent"]["rate_per_s"] == 0
    )  # since it was made
    for _ in range(6):
        metrics.observe_request("m", "1", "/v2/models/{name}/infer", 200, 0.003)
    metrics.observe_request("m", "1", "/predict", 400, 0.0005)
    metrics.observe_request("", "", "/v2/models/{name}/infer", 404, 0.0002)
    metrics.observe_request("m", "1", "/metrics", 200, 0.001)  # not an inference endpoint: not counted
    doc = meter.view()
    totals = doc["totals"]
    assert (totals["requests"], totals["errors_4xx"], totals["errors_5xx"]) == (8, 2, 0)
    assert totals["recent"]["requests"] == 8 and totals["recent"]["error_rate"] == pytest.approx(2 / 8)
    assert totals["recent"]["rate_per_s"] == pytest.approx(8 / doc["window_s"])
    assert totals["latency_mean_ms"] == pytest.approx((6 * 3.0 + 0.5 + 0.2) / 8)
    rows = {(r["model"], r["version"]): r for r in doc["by_version"]}
    assert rows[("m", "1")]["requests"] == 7 and rows[(None, None)]["errors_4xx"] == 1
    assert 2.5 <= rows[("m", "1")]["latency_p50_ms"] <= 5.0  # inside the (2.5 ms, 5 ms] bucket
    assert [point["requests"] for point in doc["series"]] == [0, 8]  # one point per pair of snapshots
    assert clean_json({"a": (np.float32(1.5), float("nan"), np.int64(3))}) == {"a": [1.5, None, 3]}


# ---------------------------------------------------------------------------------------------------
# the data endpoint and the page, in-process


@pytest.mark.anyio
async def test_the_data_endpoint_answers_the_typed_data_behind_the_api_key(
    registry: Registry, tmp_path: Path
) -> None:
    settings = settings_for(registry, api_key=KEY, monitor_db=tmp_path / "monitor.db", monitor_window=20)
    x, _ = make_blobs(n=12)
    async with app_client(settings, registry) as (app, client):
        for path in ("/dashboard", "/dashboard/static/dashboard.js", "/v2/dashboard/data"):
            refused = await client.get(path)
            assert refused.status_code == 401 and "API key" in refused.json()["error"], path
            # a browser is asked for Basic credentials; API clients see the bearer challenge first
            assert refused.headers.get_list("www-authenticate") == [BEARER, BASIC], path
        for wrong in ("Bearer nope", basic("user", "nope"), "Basic !!!", basic("user", "")):
            refused = await client.get("/v2/dashboard/data", headers={"Authorization": wrong})
            assert refused.status_code == 401, wrong

        auth = {"Authorization": f"Bearer {KEY}"}
        for i in range(5):
            ok = await client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x[i : i + 2]), headers=auth)
            assert ok.status_code == 200
        bad = await client.post(f"/v2/models/{MODEL}/infer", content=b"{not json", headers=auth)
        assert bad.status_code == 400
        assert app.state.serve.monitor.flush(DEADLINE_S)
        answer = await client.get("/v2/dashboard/data", headers=auth)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        doc = strict_json(answer.text)

        assert doc["schema"] == "modelyard.dashboard/1" and doc["server"]["ready"] and doc["server"]["auth"]
        assert [(s["model"], s["version"]) for s in doc["server"]["served"]] == [(MODEL, 1)]
        live = doc["live"]
        assert (live["totals"]["requests"], live["totals"]["errors_4xx"], live["totals"]["errors_5xx"]) == (
            6,
            1,
            0,
        )
        [row] = live["by_version"]
        assert (row["model"], row["version"], row["requests"]) == (MODEL, "1", 6)
        assert row["latency_mean_ms"] > 0 and row["latency_p99_ms"] >= row["latency_p50_ms"] > 0

        [model] = doc["registry"]["models"]
        assert model["name"] == MODEL and model["champion"] == 1 and model["served_version"] == 1
        versions = {v["version"]: v for v in model["versions"]}
        assert versions[1]["served"] and not versions[2]["served"] and versions[1]["aliases"] == ["champion"]
        assert versions[2]["parent_version"] == 1 and versions[1]["parent_version"] is None
        stored_passes = [p["pass"] for p in registry.get_version(MODEL, 2)["passes"]]
        assert [p["pass"] for p in versions[2]["passes"]] == stored_passes and stored_passes
        for v in versions.values():
            stored = registry.get_version(MODEL, v["version"])["evidence"]
            assert v["verdict"] == ("pass" if stored.verdict.passed else "fail")
            accuracy = next(e for e in v["evidence"] if e["name"] == "quality.accuracy")
            assert accuracy["value"] == pytest.approx(stored.measurements["quality.accuracy"].value)
            assert accuracy["unit"] == "fraction" and len(accuracy["interval"]) == 2
            assert {g["gate"] for g in v["gates"]} == {g.gate for g in stored.verdict.gates}
        audit = doc["registry"]["audit_log"]
        assert audit == registry.audit_log()[::-1]  # newest first, as stored
        assert (audit[0]["action"], audit[0]["reason"]) == ("rollback", BACK_REASON)
        assert (audit[1]["action"], audit[1]["to_version"], audit[1]["reason"]) == (
            "promote",
            2,
            PROMOTE_REASON,
        )

        monitor = doc["monitor"]
        assert monitor["enabled"] and monitor["window"] == 20
        [watched] = monitor["versions"]
        assert (watched["model"], watched["version"], watched["error"]) == (MODEL, "1", None)
        assert watched["latest"]["requests"] == 5 and watched["history"] == []  # fewer than one window of 20
        assert {s["name"] for s in watched["latest"]["signals"]} >= {"accuracy.estimated"}
        assert doc["rollouts"]["rollouts"] == [v.to_dict() for v in rollout_status(registry)]

        for path in ("/dashboard", "/v2/dashboard/data"):  # Basic credentials whose password is the key
            assert (await client.get(path, headers={"Authorization": basic("me", KEY)})).status_code == 200
        elsewhere = await client.get("/metrics", headers={"Authorization": basic("me", KEY)})
        assert elsewhere.status_code == 401  # the rest of the API takes the bearer token only
        assert elsewhere.headers.get_list("www-authenticate") == [BEARER]
        page = await client.get("/dashboard", headers=auth)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        texts = [page.text]
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            asset = await client.get(f"/dashboard/static/{name}", headers=auth)
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
            texts.append(asset.text)
        for text in texts:  # nothing from another origin: no CDN, no outside font, no absolute URL fetched
            assert not re.search(
                r"(src|href)\s*=\s*[\"']?(https?:)?//|@import|url\(\s*[\"']?(https?:)?//", text
            )
            assert not re.search(r"fetch\(\s*[\"']https?:", text)
        missing = await client.get("/dashboard/static/../app.py", headers=auth)
        assert missing.status_code == 404 and "error" in missing.json()
        schema = (await client.get("/openapi.json", headers=auth)).json()
        assert "/v2/dashboard/data" in schema["paths"] and "/dashboard" not in schema["paths"]


# ---------------------------------------------------------------------------------------------------
# the real server in headless Chromium


def _save_screenshot(shot: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / shot.name)


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium; .ci/run does) to run it",
)
def test_the_dashboard_in_chromium_shows_live_numbers_the_audit_log_and_a_rollout(
    registry: Registry, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    x, y = make_blobs(n=60)  # in distribution: the traffic the model was trained for
    with server_process(
        registry.home, tmp_path, "--monitor-window", "20", "--monitor-every-s", "0"
    ) as server:
        sent = 0
        with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as client:
            labels = []
            for i in range(40):
                answer = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x[i : i + 1]))
                assert answer.status_code == 200
                labels.append({"id": answer.headers["x-request-id"], "label": int(y[i])})
                sent += 1
            stored = client.post(f"/v2/models/{MODEL}/feedback", json={"feedback": labels})
            assert stored.status_code == 200 and stored.json()["stored"] == 40  # realised accuracy
            for _ in range(2):  # refused requests count as requests and as errors
                assert client.post(f"/v2/models/{MODEL}/infer", content=b"[").status_code == 400
                sent += 1
            # an identical challenger with no labels can only end on latency before min_requests (500): on a
            # loaded test machine its copies can be slow, so that margin is lifted for this page test
            started = start_rollout(
                registry, MODEL, 2, mode="shadow", policy=RolloutPolicy(max_slow_rate=0.99)
            )
            assert started.state == "running"

            def compared() -> RolloutView | None:
                """The rollout once the server has compared requests (one more request sent per call)."""
                nonlocal sent
                assert (
                    client.post(
                        f"/v2/models/{MODEL}/infer", json=infer_body(x[sent % 60 : sent % 60 + 1])
                    ).status_code
                    == 200
                )
                sent += 1
                [view] = [v for v in rollout_status(registry, MODEL) if v.started_at == started.started_at]
                return view if view.requests > 0 and view.statistics else None

            view = wait_for(compared, "the server comparing the challenger on requests")
            assert view.state == "running", f"the rollout ended before the page could show it: {view.reason}"

        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh profile
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000},
            )
            try:
                page = context.new_page()
                outside: list[str] = []
                page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
                page.goto(f"{server.url}/dashboard")
                timeout_ms = DEADLINE_S * 1000
                expect(page.locator("#live-requests")).to_have_text(str(sent), timeout=timeout_ms)
                expect(page.locator("#live-errors")).to_have_text("2", timeout=timeout_ms)
                expect(page.locator("#server-status")).to_have_text("ready")

                audit = page.locator("#audit-log tbody tr")
                expect(audit.filter(has_text=PROMOTE_REASON)).to_have_count(1)
                expect(audit.filter(has_text=PROMOTE_REASON)).to_contain_text("promote")
                expect(audit.filter(has_text=BACK_REASON)).to_contain_text("rollback")
                expect(audit.filter(has_text="rollout started")).to_have_count(1)

                panel = page.locator(f'#rollout-body .rollout.running[data-model="{MODEL}"]')
                expect(panel).to_contain_text("v2 (challenger) against v1 (champion)", timeout=timeout_ms)
                expect(panel).to_contain_text("running")
                expect(panel).to_contain_text("shadow")
                names = [stat["name"] for stat in view.statistics]  # one row per signal, with its boundary
                for name in names:
                    expect(panel.locator(f'tbody tr[data-signal="{name}"]')).to_have_count(
                        1, timeout=timeout_ms
                    )
                expect(panel.locator("svg.boundary")).to_have_count(len(names))
                bounded = [stat for stat in view.statistics if "limit" in stat or "margin" in stat]
                assert bounded, f"no signal has a decision boundary: {view.statistics}"
                for stat in bounded:
                    boundary = "limit" if "limit" in stat else "margin"
                    expect(panel.locator(f'tr[data-signal="{stat["name"]}"] svg.boundary')).to_contain_text(
                        boundary
                    )

                watch = page.locator(f'#watch-body .watch[data-model="{MODEL}"]')  # the champion watch
                expect(watch).to_contain_text(f"{MODEL} v1 watching", timeout=timeout_ms)
                for name in ("errors", "accuracy", "estimated_accuracy", "ood_rate"):
                    expect(watch.locator(f'tr[data-signal="{name}"]')).to_have_count(1)

                versions = page.locator("#models-body tr[data-version]")
                expect(versions).to_have_count(2)
                expect(page.locator('#models-body tr[data-version="2"]')).to_contain_text("from v1")
                monitor = page.locator(f'#monitor-body [data-version="{MODEL}:1"]')
                expect(monitor).to_contain_text(
                    "Accuracy per window: estimated vs realised", timeout=timeout_ms
                )
                for series in ("estimated", "realised (labels)"):
                    points = monitor.locator(f'g[data-series="{series}"] circle')
                    expect(points.first).to_be_visible(timeout=timeout_ms)
                assert outside == [], f"the page fetched from another origin: {outside}"

                # a few polls, so that the live charts have points (the page's CSP forbids eval: no wait_for_function)
                expect(page.locator("body")).to_have_attribute("data-polls", re.compile(r"^([3-9]|\d\d+)$"))
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                _save_screenshot(shot)
            finally:
                context.close()
