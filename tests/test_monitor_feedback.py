"""Label feedback by request id: POST /v2/models/{name}/feedback and `modelyard monitor feedback FILE`; all
labels stored or none, unknown ids named, labels checked against the classes, the latest label used, and
nothing already logged ever lost."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.monitor.feedback import FeedbackItem, UnknownRequests, store_feedback
from modelyard.monitor.log import PredictionLog, PredictionRecord
from modelyard.monitor.summary import summarize_inputs, summarize_outputs
from modelyard.monitor.writer import PredictionLogWriter
from modelyard.registry import Registry
from tests.helpers.cli import assert_one_line_error
from tests.helpers.models import make_blobs
from tests.helpers.serving import (
    DEADLINE_S,
    MODEL,
    app_client,
    build_blobs_registry,
    infer_body,
    settings_for,
)

CLASSES = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    return build_blobs_registry(tmp_path_factory.mktemp("feedback-home"), onnx_classifier)


def assert_error(r: Any, status: int, match: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert match in error and "\n" not in error and "Traceback" not in r.text, error


# ---------------------------------------------------------------------------------------------------
# over HTTP


@pytest.mark.anyio
async def test_feedback_by_id_is_stored_and_the_latest_label_counts(
    registry: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "log.db"
    x = make_blobs(n=3, seed=6)[0]
    async with app_client(settings_for(registry, monitor_db=db), registry) as (_, c):
        url = f"/v2/models/{MODEL}/infer"
        one = (await c.post(url, json=infer_body(x[:1]))).headers["x-request-id"]
        two = (await c.post(url, json=infer_body(x[1:3], id="two-rows"))).headers["x-request-id"]
        # posted at once, before the writer's next commit: the label waits for its request to be written
        r = await c.post(f"/v2/models/{MODEL}/feedback", json={"id": one, "label": 2})
        assert r.status_code == 200 and r.json() == {"stored": 1, "requests": 1}
        batch = {"feedback": [{"id": two, "label": ["0", 1]}, {"id": one, "label": "1"}]}
        r = await c.post(f"/v2/models/{MODEL}/feedback", json=batch)
        assert r.status_code == 200 and r.json() == {"stored": 2, "requests": 2}
    log = PredictionLog(db)
    assert [f.label for f in log.feedback(one)] == [2, 1]  # both kept, oldest first
    assert all(f.source == "api" for f in log.feedback(one))
    labelled = {lab.prediction.request_id: lab for lab in log.labelled(MODEL)}
    assert set(labelled) == {one, "two-rows"} and two == "two-rows"
    assert labelled[one].label == 1  # the latest wins
    assert labelled[one].correct == (labelled[one].prediction.predicted == [1])
    assert labelled["two-rows"].label == [0, 1] and labelled["two-rows"].correct is None
    assert log.count(MODEL) == (2, 3)


@pytest.mark.anyio
async def test_an_unknown_id_is_404_and_nothing_is_stored(registry: Registry, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    async with app_client(settings_for(registry, monitor_db=db), registry) as (app, c):
        known = (
            await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32)))
        ).headers["x-request-id"]
        assert app.state.serve.monitor.flush(DEADLINE_S)
        batch = {"feedback": [{"id": known, "label": 0}, {"id": "no-such-request", "label": 1}]}
        assert_error(await c.post(f"/v2/models/{MODEL}/feedback", json=batch), 404, "'no-such-request'")
        assert_error(
            await c.post(f"/v2/models/{MODEL}/feedback", json={"id": "nope", "label": 0}), 404, "'nope'"
        )
        assert_error(
            await c.post("/v2/models/other/feedback", json={"id": known, "label": 0}), 404, "unknown model"
        )
    assert PredictionLog(db).count() == (1, 0)


MALFORMED: dict[str, tuple[Any, str]] = {
    "not json": (b"{nope", "not valid JSON"),
    "a list": ([{"id": "x", "label": 1}], "must be a JSON object"),
    "no label": ({"id": "x"}, "missing label"),
    "extra key": ({"id": "x", "label": 1, "weight": 2}, "unexpected weight"),
    "id not a string": ({"id": 7, "label": 1}, "'id' must be a non-empty string"),
    "empty batch": ({"feedback": []}, "non-empty list"),
    "batch and more": ({"feedback": [{"id": "x", "label": 1}], "id": "y"}, "nothing else"),
    "class out of range": ({"id": "{rid}", "label": 3}, "not a class of blobs v1"),
    "unknown class name": ({"id": "{rid}", "label": "zebra"}, "give a class index 0..2"),
    "a bool": ({"id": "{rid}", "label": True}, "not a class"),
    "list of the wrong length": ({"id": "{rid}", "label": [0, 1]}, "one label per row of the request (1)"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_feedback_is_a_one_line_400(registry: Registry, tmp_path: Path, case: str) -> None:
    body, match = MALFORMED[case]
    db = tmp_path / "log.db"
    async with app_client(settings_for(registry, monitor_db=db), registry) as (app, c):
        rid = (
            await c.post(f"/v2/models/{MODEL}/infer", json=infer_body(np.zeros((1, 6), np.float32)))
        ).headers["x-request-id"]
        assert app.state.serve.monitor.flush(DEADLINE_S)
        content = body if isinstance(body, bytes) else json.dumps(body).replace("{rid}", rid).encode()
        r = await c.post(f"/v2/models/{MODEL}/feedback", content=content)
        assert_error(r, 400, match)
    assert PredictionLog(db).count() == (1, 0)


@pytest.mark.anyio
async def test_feedback_needs_the_api_key_and_a_log(registry: Registry, tmp_path: Path) -> None:
    body = {"id": "x", "label": 0}
    settings = settings_for(registry, monitor_db=tmp_path / "log.db", api_key="s3cret")
    async with app_client(settings, registry) as (_, c):
        assert_error(await c.post(f"/v2/models/{MODEL}/feedback", json=body), 401, "API key")
        ok = {"Authorization": "Bearer s3cret"}
        assert_error(await c.post(f"/v2/models/{MODEL}/feedback", json=body, headers=ok), 404, "'x'")
    async with app_client(settings_for(registry, monitor=False), registry) as (_, c):
        assert_error(await c.post(f"/v2/models/{MODEL}/feedback", json=body), 409, "prediction log is off")


# ---------------------------------------------------------------------------------------------------
# from a file, with the CLI


def logged(db: Path, ids: list[str], *, model: str = "pets", rows: int = 1) -> None:
    """A prediction log holding requests ``ids`` of ``model`` v1, a classifier of CLASSES."""
    writer = PredictionLogWriter(db)
    writer.start()
    writer.describe(model, "1", "classification", CLASSES)
    out = summarize_outputs({"probabilities": np.tile([[0.2, 0.7, 0.1]], (rows, 1))})
    inputs = summarize_inputs({"x": np.zeros((rows, 2), np.float32)}, None, rows=rows)
    for rid in ids:
        writer.submit(
            PredictionRecord(
                rid, time.time(), model, "1", "infer", rows, inputs, out.json, out.confidence, None, None, 1.0
            )
        )
    writer.close()
    assert writer.written == len(ids)


def test_cli_stores_labels_from_csv_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    db = home / "monitor.db"
    logged(db, ["r1", "r2", "r3"])
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("id,label\nr1,dog\nr2,2\n\n")
    assert main(["monitor", "feedback", str(csv_file), "--home", str(home)]) == 0
    assert capsys.readouterr().out.strip() == f"stored 2 labels for 2 requests in {db}"
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(
        '{"id": "r3", "label": 0}\n\n{"id": "r1", "label": "cat"}\n{"id": "r1", "label": "bird"}\n'
    )
    assert main(["monitor", "feedback", str(jsonl), "--db", str(db), "--model", "pets"]) == 0
    assert capsys.readouterr().out.strip() == f"stored 3 labels for 2 requests in {db}"
    log = PredictionLog(db)
    assert {lab.prediction.request_id: lab.label for lab in log.labelled("pets")} == {
        "r1": 2,
        "r2": 2,
        "r3": 0,
    }
    assert [(f.label, f.source) for f in log.feedback("r1")] == [
        (1, "file:labels.csv"),
        (0, "file:labels.jsonl"),
        (2, "file:labels.jsonl"),
    ]
    assert [lab.correct for lab in log.labelled("pets")] == [False, False, False]
    assert log.count() == (3, 5)


BAD_FILES: dict[str, tuple[str, str, str]] = {
    "no header": ("labels.csv", "r1,dog\n", "must be a header with columns 'id' and 'label'"),
    "a missing label": (
        "labels.csv",
        "id,label\nr1,dog\nr2,\n",
        "line 3 of labels.csv: both 'id' and 'label'",
    ),
    "a ragged row": ("labels.csv", "id,label\nr1,dog,x\n", "line 2 of labels.csv has 3 fields"),
    "bad json": (
        "labels.jsonl",
        '{"id": "r1", "label": 1}\n{"id": "r2", \n',
        "line 2 of labels.jsonl is not valid JSON",
    ),
    "no id": ("labels.jsonl", '{"label": 1}\n', "missing id"),
    "an unknown id": ("labels.csv", "id,label\nr1,dog\nghost,cat\n", "unknown request id(s): 'ghost'"),
    "a label that is not a class": (
        "labels.csv",
        "id,label\nr1,dog\nr2,zebra\n",
        "label 'zebra' is not a class of pets v1",
    ),
    "an unknown suffix": ("labels.txt", "id,label\nr1,dog\n", "use .csv (header id,label) or .jsonl"),
    "empty": ("labels.csv", "", "is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_refuses_a_bad_file_in_one_line_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    name, text, match = BAD_FILES[case]
    db = tmp_path / "monitor.db"
    logged(db, ["r1", "r2"])
    before = [p.request_id for p in PredictionLog(db).window("pets")]
    path = tmp_path / name
    path.write_text(text)
    code = main(["monitor", "feedback", str(path), "--db", str(db)])
    assert_one_line_error(code, capsys.readouterr().err, match)
    assert PredictionLog(db).count() == (2, 0)  # nothing stored, nothing logged lost
    assert [p.request_id for p in PredictionLog(db).window("pets")] == before


def test_ids_of_another_model_or_a_missing_log_are_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "monitor.db"
    logged(db, ["r1"])
    path = tmp_path / "labels.csv"
    path.write_text("id,label\nr1,dog\n")
    code = main(["monitor", "feedback", str(path), "--db", str(db), "--model", "other"])
    assert_one_line_error(code, capsys.readouterr().err, "unknown request id(s) of model 'other': 'r1'")
    with pytest.raises(UnknownRequests, match="no prediction log at") as info:
        store_feedback(tmp_path / "none.db", [FeedbackItem("r1", 0)], source="test")
    assert info.value.ids == ["r1"] and not (tmp_path / "none.db").exists()
    assert PredictionLog(db).count() == (1, 0)
