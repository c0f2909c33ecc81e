"""The prediction log: bounded summaries, the writer (batches, a full queue drops and counts, close drains,
retention), the read API, the request id (header, OIP id, log), monitoring off, and a SIGKILL mid-traffic
that loses at most the last second of records."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.errors import ConfigError
from modelyard.monitor.db import connect, prune
from modelyard.monitor.log import PredictionLog, PredictionRecord, input_rows, row_confidences
from modelyard.monitor.pending import PendingPrediction
from modelyard.monitor.summary import MAX_ROWS, MAX_SUMMARY_BYTES, summarize_inputs, summarize_outputs
from modelyard.monitor.writer import PredictionLogWriter
from modelyard.registry import Registry
from modelyard.serve.settings import ServeSettings
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

SLACK_S = 1.0  # what a SIGKILL may lose: the writer's flush interval (0.25 s) plus a margin


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    return build_blobs_registry(tmp_path_factory.mktemp("monitor-home"), onnx_classifier)


def record(rid: str, *, at: float, version: str = "1", model: str = "m") -> PredictionRecord:
    out = summarize_outputs({"probabilities": np.array([[0.2, 0.8]], np.float32)})
    inputs = summarize_inputs({"x": np.array([[1.0, 2.0]], np.float32)}, None, rows=1)
    return PredictionRecord(
        rid, at, model, version, "infer", 1, inputs, out.json, out.confidence, None, None, 2.0
    )


def wait_for(check: Any, what: str) -> None:
    """Poll ``check()`` until it holds (deadline-bound)."""
    deadline = time.monotonic() + DEADLINE_S
    done = threading.Event()
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached before the deadline"
        done.wait(0.01)


def metric(text: str, line_start: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(line_start))
    return float(line.rsplit(" ", 1)[1])


# ---------------------------------------------------------------------------------------------------
# summaries


def test_summaries_are_bounded_and_hold_no_raw_image_or_text() -> None:
    x = np.array([[0.1, 2.5, -3.0], [4.0, 5.0, 6.0]], np.float32)
    doc = json.loads(summarize_inputs({"features": x}, None, rows=2))
    assert doc["inputs"]["features"]["kind"] == "values"
    assert doc["inputs"]["features"]["values"] == [[0.1, 2.5, -3.0], [4.0, 5.0, 6.0]]

    images = np.random.default_rng(0).random((32, 3, 64, 64), dtype=np.float32)
    text = summarize_inputs({"pixels": images}, None, rows=32)
    assert len(text.encode()) <= MAX_SUMMARY_BYTES
    entry = json.loads(text)["inputs"]["pixels"]
    assert entry["kind"] == "stats" and entry["shape"] == [32, 3, 64, 64] and len(entry["mean"]) == MAX_ROWS
    assert entry["mean"][0] == pytest.approx(float(images[0].mean()), rel=1e-5)

    wide = np.ones((16, 60), np.float32) / 3  # tabular, but too many values for the byte bound: fewer rows
    kept = json.loads(summarize_inputs({"f": wide}, None, rows=16))["inputs"]["f"]
    assert kept["kind"] == "values" and 1 <= len(kept["values"]) < MAX_ROWS

    secret = "my card number is 1234 5678"
    texts = summarize_inputs(None, [secret, "hi"], rows=2)
    assert "1234" not in texts and json.loads(texts)["inputs"]["text"] == {
        "kind": "text",
        "chars": [len(secret), 2],
        "words": [6, 1],
    }

    probs = np.full((3, 1000), 1 / 1000, np.float32)
    probs[:, 7] = 0.5
    out = summarize_outputs({"probabilities": probs, "ood_score": np.array([1.0, 3.0, 2.0])})
    doc = json.loads(out.json)
    assert len(out.json.encode()) <= MAX_SUMMARY_BYTES
    assert doc["predicted"] == [7, 7, 7] and len(doc["top"][0]) == 5
    assert out.confidence == pytest.approx(0.5) and out.ood_score == 3.0 and out.ood_flag is None


# ---------------------------------------------------------------------------------------------------
# the writer and the reader


def test_writer_commits_batches_and_the_reader_returns_typed_rows(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    written: list[int] = []
    writer = PredictionLogWriter(path, flush_s=0.05, on_written=written.append)
    writer.start()
    for i in range(30):
        assert writer.submit(record(f"r{i}", at=1000.0 + i, version="1" if i < 20 else "2"))
    assert writer.flush(DEADLINE_S)
    assert writer.submit(record("r0", at=2000.0))  # the id is taken: dropped by the writer, counted
    for i in range(30, 80):  # close writes everything still queued
        writer.submit(record(f"r{i}", at=1000.0 + i, version="2"))
    writer.close()
    assert sum(written) == 80 and writer.dropped["duplicate_id"] == 1
    assert not writer.submit(record("late", at=0.0)) and writer.dropped["closed"] == 1

    log = PredictionLog(path)
    rows = log.window("m")
    assert [p.request_id for p in rows] == [f"r{i}" for i in range(80)]
    first = rows[0]
    assert (first.model, first.version, first.endpoint, first.rows, first.latency_ms) == (
        "m",
        "1",
        "infer",
        1,
        2.0,
    )
    assert first.confidence == pytest.approx(0.8) and first.predicted == [1] and first.at_unix_s == 1000.0
    assert first.inputs["inputs"]["x"]["values"] == [[1.0, 2.0]]
    assert [p.request_id for p in log.window("m", version=1)] == [f"r{i}" for i in range(20)]
    assert [p.request_id for p in log.window("m", version="2", last_n=2)] == ["r78", "r79"]
    assert [p.request_id for p in log.window("m", since=1005.0, until=1008.0)] == ["r5", "r6", "r7"]
    assert log.window("other") == [] and log.get("r3") == rows[3] and log.get("nope") is None
    window = log.window("m", last_n=4)
    assert np.array_equal(input_rows(window, "x"), np.tile([1.0, 2.0], (4, 1)))
    assert row_confidences(window) == pytest.approx([0.8] * 4) and input_rows(window, "y").shape == (0, 0)
    assert PredictionLog(tmp_path / "missing.db").window("m") == []
    assert not (tmp_path / "missing.db").exists()


def pending(rid: str, x: np.ndarray) -> PendingPrediction:
    probs = np.array([[0.2, 0.8]], dtype=np.float32)
    return PendingPrediction(
        rid, 1000.0, "m", "1", "infer", len(x), {"x": x}, None, {"probabilities": probs}, 2.0
    )


def test_pending_predictions_are_summarized_by_the_writer_and_bounded_in_bytes(tmp_path: Path) -> None:
    small = np.array([[1.0, 2.0]], dtype=np.float32)
    big = np.zeros((4, 4096), dtype=np.float32)  # 64 KiB held while queued
    writer = PredictionLogWriter(tmp_path / "monitor.db", flush_s=0.05, max_queue_bytes=100_000)
    assert writer.submit(pending("a", big))  # 64 KiB: fits
    assert not writer.submit(pending("b", big))  # 128 KiB would not: dropped, counted, never waited for
    assert writer.dropped["queue_full"] == 1
    writer.start()
    assert writer.flush(DEADLINE_S)
    assert writer.submit(pending("c", big)) and writer.submit(pending("d", small))  # the bytes were released
    writer.close()
    rows = PredictionLog(tmp_path / "monitor.db").window("m")
    assert [p.request_id for p in rows] == ["a", "c", "d"]
    built = pending("d", small).build()  # the same summaries the request path used to build
    assert built.inputs_json == summarize_inputs({"x": small}, None, rows=1)
    assert built.outputs_json == summarize_outputs({"probabilities": np.array([[0.2, 0.8]], np.float32)}).json
    assert rows[2].inputs["inputs"]["x"]["values"] == [[1.0, 2.0]] and rows[2].confidence == pytest.approx(
        0.8
    )


def test_retention_deletes_the_oldest_predictions_and_never_feedback(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    conn = connect(path)
    now = 10 * 86400.0
    for i in range(10):
        conn.execute(
            "INSERT INTO predictions (request_id, at_unix_s, model, version, endpoint, rows, inputs, outputs) "
            "VALUES (?, ?, 'm', '1', 'infer', 1, '{}', '{}')",
            (f"r{i}", now - (10 - i) * 86400.0),  # r0 is 10 days old, r9 one day
        )
    for rid in ("r0", "r8", "r8"):
        conn.execute(
            "INSERT INTO feedback (request_id, label, at_unix_s, source) VALUES (?, '1', ?, 'test')",
            (rid, now),
        )
    assert prune(conn, max_rows=None, max_days=5.5, now_unix_s=now, chunk=2) == 5  # older than 5.5 days
    assert prune(conn, max_rows=3, max_days=None, now_unix_s=now) == 2
    assert prune(conn, max_rows=3, max_days=5.5, now_unix_s=now) == 0
    log = PredictionLog(path)
    assert [p.request_id for p in log.window("m")] == ["r7", "r8", "r9"]
    assert log.count() == (3, 3)  # feedback is never deleted, the kept request's labels stay joined
    assert [lab.label for lab in log.labelled("m")] == [1]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM feedback")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE feedback SET label = '2'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE predictions SET model = 'x'")
    conn.close()


def test_the_writer_applies_retention_as_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    writer = PredictionLogWriter(path, flush_s=0.01, max_rows=3, retention_every_s=0.01)
    writer.start()
    try:
        for i in range(10):
            writer.submit(record(f"r{i}", at=time.time()))
        assert writer.flush(DEADLINE_S)
        log = PredictionLog(path)
        wait_for(lambda: log.count()[0] <= 3, "retention")
        assert [p.request_id for p in log.window("m")] == ["r7", "r8", "r9"]
    finally:
        writer.close()


def test_monitor_settings_from_env_and_validation(tmp_path: Path) -> None:
    s = ServeSettings.from_env({"MODELYARD_HOME": str(tmp_path)})
    assert s.monitor and s.monitor_sample == 1.0 and s.monitor_path == tmp_path / "monitor.db"
    assert s.monitor_flush_s <= 0.5 and s.monitor_max_queue == 10_000
    off = ServeSettings.from_env(
        {"MODELYARD_MONITOR": "off", "MODELYARD_MONITOR_SAMPLE": "0.25", "MODELYARD_MONITOR_DB": "/x/m.db"}
    )
    assert (off.monitor, off.monitor_sample, off.monitor_path) == (False, 0.25, Path("/x/m.db"))
    assert not ServeSettings.from_env({"MODELYARD_MONITOR": "on"}, monitor=False).monitor
    with pytest.raises(ConfigError, match="MODELYARD_MONITOR must be one of"):
        ServeSettings.from_env({"MODELYARD_MONITOR": "maybe"})
    with pytest.raises(ConfigError, match=r"monitor_sample must be a share.*monitor_flush_s"):
        ServeSettings.from_env({}, monitor_sample=1.5, monitor_flush_s=2.0)


# ---------------------------------------------------------------------------------------------------
# the server in-process


@pytest.mark.anyio
async def test_the_request_id_is_in_the_header_the_oip_id_and_the_log(
    registry: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "log.db"
    x = make_blobs(n=3, seed=4)[0]
    async with app_client(settings_for(registry, monitor_db=db), registry) as (app, c):
        url = f"/v2/models/{MODEL}/infer"
        plain = await c.post(url, json=infer_body(x[:1]))
        generated = plain.headers["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0 and plain.json()["id"] == generated
        given = await c.post(url, json=infer_body(x[1:2], id="client-42"))
        assert given.headers["x-request-id"] == "client-42" and given.json()["id"] == "client-42"
        header = await c.post(url, json=infer_body(x[2:3]), headers={"x-request-id": "from.header:1"})
        assert header.headers["x-request-id"] == "from.header:1" and header.json()["id"] == "from.header:1"
        unsafe = await c.post(url, json=infer_body(x[:1], id="has spaces\nand lines"))
        assert unsafe.json()["id"] == "has spaces\nand lines"  # echoed, as the OIP asks
        unsafe_id = unsafe.headers["x-request-id"]
        assert len(unsafe_id) == 32 and unsafe_id not in (generated,)
        simple = await c.post("/predict", json={"inputs": x[:2].tolist()})
        assert simple.json()["id"] == simple.headers["x-request-id"]
        named = await c.post("/predict", json={"inputs": x[:1].tolist(), "id": "p-1"})
        assert named.json()["id"] == named.headers["x-request-id"] == "p-1"
        bad = await c.post(url, json={"inputs": []})
        assert bad.status_code == 400 and len(bad.headers["x-request-id"]) == 32  # errors carry one too
        assert app.state.serve.monitor.flush(DEADLINE_S)
    log = PredictionLog(db)
    rows = {p.request_id: p for p in log.window(MODEL)}
    assert set(rows) == {generated, "client-42", "from.header:1", unsafe_id, simple.json()["id"], "p-1"}
    one = rows["client-42"]
    assert (one.version, one.endpoint, one.rows) == ("1", "infer", 1)
    probs = np.array(next(o for o in given.json()["outputs"] if o["name"] == "probabilities")["data"])
    assert one.confidence == pytest.approx(float(probs.max()), rel=1e-6)
    assert one.ood_flag is not None and one.ood_score is not None and one.latency_ms is not None
    assert one.inputs["inputs"]["features"]["values"][0] == pytest.approx(x[1].tolist(), rel=1e-6)
    assert rows[simple.json()["id"]].endpoint == "predict" and rows[simple.json()["id"]].rows == 2
    assert [v.classes for v in log.versions()] == [("0", "1", "2")]


@pytest.mark.anyio
async def test_a_full_queue_drops_records_and_never_fails_a_request(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    original = PredictionLogWriter._write

    def blocked_write(
        self: PredictionLogWriter, conn: sqlite3.Connection, batch: list[PredictionRecord]
    ) -> None:
        entered.set()
        release.wait(DEADLINE_S)
        original(self, conn, batch)

    monkeypatch.setattr(PredictionLogWriter, "_write", blocked_write)
    db = tmp_path / "log.db"
    settings = settings_for(registry, monitor_db=db, monitor_max_queue=1, monitor_flush_s=0.01)
    body = infer_body(np.zeros((1, 6), np.float32))
    try:
        async with app_client(settings, registry) as (app, c):
            url = f"/v2/models/{MODEL}/infer"
            first = await c.post(url, json=body)  # taken by the writer, which then blocks
            await asyncio.to_thread(entered.wait, DEADLINE_S)
            rest = [
                await c.post(url, json=body) for _ in range(5)
            ]  # one waits in the queue, four are dropped
            assert [r.status_code for r in [first, *rest]] == [200] * 6
            text = (await c.get("/metrics")).text
            assert metric(text, 'modelyard_monitor_dropped_records_total{reason="queue_full"}') == 4.0
            release.set()
            assert await asyncio.to_thread(app.state.serve.monitor.flush, DEADLINE_S)
            text = (await c.get("/metrics")).text
            assert metric(text, "modelyard_monitor_logged_records_total") == 2.0
    finally:
        release.set()
    logged = [p.request_id for p in PredictionLog(db).window(MODEL)]
    assert logged == [first.headers["x-request-id"], rest[0].headers["x-request-id"]]


@pytest.mark.anyio
async def test_a_failure_to_log_is_counted_and_the_request_still_answers(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelyard.monitor.pending as pending_module

    def broken(outputs: Any, **_: Any) -> Any:
        raise RuntimeError("summary failed")

    # the writer's thread summarizes a queued request; its failure is counted there, after the answer was sent
    monkeypatch.setattr(pending_module, "summarize_outputs", broken)
    async with app_client(settings_for(registry, monitor_db=tmp_path / "log.db"), registry) as (app, c):
        r = await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32)))
        assert r.status_code == 200
        assert await asyncio.to_thread(app.state.serve.monitor.flush, DEADLINE_S)
        text = (await c.get("/metrics")).text
    assert metric(text, 'modelyard_monitor_dropped_records_total{reason="error"}') == 1.0


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["off", "sample 0"])
async def test_monitoring_off_or_unsampled_writes_nothing(
    registry: Registry, tmp_path: Path, how: str
) -> None:
    db = tmp_path / "log.db"
    overrides: dict[str, Any] = {"monitor": False} if how == "off" else {"monitor_sample": 0.0}
    async with app_client(settings_for(registry, monitor_db=db, **overrides), registry) as (app, c):
        for _ in range(3):
            r = await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32)))
            assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32
        assert (await c.post("/predict", json={"inputs": [[0.0] * 6]})).status_code == 200
        monitor = app.state.serve.monitor
        if how == "off":
            assert monitor is None
        else:
            assert monitor.flush(DEADLINE_S) and monitor.written == 0
    assert not db.exists() if how == "off" else PredictionLog(db).count() == (0, 0)


# ---------------------------------------------------------------------------------------------------
# the server as a real process


def test_sigkill_mid_traffic_loses_at_most_the_last_second(registry: Registry, tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    x = make_blobs(n=1, seed=5)[0]
    acked: list[tuple[str, float]] = []  # (request id, when its answer arrived)
    stop = threading.Event()

    def traffic(url: str) -> None:
        with httpx.Client(timeout=DEADLINE_S) as client:
            while not stop.is_set():
                try:
                    r = client.post(url, json=infer_body(x))
                except httpx.TransportError:
                    return  # the server is gone
                assert r.status_code == 200, r.text
                acked.append((r.headers["x-request-id"], time.monotonic()))

    with server_process(registry.home, tmp_path, f"{MODEL}:1", "--monitor-db", str(db)) as server:
        sender = threading.Thread(target=traffic, args=(f"{server.url}/v2/models/{MODEL}/infer",))
        sender.start()
        try:
            # traffic long enough that some answers are older than the slack when the kill comes
            wait_for(lambda: len(acked) >= 20 and acked[-1][1] - acked[0][1] >= 2 * SLACK_S, "traffic")
            server.proc.kill()
            killed_at = time.monotonic()
            server.proc.wait(DEADLINE_S)
        finally:
            stop.set()
            sender.join(DEADLINE_S)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        logged = {row[0] for row in conn.execute("SELECT request_id FROM predictions")}
    finally:
        conn.close()
    old = [rid for rid, at in acked if at < killed_at - SLACK_S]
    assert len(old) >= 10
    missing = [rid for rid in old if rid not in logged]
    assert not missing, (
        f"{len(missing)} of {len(old)} requests answered over {SLACK_S} s before the kill are lost"
    )


def test_retention_also_prunes_the_rollout_rows(tmp_path: Path) -> None:
    from modelyard.rollout.observations import RolloutRow, replay, write_rows

    bare = connect(tmp_path / "bare.db")  # a log where no rollout ever ran: nothing is created
    assert prune(bare, max_rows=1, max_days=1.0) == 0
    assert (
        bare.execute("SELECT name FROM sqlite_master WHERE name = 'rollout_predictions'").fetchone() is None
    )
    bare.close()

    path = tmp_path / "monitor.db"
    now = 10 * 86400.0
    conn = connect(path)
    for i in range(4):  # p0 is 8 days old, p3 two days
        conn.execute(
            "INSERT INTO predictions (request_id, at_unix_s, model, version, endpoint, rows, inputs, outputs) "
            "VALUES (?, ?, 'm', '1', 'infer', 1, '{}', '{}')",
            (f"p{i}", now - (8 - 2 * i) * 86400.0),
        )
    rows = [  # r0 is 10 days old, r9 one day; the latency tells them apart
        RolloutRow(
            rollout_id=1,
            request_id=f"r{i}",
            at_unix_s=now - (10 - i) * 86400.0,
            model="m",
            version="2",
            champion_version="1",
            mode="shadow",
            returned=False,
            error=False,
            latency_ms=float(i),
            flip=False,
            challenger_predicted=[0],
            champion_predicted=[0],
        )
        for i in range(10)
    ]
    assert write_rows(path, rows[5:] + rows[:5]) == 10  # the oldest are written last: seq order is not age
    assert prune(conn, max_rows=None, max_days=5.5, now_unix_s=now, chunk=2) == 2 + 5
    assert [o.latency_ms for o in replay(path, 1)] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert (
        prune(conn, max_rows=3, max_days=None, now_unix_s=now) == 2
    )  # counted per table: 2 predictions kept
    assert [o.latency_ms for o in replay(path, 1)] == [7.0, 8.0, 9.0]  # the newest three
    assert prune(conn, max_rows=3, max_days=5.5, now_unix_s=now) == 0
    assert [p.request_id for p in PredictionLog(path).window("m")] == ["p2", "p3"]
    conn.close()
