"""The typed Evidence schema: the shipped JSON Schema matches the models, version 1 files load through the
migration, and the writer of evidence.json refuses invalid evidence with the first invalid field named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelyard.errors import DataError, ModelyardError
from modelyard.evaluate import schema
from modelyard.evaluate.schema import (
    SCHEMA_FILE,
    SCHEMA_VERSION,
    V1,
    RunEvidence,
    json_schema,
    load_evidence,
    migrate_v1,
    validate_evidence,
)
from modelyard.report import EVIDENCE_FILE, write_evidence
from tests.helpers.evidence import as_v1, classifier_evidence, embedder_evidence, unknown_evidence
from tests.helpers.full_evidence import full_evidence

V1_FILE = Path(__file__).parent / "data" / "evidence_v1.json"
"""A real v1 file: the digits demo (recipes ["onnx"]) run by the code of commit ae4072a, with every list in
measurement details and the audit cut to its first 12 items to keep the file small."""


def v1_data() -> dict[str, Any]:
    data = json.loads(V1_FILE.read_text())
    assert isinstance(data, dict)
    return data


def v2_data() -> dict[str, Any]:
    """The v1 file migrated: a complete, valid current-version dict to mutate."""
    return migrate_v1(v1_data())


# ------------------------------------------------------------------------------------------ JSON Schema


def test_shipped_json_schema_is_the_exported_one() -> None:
    shipped = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert shipped == RunEvidence.model_json_schema() == json_schema(), (
        "evidence.schema.json is stale: run `python -m modelyard.evaluate.schema`"
    )
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema.json_schema_text()


def test_json_schema_is_strict_where_the_shape_is_ours() -> None:
    s = json_schema()
    assert s["properties"]["schema"] == {"const": SCHEMA_VERSION, "title": "Schema", "type": "string"}
    assert s["additionalProperties"] is False
    defs = s["$defs"]
    assert all(d["additionalProperties"] is False for d in defs.values())
    assert defs["Measurement"]["properties"]["details"]["additionalProperties"] is True
    assert defs["Measurement"]["properties"]["status"]["enum"] == ["ok", "unknown"]
    assert set(defs["Hardware"]["required"]) >= {"target", "efficiency_device", "price_usd_per_hour"}
    assert "int8_measured" not in defs["Hardware"]["required"]  # present only when int8 was compared


def test_main_rewrites_the_schema_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evidence.schema.json"
    assert schema.main([str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema()
    assert str(out) in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ version 1


def test_a_real_v1_file_loads_through_the_migration() -> None:
    raw = v1_data()
    assert raw["schema"] == V1 and len(V1_FILE.read_bytes()) < 200_000
    ev = load_evidence(V1_FILE)
    assert ev.schema_version == SCHEMA_VERSION
    assert ev.run_id == raw["run_id"] and ev.champion == raw["champion"] == "onnx"
    assert [c.name for c in ev.candidates] == ["baseline", "onnx"]
    onnx = ev.candidates[1]
    acc = onnx.measurements["quality.accuracy"]
    raw_acc = raw["candidates"][1]["measurements"]["quality.accuracy"]
    assert acc.value == pytest.approx(raw_acc["value"]) and acc.unit == "fraction" and acc.status == "ok"
    assert acc.interval == pytest.approx(tuple(raw_acc["interval"]))
    assert onnx.parent == "baseline" and onnx.passes[0].pass_ == "onnx"
    names = {c["name"]: set(c["measurements"]) for c in raw["candidates"]}
    assert names == {c.name: set(c.measurements) for c in ev.candidates}  # every measurement survived
    # what v1 lacks gets a stated default, never a measurement
    assert ev.hardware.target == raw["policy"]["hardware"]["target"] == "cpu"
    assert ev.hardware.efficiency_device == "not recorded (modelyard.evidence/1)"
    assert ev.dataset.split == "not recorded (modelyard.evidence/1)"
    assert ev.hardware.cpu == raw["hardware"]["cpu"] and ev.dataset.n_test == raw["dataset"]["n_test"] == 360


def test_migration_keeps_what_v1_has_and_does_not_change_its_input() -> None:
    raw = v1_data()
    raw["policy"]["hardware"]["target"] = "gpu"
    raw["dataset"]["split"] = "20% stratified, seed 0"
    before = copy.deepcopy(raw)
    out = migrate_v1(raw)
    assert raw == before
    assert out["schema"] == SCHEMA_VERSION
    assert out["hardware"]["target"] == "gpu" and out["dataset"]["split"] == "20% stratified, seed 0"
    assert out["candidates"] == raw["candidates"]
    with pytest.raises(DataError, match=r"migrate_v1 reads schema 'modelyard.evidence/1', got 'x/9'"):
        migrate_v1({"schema": "x/9"})


@pytest.mark.parametrize("build", [classifier_evidence, embedder_evidence, unknown_evidence, full_evidence])
def test_the_report_fixtures_are_valid_current_evidence(build: Any) -> None:
    ev = validate_evidence(build())
    assert ev.schema_version == SCHEMA_VERSION and ev.candidates


def test_older_v1_shapes_load_with_stated_defaults() -> None:
    """v1 files written before audits, serving rules, the model spec and calibration splits were recorded."""
    ev = load_evidence(as_v1(classifier_evidence()))
    assert ev.audit == {"data": {}, "model": {}} and ev.caveats == [] and ev.suite == {}
    assert ev.model.spec is None and ev.dataset.n_cal is None and ev.dataset.slice_columns == []
    assert ev.hardware.machine == "not recorded (modelyard.evidence/1)"
    assert ev.hardware.target == "cpu" and ev.dataset.split == "not recorded (modelyard.evidence/1)"
    assert all(c.serving is None and c.meta == {} for c in ev.candidates)
    assert load_evidence(as_v1(embedder_evidence())).model.license == "Apache-2.0"


def test_incomplete_v1_dicts_are_refused() -> None:
    ev = as_v1(unknown_evidence())
    del ev["created"]
    with pytest.raises(DataError, match=r"schema modelyard.evidence/1, migrated .*: created: Field required"):
        load_evidence(ev)


# ------------------------------------------------------------------------------------- load + validate


def test_load_evidence_reads_paths_and_dicts(tmp_path: Path) -> None:
    data = v2_data()
    path = tmp_path / EVIDENCE_FILE
    path.write_text(json.dumps(data))
    assert load_evidence(path) == load_evidence(str(path)) == load_evidence(data) == validate_evidence(data)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, r"no evidence file at .*evidence\.json; pass the evidence\.json a run wrote"),
        ("{", r"cannot read evidence from .*: JSONDecodeError"),
        ("[]", r"evidence must be a JSON object, got list"),
        ('{"schema": "modelyard.evidence/9"}', r"schema is 'modelyard.evidence/9'; this modelyard reads"),
    ],
)
def test_load_evidence_errors(tmp_path: Path, text: str | None, match: str) -> None:
    path = tmp_path / EVIDENCE_FILE
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=match):
        load_evidence(path)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(ev: dict[str, Any]) -> None:
        target: Any = ev
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _pop(path: tuple[Any, ...]) -> Any:
    def mutate(ev: dict[str, Any]) -> None:
        target: Any = ev
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


ACC = ("candidates", 1, "measurements", "quality.accuracy")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_set((*ACC, "value"), "0.9"), r"candidates\[1\]\.measurements\['quality\.accuracy'\]\.value: "),
        (_set((*ACC, "status"), "maybe"), r"\.status: Input should be 'ok' or 'unknown'"),
        (_set((*ACC, "value"), None), r"status is 'ok' but value is None"),
        (_set((*ACC, "interval"), [0.1, 0.2, 0.3]), r"\['quality\.accuracy'\]\.interval: Tuple should have"),
        (_set((*ACC, "name"), "quality.macro_f1"), r"filed under a key that is not their name"),
        (_set(("candidates", 0, "verdict", "gates", 0, "passed"), "yes"), r"gates\[0\]\.passed: .*boolean"),
        (_set(("candidates", 0, "size_bytes"), 1.5), r"candidates\[0\]\.size_bytes: .*integer"),
        (_set(("candidates", 0, "artifact_sha256"), "abc"), r"candidates\[0\]\.artifact_sha256: .*pattern"),
        (_pop(("hardware", "target")), r"hardware\.target: Field required"),
        (_set(("hardware", "target"), "tpu"), r"hardware\.target: Input should be 'cpu' or 'gpu'"),
        (_set(("dataset", "surprise"), 1), r"dataset\.surprise: Extra inputs are not permitted"),
        (_set(("dataset", "n_cal"), -1), r"dataset\.n_cal: Input should be greater than or equal to 0"),
        (_set(("champion",), "nobody"), r": champion 'nobody' is not a candidate"),
        (_set(("pareto",), ["ghost"]), r"pareto name 'ghost' is not a candidate"),
        (_set(("candidates", 1, "parent"), "ghost"), r"parent 'ghost', which is not a candidate"),
        (_set(("schema",), V1), r"schema: Input should be 'modelyard.evidence/2'"),
    ],
)
def test_invalid_evidence_names_the_first_invalid_field(mutate: Any, match: str) -> None:
    ev = v2_data()
    mutate(ev)
    with pytest.raises(DataError, match=match) as info:
        validate_evidence(ev)
    assert "\n" not in str(info.value)


def test_free_form_parts_take_any_keys() -> None:
    ev = v2_data()
    ev["candidates"][0]["measurements"]["quality.accuracy"]["details"]["anything"] = {"x": [1, None]}
    ev["candidates"][0]["meta"]["new_pass_note"] = "ok"
    ev["policy"]["future_section"] = {}
    ev["audit"]["extra"] = []
    ev["suite"]["more"] = 1
    assert validate_evidence(ev).suite["more"] == 1


def test_models_are_frozen() -> None:
    ev = validate_evidence(v2_data())
    with pytest.raises(ValidationError, match="frozen"):
        ev.champion = "baseline"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        ev.candidates[0].measurements["quality.accuracy"].value = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- writing


def test_write_evidence_validates_before_writing(tmp_path: Path) -> None:
    ev = v2_data()
    path = write_evidence(ev, tmp_path)
    assert json.loads(path.read_text()) == ev
    before = path.read_text()
    bad = copy.deepcopy(ev)
    bad["hardware"]["cores"] = "2"
    with pytest.raises(
        ModelyardError, match=r"^invalid evidence \(schema modelyard.evidence/2\): hardware\.cores"
    ):
        write_evidence(bad, tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [EVIDENCE_FILE]
    with pytest.raises(DataError, match=r"evidence schema is None; this modelyard reads"):
        write_evidence({"candidates": []}, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_write_evidence_writes_version_2_only(tmp_path: Path) -> None:
    """A v1 dict is migrated before it is written; a RunEvidence is written as the JSON it was read from."""
    path = write_evidence(v1_data(), tmp_path / "from-v1")
    assert json.loads(path.read_text()) == migrate_v1(v1_data())
    again = write_evidence(load_evidence(path), tmp_path / "typed")
    assert again.read_text() == path.read_text()


def test_write_evidence_validates_what_it_writes(tmp_path: Path) -> None:
    """Non-finite numbers become null on the way to JSON; the validation sees the nulls."""
    ev = v2_data()
    ev["candidates"][0]["measurements"]["quality.accuracy"]["details"]["odd"] = float("nan")
    path = write_evidence(ev, tmp_path)
    assert json.loads(path.read_text())["candidates"][0]["measurements"]["quality.accuracy"]["details"] == {
        **ev["candidates"][0]["measurements"]["quality.accuracy"]["details"],
        "odd": None,
    }
    ev["candidates"][0]["measurements"]["quality.accuracy"]["value"] = float("inf")
    with pytest.raises(DataError, match=r"status is 'ok' but value is None"):
        write_evidence(ev, tmp_path / "inf")
