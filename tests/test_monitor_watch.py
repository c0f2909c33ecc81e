"""The monitor engine on synthetic logs (no model): a tabular window names the feature that moved in its own
units, the false-alarm rate is shared among the checks that can alarm, a reference too small for the window
is shown and never alarms, history cuts consecutive windows; the reference's JSON round-trips and a bad file
is refused in one line; the server's summary and the reference share the projection; the live checks are in
the registry and out of everything offline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.errors import DataError
from modelyard.evaluate import checks
from modelyard.evaluate.checkspec import CheckSpec, GateSpec
from modelyard.monitor import (
    MonitorReference,
    history,
    load_reference,
    monitor_status,
    watch,
    write_reference,
)
from modelyard.monitor.db import INSERT_PREDICTION, connect, describe_version
from modelyard.monitor.estimate import estimate_accuracy, estimate_from_confidences
from modelyard.monitor.feedback import FeedbackItem, store_feedback
from modelyard.monitor.log import PredictionLog
from modelyard.monitor.reference import (
    EmbeddingsReference,
    InputReference,
    OfflineAccuracy,
    OODReference,
    PredictionReference,
    reference_to_dict,
)
from modelyard.monitor.reference_build import fit_projection
from modelyard.monitor.summary import logged_predictions, logged_rows, summarize_inputs, summarize_outputs

MODEL = "toy"
W = np.array([[2.0, -1.0, 0.0], [0.0, 2.0, -1.0], [-1.0, 0.0, 2.0]])  # features -> 3 logits
THRESHOLD = 3.0  # OOD: flagged when the largest |feature| exceeds it


def _outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    z = x @ W
    e = np.exp(z - z.max(axis=1, keepdims=True))
    score = np.abs(x).max(axis=1)
    return {
        "probabilities": (e / e.sum(axis=1, keepdims=True)).astype(np.float32),
        "ood_score": score,
        "ood_flag": score > THRESHOLD,
    }


def _labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from the probabilities: the model is calibrated."""
    return np.array([rng.choice(3, p=p / p.sum()) for p in probs.astype(np.float64)])


def _reference(n_inputs: int = 2000, n_predictions: int = 500) -> MonitorReference:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n_inputs, 3)).astype(np.float32)
    rows = logged_rows(x)
    xp = rng.normal(size=(n_predictions, 3))
    out = _outputs(xp)
    predicted, confidence = logged_predictions(out["probabilities"])
    test = rng.normal(size=(1000, 3))
    test_out = _outputs(test)
    acc = float(np.mean(test_out["probabilities"].argmax(1) == _labels(test_out["probabilities"], rng)))
    return MonitorReference(
        task="classification",
        modality="tabular",
        candidate="toy",
        inputs=InputReference("values", "x", ("x[0]", "x[1]", "x[2]"), rows, None, "fit items"),
        predictions=PredictionReference(
            ("a", "b", "c"),
            1.0,
            predicted,
            confidence,
            _labels(out["probabilities"], rng),
            "calibration items",
        ),
        embeddings=None,
        ood=OODReference(
            "maxabs", THRESHOLD, out["ood_score"], float(np.mean(test_out["ood_flag"])), 1000, "test"
        ),
        accuracy=OfflineAccuracy(acc, (acc - 0.025, acc + 0.025), 1000),
        notes=(),
    )


def _log(path: Path, x: np.ndarray, *, start: int = 0, labels: bool = False) -> list[str]:
    """One request per row of ``x``, summarized as the server does, written to the log at ``path``."""
    rng = np.random.default_rng(start + 7)
    out = _outputs(x)
    conn = connect(path)
    ids = [f"r{start + i}" for i in range(len(x))]
    try:
        describe_version(conn, MODEL, "1", "classification", ("a", "b", "c"))
        for i, rid in enumerate(ids):
            o = summarize_outputs({k: v[i : i + 1] for k, v in out.items()})
            inputs = summarize_inputs({"x": x[i : i + 1].astype(np.float32)}, None, rows=1)
            row = (
                rid,
                1000.0 + start + i,
                MODEL,
                "1",
                "infer",
                1,
                inputs,
                o.json,
                o.confidence,
                o.ood_score,
                int(bool(o.ood_flag)),
                1.0,
            )
            conn.execute(INSERT_PREDICTION, row)
    finally:
        conn.close()
    if labels:
        y = _labels(out["probabilities"], rng)
        store_feedback(
            path, [FeedbackItem(rid, int(v)) for rid, v in zip(ids, y, strict=True)], source="test"
        )
    return ids


def test_a_tabular_window_names_the_feature_that_moved_in_its_units(tmp_path: Path) -> None:
    ref = _reference()
    db = tmp_path / "monitor.db"
    rng = np.random.default_rng(3)
    _log(db, rng.normal(size=(200, 3)), labels=True)
    log = PredictionLog(db)
    clean = watch(log, ref, model=MODEL, version=1, window=200, alpha=0.05)
    levels = {s.name: s.level for s in clean.signals}
    # inputs, OOD rate, estimated and realised accuracy may alarm, each at a quarter of the window's 5 %
    for name in ("drift.inputs", "drift.ood_rate", "accuracy.estimated", "accuracy.realised"):
        assert levels[name] == pytest.approx(0.0125)
    # 500 reference predictions are fewer than 4 windows of 200 rows: output drift is shown, never alarms
    outputs = clean.signal("drift.outputs")
    assert outputs is not None and outputs.alarm is None and any("drift.outputs" in n for n in clean.notes)
    assert not clean.alarm, clean.summary()
    gap = clean.signal("accuracy.estimate_gap")
    assert gap is not None and gap.measurement.unit == "points" and gap.measurement.details["rows"] == 200

    shifted = rng.normal(size=(200, 3))
    shifted[:, 1] += 1.5
    _log(db, shifted, start=1000)
    status = watch(log, ref, model=MODEL, version=1, window=200, alpha=0.05)
    assert status.requests == 200 and status.alarm
    drift = next(a for a in status.alarms if a.check == "drift.inputs")
    assert drift.moved[0].name == "x[1]" and drift.moved[0].mean_shift == pytest.approx(1.5, abs=0.25)
    assert "x[1]" in drift.message and "sd" in drift.message
    m = status.signal("drift.inputs")
    assert m is not None and m.measurement.unit == "sd" and m.measurement.value == pytest.approx(1.5, abs=0.3)
    # no labels in this window: three checks share the rate
    assert m.level == pytest.approx(0.05 / 3)
    doc = json.loads(json.dumps(status.to_dict()))  # plain JSON
    assert doc["alarms"][0]["moved"][0] == "x[1]" and doc["measurements"]["drift.inputs"]["unit"] == "sd"


def test_history_cuts_consecutive_disjoint_windows_oldest_first(tmp_path: Path) -> None:
    db = tmp_path / "monitor.db"
    rng = np.random.default_rng(5)
    _log(db, rng.normal(size=(250, 3)))
    windows = history(PredictionLog(db), _reference(), model=MODEL, window=100, alpha=0.05)
    assert [w.requests for w in windows] == [100, 100]  # the incomplete oldest 50 are left out
    assert windows[0].last_unix_s is not None and windows[1].first_unix_s is not None
    assert windows[0].last_unix_s < windows[1].first_unix_s
    assert windows[1].last_unix_s == 1000.0 + 249


def test_the_reference_round_trips_and_a_bad_file_is_refused(tmp_path: Path) -> None:
    ref = _reference(n_inputs=100, n_predictions=50)
    path = write_reference(ref, tmp_path / "ref" / "monitor_reference.json")
    back = load_reference(path)
    assert reference_to_dict(back) == reference_to_dict(ref)
    assert (
        back.inputs is not None
        and ref.inputs is not None
        and np.array_equal(back.inputs.rows, ref.inputs.rows)
    )
    assert len(back.digest) == 64

    with pytest.raises(DataError, match="no monitor reference at"):
        load_reference(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read the monitor reference"):
        load_reference(tmp_path / "junk.json")
    doc = reference_to_dict(ref)
    (tmp_path / "old.json").write_text(json.dumps({**doc, "schema": "something/9"}))
    with pytest.raises(DataError, match=r"expected 'modelyard\.monitor_reference/1'"):
        load_reference(tmp_path / "old.json")
    bad = json.loads(json.dumps(doc))
    bad["inputs"]["rows"][3] = [1.0, 2.0]  # a short row
    bad["predictions"]["confidence"][0] = 1.5
    bad["accuracy"]["accuracy"] = 2.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"inputs: 'rows'.*predictions: .*confidences.*accuracy:") as info:
        load_reference(tmp_path / "bad.json")
    assert "\n" not in str(info.value)


def test_the_server_summary_and_the_reference_share_the_projection() -> None:
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(60, 3, 40, 40)).astype(np.float32)
    projection = fit_projection("pixels", images[:40], 4)
    assert projection.pool == 3 and projection.mean.size == 3 * 13 * 13  # pooled to at most 1024 values
    doc = json.loads(summarize_inputs({"pixels": images[40:43]}, None, rows=3, projection=projection))
    assert doc["features"] == projection.logged(images[40:43]).tolist()
    assert len(doc["features"][0]) == 5 and projection.names[-1] == "residual"
    # an input the projection does not fit is summarized without features, never an error
    other = json.loads(summarize_inputs({"pixels": images[:1, :, :20]}, None, rows=1, projection=projection))
    assert "features" not in other
    emb = rng.normal(size=(30, 16))
    eproj = fit_projection("embedding", emb[:20], 3)
    out = json.loads(summarize_outputs({"embedding": emb[20:22]}, projection=eproj).json)
    assert out["features"] == eproj.logged(emb[20:22]).tolist()


def test_the_estimate_from_logged_confidences_is_the_estimate_from_probabilities() -> None:
    rng = np.random.default_rng(4)
    probs = _outputs(rng.normal(size=(300, 3)))["probabilities"].astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    ref = _outputs(rng.normal(size=(400, 3)))["probabilities"].astype(np.float64)
    ref /= ref.sum(axis=1, keepdims=True)
    y = _labels(ref, rng)
    full = estimate_accuracy(probs, reference_probs=ref, reference_labels=y)
    logged = estimate_from_confidences(
        probs.max(axis=1), reference_confidences=ref.max(axis=1), reference_correct=ref.argmax(axis=1) == y
    )
    assert logged == full
    with pytest.raises(DataError, match="at least 20 rows"):
        estimate_from_confidences(
            probs.max(axis=1), reference_confidences=[0.9] * 5, reference_correct=[True] * 5
        )


def test_status_is_one_clear_line_without_a_log_or_for_an_unknown_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DataError, match="no prediction log at"):
        monitor_status(tmp_path / "empty-home")
    db = tmp_path / "home" / "monitor.db"
    _log(db, np.random.default_rng(6).normal(size=(30, 3)))
    with pytest.raises(DataError, match=r"'other' has no logged requests.*logged models: toy"):
        monitor_status(tmp_path / "home", "other")
    # a logged version the registry does not know: a status without checks, saying why
    (status,) = monitor_status(tmp_path / "home", window=50)
    assert status.requests == 30 and not status.signals and "not watched" in status.notes[0]
    assert main(["monitor", "status", "--home", str(tmp_path / "home")]) == 0
    assert "not watched" in capsys.readouterr().out
    assert main(["monitor", "status", "other", "--home", str(tmp_path / "home")]) == 2
    assert "no logged requests" in capsys.readouterr().err


def test_live_checks_are_registered_and_out_of_everything_offline() -> None:
    live = {s.name for s in checks.live_checks()}
    assert {
        "drift.inputs",
        "drift.outputs",
        "drift.ood_rate",
        "accuracy.estimated",
        "accuracy.realised",
    } <= live
    assert live <= set(checks.measurement_table()) and live <= {s.name for s in checks.all_checks()}
    assert checks.measurement_table()["drift.inputs"][0] == "sd"
    for task in ("classification", "embedding"):
        offline = {s.name for s in checks.checks_for(task)}
        assert not live & offline
        assert not live & {n for n, _ in checks.columns(task)} and not live & set(checks.expected(task))
        assert {s.name for s in checks.checks_for(task, stage="live")} <= live
    assert not live & {s.name for s, _ in checks.gate_specs()}
    with pytest.raises(ValueError, match=r"a live check .* takes no gate"):
        CheckSpec(
            "drift.toy",
            "sd",
            "x",
            "lower",
            stage="live",
            gate=GateSpec("toy", "drift.max_toy", 1.0, "<=", "x"),
        )
    spec = checks.get_check("drift.inputs")
    assert spec is not None and replace(spec) == spec


def test_an_embedder_window_is_checked_on_its_embedding_components(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    basis = rng.normal(size=(4, 16))
    emb = rng.normal(size=(1600, 4)) @ basis + 0.1 * rng.normal(size=(1600, 16))
    projection = fit_projection("embedding", emb[:400], 4)
    ref = MonitorReference(
        task="embedding",
        modality="text",
        candidate="toy-embedder",
        inputs=None,
        predictions=None,
        embeddings=EmbeddingsReference(projection, projection.logged(emb[400:]), "fit items"),
        ood=None,
        accuracy=None,
        notes=(),
    )
    db = tmp_path / "monitor.db"
    conn = connect(db)
    try:
        window = rng.normal(size=(400, 4)) @ basis + 0.1 * rng.normal(size=(400, 16))
        window[200:] += 0.5 * basis[0]  # the second half moves along the first direction
        for i, row in enumerate(window):
            out = summarize_outputs({"embedding": row[None]}, projection=projection)
            inputs = summarize_inputs(None, ["a text"], rows=1)
            conn.execute(
                INSERT_PREDICTION,
                (f"e{i}", float(i), MODEL, "1", "predict", 1, inputs, out.json, None, None, None, 1.0),
            )
    finally:
        conn.close()
    clean, moved = history(PredictionLog(db), ref, model=MODEL, window=200, alpha=0.05)
    assert [s.name for s in clean.signals] == ["drift.embeddings", "drift.mmd_p"]
    assert not clean.alarm, clean.summary()
    assert moved.alarm and moved.alarms[0].check == "drift.embeddings"
    assert moved.alarms[0].moved[0].name.startswith("pc")
    mmd = moved.signal("drift.mmd_p")
    assert mmd is not None and mmd.alarm is None and mmd.measurement.value is not None
    assert mmd.measurement.value < 0.05
