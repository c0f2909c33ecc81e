"""Rollouts in a served model: the HTTP routes (in-process), then the real server under a bounded load loop on
127.0.0.1: a canary of a ruined challenger is rolled back on the labels that arrive (no request fails, the
champion keeps serving, the audit log says why with the statistics), an identical challenger in shadow is
promoted and swapped in, and a rollout survives a SIGKILL of the server."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.registry import Registry, VersionEntry
from modelyard.rollout import rollout_status
from modelyard.serve.rollout_manager import BASELINE_MIN_SAMPLES
from tests.helpers.models import make_blobs
from tests.helpers.serving import (
    MODEL,
    app_client,
    build_blobs_registry,
    infer_body,
    server_process,
    settings_for,
)

DEADLINE_S = 60.0
# Small margins' worth of evidence so that a rollout decides in tens of requests (the defaults need ~1,200
# requests to call a 0.5% error-rate margin non-inferior); latency is lenient: the test machine is shared.
FAST = {"min_requests": 30, "max_error_rate_increase": 0.1, "max_flip_rate": 0.1, "max_slow_rate": 0.8}
# the paired label-free signals likewise (at the defaults an identical challenger's confidence and OOD
# differences, in [-1, 1], need ~1,200 requests to be called non-inferior)
FAST |= {"max_mean_kl": 0.5, "max_confidence_drop_points": 20.0, "max_ood_rate_increase": 0.2}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def register_ruined(registry: Registry, folder: Path) -> int:
    """A copy of version 1 whose last layer's rows are rotated: it answers fast, with status 200, and wrongly
    (class k where version 1 says k - 1). Returns its version number."""
    import onnx
    from onnx import numpy_helper

    src = registry.materialize(MODEL, 1, folder / "v1")
    model = onnx.load(str(src / "classifier.onnx"))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.shape and arr.shape[0] == 3:  # the output layer's weight (3, 32) and bias (3,)
            init.CopyFrom(numpy_helper.from_array(np.roll(arr, 1, axis=0).copy(), init.name))
    out = folder / "ruined"
    out.mkdir()
    onnx.save(model, str(out / "classifier.onnx"))
    shutil.copy(src / "monitor_reference.json", out / "monitor_reference.json")
    manifest = {**registry.get_version(MODEL, 1)["manifest"], "name": "ruined"}
    numbers = registry.register_run(
        MODEL,
        [
            VersionEntry(
                name="ruined",
                files={p.name: p for p in out.iterdir()},
                manifest=manifest,
            )
        ],
        run_id="ruined-run",
        champion=None,
        reason="test: a challenger that is fast and wrong",
    )
    return numbers["ruined"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Path:
    """A home with "blobs": v1 champion, v2 its re-exported copy (identical answers), v3 ruined."""
    home = tmp_path_factory.mktemp("rollout-home") / "home"
    registry = build_blobs_registry(home, onnx_classifier)
    assert register_ruined(registry, tmp_path_factory.mktemp("ruined")) == 3
    return home


@pytest.fixture
def registry(built: Path, tmp_path: Path) -> Registry:
    home = tmp_path / "home"
    shutil.copytree(built, home)
    return Registry(home)


def _view(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v2/models/{MODEL}/rollout", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def load_loop(
    url: str, *, until: Callable[[], bool], label: bool, max_requests: int
) -> list[tuple[int, str, str]]:
    """Send one-row requests (and, with ``label``, their true labels by request id) until ``until()`` holds
    (checked every 10 requests) or ``max_requests`` were sent; returns (status, version, request id) each."""
    x, y = make_blobs(n=400, seed=0)  # the champion's own distribution (seed 0)
    seen: list[tuple[int, str, str]] = []
    with httpx.Client(timeout=DEADLINE_S) as client:
        for i in range(max_requests):
            k = i % len(x)
            r = client.post(f"{url}/v2/models/{MODEL}/infer", json=infer_body(x[k : k + 1]))
            rid = r.headers.get("x-request-id", "")
            seen.append(
                (r.status_code, r.json().get("model_version", "") if r.status_code == 200 else r.text, rid)
            )
            if label and r.status_code == 200:
                fb = client.post(f"{url}/v2/models/{MODEL}/feedback", json={"id": rid, "label": int(y[k])})
                assert fb.status_code == 200, fb.text
            if i % 10 == 9 and until():
                break
    return seen


def wait_attached(url: str, version: int, mode: str) -> None:
    """Poll /metrics (deadline-bound) until the server compares ``version`` with the champion."""
    line = f'modelyard_rollout_running{{mode="{mode}",model="{MODEL}",version="{version}"}} 1.0'
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while line not in httpx.get(f"{url}/metrics", timeout=10).text:
        assert time.monotonic() < deadline, "the rollout was not picked up before the deadline"
        pause.wait(0.05)


def _ended(url: str) -> Callable[[], bool]:
    return lambda: _view(url)["state"] != "running"


# ---------------------------------------------------------------------------------------------------
# the HTTP routes, in-process


@pytest.mark.anyio
async def test_routes_start_status_stop_and_refuse_bad_input(registry: Registry) -> None:
    async with app_client(settings_for(registry, models=()), registry) as (_, client):
        assert (await client.get(f"/v2/models/{MODEL}/rollout")).status_code == 404
        before = (registry.audit_log(), [v.to_dict() for v in rollout_status(registry)])
        bad = [
            ({"version": 9, "mode": "shadow"}, 404, "has no version 9"),
            ({"version": 1, "mode": "shadow"}, 409, "already the champion"),
            ({"version": 2, "mode": "canary", "percent": 0}, 400, "from 1 to 99"),
            ({"version": 2, "mode": "canary", "percent": 100}, 400, "from 1 to 99"),
            ({"version": 2, "mode": "sideways"}, 400, "shadow or canary"),
            ({"version": 2}, 400, "'version' and 'mode' are required"),
            ({"version": 2, "mode": "shadow", "colour": 1}, 400, "unknown field(s) colour"),
            (
                {"version": 2, "mode": "shadow", "policy": {"max_flip_rate": 3}},
                400,
                "invalid policy: [rollout]",
            ),
        ]
        for body, code, message in bad:
            r = await client.post(f"/v2/models/{MODEL}/rollout", json=body)
            assert r.status_code == code and message in r.json()["error"], (body, r.text)
        r = await client.post("/v2/models/nope/rollout", json={"version": 1, "mode": "shadow"})
        assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
        assert (await client.delete(f"/v2/models/{MODEL}/rollout")).status_code == 404
        assert (registry.audit_log(), [v.to_dict() for v in rollout_status(registry)]) == before

        r = await client.post(
            f"/v2/models/{MODEL}/rollout",
            json={"version": 3, "mode": "canary", "percent": 20, "policy": FAST},
        )
        assert r.status_code == 201, r.text
        assert (r.json()["state"], r.json()["challenger"], r.json()["percent"]) == ("running", 3, 20.0)
        again = await client.post(f"/v2/models/{MODEL}/rollout", json={"version": 2, "mode": "shadow"})
        assert again.status_code == 409 and "already running" in again.json()["error"]
        assert (await client.get(f"/v2/models/{MODEL}/rollout")).json()["state"] == "running"
        listed = (await client.get("/v2/rollouts")).json()["rollouts"]
        assert [v["challenger"] for v in listed] == [3]
        stopped = await client.delete(f"/v2/models/{MODEL}/rollout")
        assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
        assert registry.resolve(f"{MODEL}@champion") == (MODEL, 1)


# ---------------------------------------------------------------------------------------------------
# the real server under load


def test_a_ruined_canary_is_rolled_back_on_labels_and_no_request_fails(
    registry: Registry, tmp_path: Path
) -> None:
    with server_process(registry.home, tmp_path) as server:
        warm = load_loop(server.url, until=lambda: False, label=False, max_requests=BASELINE_MIN_SAMPLES)
        r = httpx.post(
            f"{server.url}/v2/models/{MODEL}/rollout",
            json={"version": 3, "mode": "canary", "percent": 50, "policy": FAST},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        wait_attached(server.url, 3, "canary")
        seen = load_loop(server.url, until=_ended(server.url), label=True, max_requests=600)
        view = _view(server.url)
        after = load_loop(server.url, until=lambda: False, label=False, max_requests=20)
        output = server.output()
    assert view["state"] == "rolled_back", (view, output)
    failed = [s for s in warm + seen + after if s[0] != 200]
    assert not failed, failed[:5]
    assert {v for _, v, _ in seen} == {"1", "3"}  # the canary did answer some requests
    assert {v for _, v, _ in after} == {"1"}  # the champion keeps serving, alone
    assert registry.resolve(f"{MODEL}@champion") == (MODEL, 1)
    row = registry.audit_log(MODEL)[-1]
    assert (row["action"], row["from_version"], row["to_version"]) == ("rollout-rollback", 3, 1)
    assert "worse than the margin on accuracy" in row["reason"]
    stats = {s["name"]: s for s in json.loads(row["reason"].split("statistics: ", 1)[1])}
    assert (
        stats["accuracy"]["decision"] == "worse" and stats["accuracy"]["lower"] > stats["accuracy"]["margin"]
    )
    assert view["statistics"] == json.loads(row["reason"].split("statistics: ", 1)[1])


def test_an_identical_challenger_in_shadow_is_promoted_and_swapped_in(
    registry: Registry, tmp_path: Path
) -> None:
    with server_process(registry.home, tmp_path) as server:
        # the champion's latency baseline comes from its live answers (BASELINE_MIN_SAMPLES of them)
        warm = load_loop(server.url, until=lambda: False, label=False, max_requests=BASELINE_MIN_SAMPLES)
        r = httpx.post(
            f"{server.url}/v2/models/{MODEL}/rollout",
            json={"version": 2, "mode": "shadow", "policy": FAST},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        wait_attached(server.url, 2, "shadow")
        seen = load_loop(server.url, until=_ended(server.url), label=False, max_requests=600)
        view = _view(server.url)
        assert view["state"] == "promoted", view
        deadline = time.monotonic() + DEADLINE_S
        after: list[tuple[int, str, str]] = []
        while not after or after[-1][1] != "2":  # the swap follows the decision at once; poll with a deadline
            after += load_loop(server.url, until=lambda: False, label=False, max_requests=5)
            assert time.monotonic() < deadline, after[-5:]
        after += load_loop(server.url, until=lambda: False, label=False, max_requests=10)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        log = sqlite3.connect(registry.home / "monitor.db")
        shadow_rows = log.execute(
            "SELECT COUNT(*), SUM(flip), MIN(returned), MAX(returned) FROM rollout_predictions WHERE version = '2'"
        ).fetchone()
        paired = log.execute(
            "SELECT COUNT(*) FROM rollout_predictions r JOIN predictions p ON p.request_id = r.request_id "
            "WHERE p.version = '1'"
        ).fetchone()[0]
        log.close()
    assert view["state"] == "promoted", view
    assert view["requests"] >= FAST["min_requests"]
    failed = [s for s in warm + seen + after if s[0] != 200]
    assert not failed, failed[:5]
    assert {v for _, v, _ in warm + seen} <= {"1", "2"} and {v for _, v, _ in after[-10:]} == {"2"}
    versions = [v for _, v, _ in warm + seen + after]
    assert versions == sorted(versions), "a request went back to the old version after the swap"
    assert registry.resolve(f"{MODEL}@champion") == (MODEL, 2)
    row = registry.audit_log(MODEL)[-1]
    assert (row["action"], row["from_version"], row["to_version"]) == ("promote", 1, 2)
    assert "non-inferior on every signal" in row["reason"] and "statistics: " in row["reason"]
    # every shadow answer is logged under the champion's request id, never returned, and agrees with it
    assert shadow_rows[0] >= FAST["min_requests"] and shadow_rows[1] == 0 and shadow_rows[2:] == (0, 0)
    assert paired >= FAST["min_requests"]
    assert (
        'modelyard_rollout_observations_total{error="false",mode="shadow",model="blobs",version="2"}'
        in metrics
    )


def test_a_rollout_resumes_after_the_server_is_killed(registry: Registry, tmp_path: Path) -> None:
    endless = {**FAST, "min_requests": 100_000, "max_requests": 200_000}
    with server_process(registry.home, tmp_path) as server:
        r = httpx.post(
            f"{server.url}/v2/models/{MODEL}/rollout",
            json={"version": 2, "mode": "shadow", "policy": endless},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        started_at = r.json()["started_at"]
        wait_attached(server.url, 2, "shadow")
        load_loop(
            server.url, until=lambda: _view(server.url)["requests"] >= 60, label=False, max_requests=2000
        )
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        metrics = [ln for ln in text.splitlines() if ln.startswith("modelyard_rollout")]
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(DEADLINE_S)
    log = sqlite3.connect(registry.home / "monitor.db")
    logged = log.execute("SELECT COUNT(*) FROM rollout_predictions WHERE rollout_id = 1").fetchone()[0]
    log.close()
    assert logged >= 40, (logged, metrics)  # the progress reached 60; at most the last ticks' rows are lost
    with server_process(registry.home, tmp_path) as server:
        wait_attached(server.url, 2, "shadow")
        # fewer new requests than were logged, so a rollout that restarted from zero could not pass the count;
        # the server writes its progress to the registry once a second, so poll for it (deadline-bound)
        load_loop(
            server.url,
            until=lambda: _view(server.url)["requests"] > logged,
            label=False,
            max_requests=min(logged - 1, 100),
        )
        deadline = time.monotonic() + DEADLINE_S
        pause = threading.Event()
        while (view := _view(server.url))["requests"] <= logged and time.monotonic() < deadline:
            pause.wait(0.1)
        output = server.output()
        stopped = httpx.delete(f"{server.url}/v2/models/{MODEL}/rollout", timeout=10)
    # resumed, not restarted: the count goes on from the logged observations (the new requests alone cannot
    # pass them), against the same rollout
    assert view["state"] == "running" and view["started_at"] == started_at, view
    assert view["requests"] > logged, (view, logged, output)
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert registry.resolve(f"{MODEL}@champion") == (MODEL, 1)
