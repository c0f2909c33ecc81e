"""Tests for modelyard.report: evidence.json, report.html and MODEL_CARD.md rendered from synthetic evidence."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from modelyard.errors import DataError
from modelyard.evaluate.checks import expected as expected_checks
from modelyard.evaluate.evidence import measure
from modelyard.evaluate.schema import SCHEMA_VERSION, Measurement, load_evidence
from modelyard.report import (
    CARD_FILE,
    EVIDENCE_FILE,
    REPORT_FILE,
    plots,
    render_model_card,
    render_report,
    write_evidence,
    write_model_card,
    write_outputs,
    write_report,
)
from modelyard.report.card import card_metadata, md_escape, risks
from modelyard.report.view import fmt_measurement, fmt_number
from tests.helpers.evidence import (
    FAILED_REASON,
    PNG_MAGIC,
    SKIPPED_REASON,
    as_v1,
    bins,
    classifier_evidence,
    embedder_evidence,
    front_matter,
    gate,
    risks_section,
    unknown_evidence,
)

V1_FILE = Path(__file__).parent / "data" / "evidence_v1.json"

# --------------------------------------------------------------------------------------------- files


def test_write_outputs_writes_three_files_atomically(tmp_path: Path) -> None:
    ev = classifier_evidence()
    out = tmp_path / "runs" / "r1"
    paths = write_outputs(ev, out)
    assert set(paths) == {EVIDENCE_FILE, REPORT_FILE, CARD_FILE}
    for name, path in paths.items():
        assert path == out / name and path.stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [EVIDENCE_FILE, REPORT_FILE, CARD_FILE]
    )  # no temp files left


def test_evidence_json_sorted_indented_and_round_trips(tmp_path: Path) -> None:
    ev = classifier_evidence()
    ev["candidates"][0]["measurements"]["calibration.nll"]["details"]["odd"] = float("inf")
    text = write_evidence(ev, tmp_path).read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    loaded = json.loads(text)
    assert loaded["candidates"][0]["measurements"]["calibration.nll"]["details"]["odd"] is None
    assert loaded["champion"] == "int8-dynamic"
    assert loaded["candidates"][2]["measurements"]["quality.accuracy"]["value"] == pytest.approx(0.94)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    ev = classifier_evidence()
    path = write_evidence(ev, tmp_path)
    before = path.read_text()
    bad = copy.deepcopy(ev)
    bad["policy"]["weird"] = object()
    with pytest.raises(DataError, match=r"evidence\.policy\.weird is a object, which is not JSON data"):
        write_evidence(bad, tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [EVIDENCE_FILE]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda ev: ev.update(champion="nobody"), r"champion 'nobody' is not a candidate"),
        (lambda ev: ev.update(schema="other/2"), r"evidence schema is 'other/2'; this modelyard reads"),
        (lambda ev: ev.update(candidates={}), r"candidates: Input should be a valid list"),
        (lambda ev: ev["candidates"][1].pop("name"), r"candidates\[1\]\.name: Field required"),
        (lambda ev: ev.pop("hardware"), r"hardware: Field required"),
        (lambda ev: ev["candidates"][0].pop("verdict"), r"candidates\[0\]\.verdict: Field required"),
        (lambda ev: ev["candidates"][0]["measurements"].clear() or ev.pop("created"), r"created: Field"),
        (
            lambda ev: ev["candidates"][0]["measurements"]["quality.accuracy"].update(value="0.9"),
            r"\['quality\.accuracy'\]\.value: Input should be a valid number",
        ),
    ],
)
def test_invalid_evidence_raises_one_line_data_error(tmp_path: Path, mutate: Any, match: str) -> None:
    ev = classifier_evidence()
    mutate(ev)
    for write in (write_report, write_model_card, write_evidence, write_outputs):
        with pytest.raises(DataError, match=match) as info:
            write(ev, tmp_path)
        assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_partial_evidence_is_refused() -> None:
    """Evidence without its sections is refused, not rendered with gaps."""
    partial = {"schema": SCHEMA_VERSION, "candidates": [], "champion": None}
    with pytest.raises(DataError, match=r"^invalid evidence \(schema modelyard.evidence/2\): run_id: Field"):
        render_report(partial)
    with pytest.raises(DataError, match=r"migrated to modelyard.evidence/2\): run_id: Field required"):
        render_model_card({**partial, "schema": "modelyard.evidence/1"})


def test_non_dict_evidence_is_refused() -> None:
    with pytest.raises(
        DataError, match=r"evidence must be a dict \(JSON object\) or a RunEvidence, got list"
    ):
        render_report([])  # type: ignore[arg-type]


def test_typed_and_dict_evidence_render_the_same(tmp_path: Path) -> None:
    ev = classifier_evidence()
    typed = load_evidence(ev)
    assert render_model_card(typed) == render_model_card(ev)
    path = write_evidence(typed, tmp_path)
    assert json.loads(path.read_text()) == json.loads(write_evidence(ev, tmp_path / "dict").read_text())
    assert load_evidence(path) == typed


def test_a_v1_file_renders_through_the_migration(tmp_path: Path) -> None:
    """Files written by the previous version still load and render; what is written is version 2."""
    v1 = json.loads(V1_FILE.read_text())
    paths = write_outputs(v1, tmp_path)
    assert json.loads(paths[EVIDENCE_FILE].read_text())["schema"] == SCHEMA_VERSION
    html, card = paths[REPORT_FILE].read_text(), paths[CARD_FILE].read_text()
    assert v1["run_id"] in html and v1["run_id"] in card
    assert "<p><strong>onnx</strong></p>" in html and "(champion)" in html
    assert "Efficiency measured on</th><td>not recorded (modelyard.evidence/1)" in html
    acc = v1["candidates"][1]["measurements"]["quality.accuracy"]["value"]
    assert front_matter(card)["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(acc)


def test_older_v1_dicts_render(tmp_path: Path) -> None:
    html = write_report(as_v1(classifier_evidence()), tmp_path).read_text()
    assert "0.9400 [0.9200 – 0.9550]" in html and "Target</th><td>cpu" in html


# -------------------------------------------------------------------------------------------- report


def test_report_contents_classifier(tmp_path: Path) -> None:
    html = write_report(classifier_evidence(), tmp_path).read_text()
    assert "int8-dynamic" in html and "(champion)" in html
    assert "cheapest candidate that passed every gate" in html
    assert FAILED_REASON in html
    assert SKIPPED_REASON in html
    assert "no VNNI: int8 matmuls are emulated" in html
    assert "0.0416 USD per hour (source: on-demand 2-vCPU instance)" in html
    assert "avx2: yes, avx512: no" in html
    assert "f" * 64 in html  # dataset fingerprint
    assert "baseline → export-onnx → int8-dynamic" in html
    assert "{&#34;per_channel&#34;: true}" in html  # configs, escaped
    # accuracy of int8-dynamic with its interval, unit in the header
    assert "0.9400 [0.9200 – 0.9550]" in html and "Accuracy (fraction)" in html
    # self-contained: no external resources of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "url(" not in html and "<script" not in html.lower() and "<link" not in html.lower()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3  # reliability, latency, throughput
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)
    (pareto,) = re.findall(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)
    assert b"<svg" in base64.b64decode(pareto)


def test_report_embedder_has_no_reliability_plot(tmp_path: Path) -> None:
    html = write_report(embedder_evidence(), tmp_path).read_text()
    assert "Cosine mean (cosine)" in html and "Paraphrase recall@1" in html
    assert "Reliability diagrams" not in html
    assert "cosine mean (cosine)" in html  # pareto y axis label in the caption
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 2
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', html)) == 1  # the Pareto plot


def test_report_unknown_measurements_render_unknown(tmp_path: Path) -> None:
    html = write_report(unknown_evidence(), tmp_path).read_text()
    assert "unknown (predictions failed: runner crashed)" in html
    assert "not measured" in html
    assert "No champion:" in html
    assert "accuracy is unknown: fails closed" in html and ">UNKNOWN<" in html
    assert "No candidate has calibration bins in the evidence." in html
    assert "No candidate has latency samples in the evidence." in html  # samples present but unusable
    assert "No candidate has a throughput curve in the evidence." in html
    assert "Not plotted (unknown x or y): baseline." in html or "nothing to plot" in html
    assert "The evidence records no policy." in html


def test_report_escapes_script(tmp_path: Path) -> None:
    ev = classifier_evidence()
    evil = "<script>alert(1)</script>"
    ev["model"]["name"] = evil
    ev["skipped"][0]["reason"] = evil
    ev["candidates"][3]["verdict"]["gates"][0]["reason"] = evil
    html = write_report(ev, tmp_path).read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_renders_a_dollar_in_a_candidate_name() -> None:
    ev = embedder_evidence()
    ev["candidates"][1]["name"] = "cost$ $x^2$"
    ev["champion"] = "cost$ $x^2$"
    ev["pareto"] = ["minilm"]
    assert "cost$ $x^2$" in render_report(ev)


# ---------------------------------------------------------------------------------------------- card


def test_card_front_matter_parses_with_yaml_and_huggingface_hub(tmp_path: Path) -> None:
    text = write_model_card(classifier_evidence(), tmp_path).read_text()
    meta = front_matter(text)
    assert "license" not in meta  # neither model nor dataset declares one
    assert meta["tags"] == ["modelyard", "image-classification", "onnx"]
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "digits-cnn"
    assert result["task"] == {"type": "image-classification"}
    assert result["dataset"] == {"name": "digits", "type": "digits", "split": "test"}
    accuracy = next(m for m in result["metrics"] if m["type"] == "accuracy")
    assert accuracy["value"] == pytest.approx(0.94)  # the champion's, not the baseline's 0.96
    assert "0.9200 – 0.9550" in accuracy["name"]

    card = ModelCard(text)
    assert card.data.model_name == "digits-cnn"
    hf_acc = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert hf_acc.metric_value == pytest.approx(0.94)
    assert hf_acc.task_type == "image-classification"
    assert card.data.license is None
    assert "## Limitations and risks" in card.text
    assert yaml.safe_load(str(card).split("---")[1])["model-index"] == meta["model-index"]  # hub round trip


def test_card_license_from_model_declaration() -> None:
    meta = card_metadata(embedder_evidence())
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "feature-extraction"
    card = ModelCard(render_model_card(embedder_evidence()))
    assert card.data.license == "apache-2.0"
    metric = next(r for r in card.data.eval_results if r.metric_type == "cosine_similarity")
    assert metric.metric_value == pytest.approx(0.996)
    ev = embedder_evidence()
    ev["model"]["license"] = "Custom Research Licence v2"
    meta = card_metadata(ev)
    assert (meta["license"], meta["license_name"]) == ("other", "Custom Research Licence v2")


def test_card_sections_and_values() -> None:
    text = render_model_card(classifier_evidence())
    for heading in (
        "## Model details",
        "### Lineage",
        "## Data",
        "## Evaluation results",
        "## Gates",
        "## Efficiency",
    ):
        assert heading in text
    assert "(the champion chosen by the policy)" in text
    assert '| 2 | int8-dynamic | `{"per_channel": true}` |' in text
    assert "`" + "2" * 64 + "`" in text  # artifact sha256 of the champion
    assert "| `calibration.ece` | 0.0400 | 0.0100 – 0.0600 | fraction |" in text
    assert "| `efficiency.latency_p50_ms` | 0.667 | — | ms |" in text
    assert "0.0416 USD per hour (source: on-demand 2-vCPU instance)" in text
    assert "| int8-static | accuracy non-inferiority | FAIL | 3.1 | 1 |" in text
    assert SKIPPED_REASON in text
    assert "| Test examples | 360 |" in text
    assert "- **Artifact size:** 1,333,333 bytes (1.27 MiB)" in text


def test_gate_values_keep_the_gates_own_scale() -> None:
    # modelyard.gate stores budget gates scaled (size in MB), not in the measurement's unit (bytes).
    ev = classifier_evidence()
    ev["candidates"][3]["verdict"]["gates"].append(
        gate("size", "efficiency.size_bytes", False, 1.27, 1.0, "size budget: 1.27 MB violates <= 1 MB")
    )
    text = render_model_card(ev)
    assert "| int8-static | size | FAIL | 1.27 | 1 | size budget: 1.27 MB violates &lt;= 1 MB |" in text
    html = render_report(ev)
    assert '<td class="num">1.27</td><td class="num">1</td>' in html
    assert "1 bytes" not in html and "1 bytes" not in text


def test_pipeline_extras_are_rendered() -> None:
    ev = classifier_evidence()
    ev["hardware"]["machine"] = "x86_64"  # the fixture's is "test machine"
    ev["hardware"]["int8_measured"] = [
        "int8-dynamic: 1.50x the throughput of its fp32 parent onnx (pays off here)"
    ]
    ev["model"]["spec"] = {
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": [None, 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 10]}],
        "task": "classification",
        "value_range": [0.0, 1.0],
    }
    text = render_model_card(ev)
    assert "- **Inputs:** pixels: float32 \\[?, 1, 8, 8\\]" in text
    assert (
        "| int8 measured | int8-dynamic: 1.50x the throughput of its fp32 parent onnx (pays off here) |"
        in text
    )
    assert "| Machine | x86\\_64 |" in text
    html = render_report(ev)
    assert "logits: float32 [?, 10]" in html and "(pays off here)" in html


def test_card_risks_derived_from_evidence() -> None:
    risk_text = risks_section(render_model_card(classifier_evidence()))
    assert "The dataset's source is not recorded" in risk_text
    assert "The dataset's licence is not recorded" in risk_text
    assert "The test split has 360 examples" in risk_text
    assert "no VNNI: int8 matmuls are emulated" in risk_text
    assert "int8-static did not pass gate accuracy non-inferiority" in risk_text
    assert "Unknown measurements" not in risk_text

    with_provenance = risks_section(
        render_model_card(classifier_evidence(source="sklearn.datasets", license="BSD-3-Clause"))
    )
    assert "source is not recorded" not in with_provenance
    assert "licence is not recorded" not in with_provenance


def test_card_unknown_measurements_and_no_champion() -> None:
    ev = unknown_evidence()
    text = render_model_card(ev)
    meta = front_matter(text)
    assert "model-index" not in meta  # nothing known to claim
    assert meta["tags"] == ["modelyard", "tabular-classification", "torch"]
    card = ModelCard(text)
    assert card.data.eval_results is None
    assert "| `quality.accuracy` | unknown (predictions failed: runner crashed) |" in text
    found = risks(ev)
    assert any(
        r.startswith(
            "No candidate passed the policy's gates; this card describes the baseline (candidate baseline)"
        )
        for r in found
    )
    assert (
        "Unknown measurements (the check ran but gave no value): calibration.ece, efficiency.throughput_best, "
        "quality.accuracy." in found
    )
    # every check a complete classifier run has (the registry's) and this evidence lacks, in registry order
    missing = [n for n in expected_checks("classification") if n not in ev["candidates"][0]["measurements"]]
    assert missing[:2] == ["quality.macro_f1", "compare.accuracy_drop"]
    assert f"Not measured: {', '.join(missing)}." in found
    assert "The model's source is not recorded in the evidence." in found
    assert (
        "The evidence does not record the hardware that speed, memory and cost were measured on; other "
        "hardware will give other numbers." in found
    )


def test_card_escapes_script_and_markdown() -> None:
    ev = classifier_evidence()
    ev["model"]["name"] = "<script>alert(1)</script>"
    ev["candidates"][2]["notes"] = ["x | y <img src=x onerror=alert(1)> [link](javascript:alert(1))"]
    text = render_model_card(ev)
    body = text.split("\n---\n", 1)[1]
    assert "<script" not in body and "<img" not in body
    assert "&lt;script&gt;alert\\(1\\)" not in body  # parentheses are left alone
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "x \\| y &lt;img src=x onerror=alert(1)&gt; \\[link\\](javascript:alert(1))" in body
    assert ModelCard(text).data.model_name == "<script>alert(1)</script>"  # YAML keeps the literal name


def test_md_escape_cases() -> None:
    assert md_escape("a_b*c`d|e\nf") == "a\\_b\\*c\\`d\\|e f"
    assert md_escape("AT&T <b>") == "AT&amp;T &lt;b&gt;"
    assert md_escape(None) == ""


def test_empty_candidates_do_not_crash(tmp_path: Path) -> None:
    ev = {**classifier_evidence(), "candidates": [], "champion": None, "pareto": []}
    paths = write_outputs(ev, tmp_path)
    assert "The evidence holds no candidates" in paths[CARD_FILE].read_text()
    assert "No champion:" in paths[REPORT_FILE].read_text()


# ------------------------------------------------------------------------------------ formats + plots


def test_formatting() -> None:
    assert fmt_number(None, "ms") == "unknown"
    assert fmt_number(1234567.0, "bytes") == "1.18 MiB"
    assert fmt_number(512.0, "bytes") == "512 bytes"
    assert fmt_number(0.006667, "USD") == "0.00667 USD"
    assert fmt_number(12.345, "ms") == "12.3 ms"
    assert fmt_number(15000.0, "items/s") == "15,000 items/s"
    assert fmt_number(3e-6, "p-value") == "3.00e-06 p-value"
    assert fmt_measurement(None, "quality.accuracy") == "not measured"
    m = Measurement.model_validate(measure("quality.accuracy", 0.5, (0.25, 0.75)).to_dict())
    assert fmt_measurement(m, "quality.accuracy") == "0.5000 [0.2500 – 0.7500]"
    unknown = Measurement.model_validate(measure("quality.accuracy", None, reason="no labels").to_dict())
    assert fmt_measurement(unknown, "quality.accuracy") == "unknown (no labels)"


def test_plots_return_png_and_refuse_empty_data() -> None:
    assert plots.pareto_png(
        [("a", 1.0, 0.9), ("b", 2.0, 0.95)], x_label="x", y_label="y", champion="a", frontier=["a", "b"]
    ).startswith(PNG_MAGIC)
    assert plots.reliability_png([("a", bins(0.0))]).startswith(PNG_MAGIC)
    assert plots.latency_png({"a": [1.0, 2.0, 3.0]}).startswith(PNG_MAGIC)
    assert plots.throughput_png({"a": {"1": 10.0, "4": 30.0}}).startswith(PNG_MAGIC)
    with pytest.raises(DataError, match="needs at least one"):
        plots.pareto_png([], x_label="x", y_label="y")
    with pytest.raises(DataError, match="needs at least one candidate with latency samples"):
        plots.latency_png({"a": [float("nan")]})


def test_plots_leave_no_pyplot_figures() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.latency_png({"a": [1.0, 2.0]})
    assert plt.get_fignums() == before
