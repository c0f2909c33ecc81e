"""Evidence records each candidate's runtime (name, version, settings read back from the Runner that ran the
efficiency checks); the report's Pareto plot colours candidates by runtime; older evidence without runtimes
still loads and renders."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch

from modelyard.config import Policy, Settings
from modelyard.errors import DataError
from modelyard.evaluate.schema import load_evidence, validate_evidence
from modelyard.pipeline import RunResult, run_pipeline
from modelyard.report import plots, render_model_card, render_report
from modelyard.runtime import device
from modelyard.runtime.base import describe_runner
from modelyard.runtime.onnx import OrtRunner
from tests.helpers.evidence import PNG_MAGIC, as_v1, classifier_evidence
from tests.helpers.serving import FAST
from tests.helpers.torch_mlp import mlp_candidate


def _stub_png_plots(mp: pytest.MonkeyPatch) -> None:
    """The PNG plots drawn as a stub (matplotlib is slow; these tests read the text and the Pareto SVG)."""
    for name in dir(plots):
        if name.endswith("_png"):
            mp.setattr(plots, name, lambda *a, **k: PNG_MAGIC)


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_png_plots(monkeypatch)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunResult]:
    """One pipeline run on a tiny PyTorch MLP with an ONNX Runtime, an OpenVINO and (CPU flags monkeypatched
    to have BF16) a bf16 PyTorch candidate."""
    base, ds = mlp_candidate(tmp_path_factory.mktemp("mlp"))
    real = device.cpu_info()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device, "cpu_info", lambda: {**real, "isa": {**real["isa"], "bf16": True}})
        _stub_png_plots(mp)
        yield run_pipeline(
            base,
            ds,
            model_name="blobs-mlp",
            model_source="test",
            recipes=["onnx", "openvino", "torch-bf16"],
            policy=Policy(),
            settings=Settings(home=tmp_path_factory.mktemp("home")),
            options=FAST,
            register=False,
        )


def test_every_candidate_records_its_runtime_and_settings(run: RunResult) -> None:
    ev = run.evidence
    assert not ev["skipped"], ev["skipped"]
    by = {c["name"]: c["runtime"] for c in ev["candidates"]}
    assert set(by) == {"baseline", "onnx", "openvino", "torch-bf16"}
    assert {n: r["name"] for n, r in by.items()} == {
        "baseline": "torch",
        "onnx": "onnxruntime",
        "openvino": "openvino",
        "torch-bf16": "torch",
    }
    assert by["baseline"]["version"] == str(torch.__version__)
    assert by["baseline"]["settings"]["dtype"] == "float32" and by["baseline"]["settings"]["device"] == "cpu"
    assert by["torch-bf16"]["settings"]["dtype"] == "bfloat16"
    ort = by["onnx"]
    assert ort["version"] == onnxruntime.__version__
    assert ort["settings"]["execution_providers"] == ["CPUExecutionProvider"]
    assert ort["settings"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert ort["settings"]["intra_op_threads"] >= 1 and ort["settings"]["inter_op_threads"] == 1
    ov = by["openvino"]["settings"]
    assert ov["inference_precision"] == "f32" and ov["performance_hint"] == "LATENCY" and ov["streams"] == 1
    # the runtime is where the efficiency figures say they were taken, and the typed evidence has it
    for c in run.typed_evidence.candidates:
        assert c.runtime is not None
        assert c.runtime.model_dump() == c.measurements["efficiency.load_time_s"].details["runtime"]
    assert load_evidence(run.run_dir / "evidence.json").candidates[1].runtime is not None


def test_the_report_and_card_show_each_runtime(run: RunResult) -> None:
    html = (run.run_dir / "report.html").read_text()
    card = (run.run_dir / "MODEL_CARD.md").read_text()
    assert "<th>runtime</th>" in html
    for label in (f"onnxruntime {onnxruntime.__version__}", f"torch {torch.__version__}", "openvino 20"):
        assert label in html and label in card
    assert "execution_providers CPUExecutionProvider" in html and "dtype bfloat16" in html
    assert "- **Runtime:** " in card and "| candidate | runtime |" in card
    groups = {g.removesuffix("-failed") for g in _runtime_groups(_pareto_svg(html))}
    assert groups == {"runtime-onnxruntime", "runtime-openvino", "runtime-torch"}


def _pareto_svg(html: str) -> str:
    (data,) = re.findall(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)" alt="Pareto', html)
    return base64.b64decode(data).decode("utf-8")


def _runtime_groups(svg: str) -> dict[str, str]:
    """SVG group id -> the colour its first marker is drawn in."""
    out = {}
    for gid, body in re.findall(r'<g id="(runtime-[a-z0-9-]+)">(.*?)</g>', svg, re.S):
        (color,) = re.findall(r"stroke: (#[0-9a-f]{6})", body)[:1]
        out[gid] = color
    return out


def _with_runtimes(runtimes: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    ev = classifier_evidence()
    for c in ev["candidates"]:
        if runtimes.get(c["name"]) is not None:
            c["runtime"] = runtimes[c["name"]]
    return ev


def test_pareto_svg_has_one_colour_per_runtime_and_a_legend(fast_png: None) -> None:
    names = [c["name"] for c in classifier_evidence()["candidates"]]
    assert len(names) >= 3
    rt = {
        names[0]: {"name": "torch", "version": "2.13.0", "settings": {"dtype": "float32"}},
        names[1]: {"name": "onnxruntime", "version": "1.32.0", "settings": {}},
        names[2]: {"name": "openvino", "version": "2026.4.1", "settings": {}},
    }
    svg = _pareto_svg(render_report(_with_runtimes(rt)))
    groups = _runtime_groups(svg)
    plain = {g.removesuffix("-failed"): color for g, color in groups.items()}
    present = {"runtime-torch", "runtime-onnxruntime", "runtime-openvino"} | (
        {"runtime-not-recorded"} if len(names) > 3 else set()
    )
    assert set(plain) == present
    for g, color in groups.items():  # failed points keep their runtime's colour
        assert color == plain[g.removesuffix("-failed")]
    assert len(set(plain.values())) == len(plain)  # one colour per runtime
    legend = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert {"torch", "onnxruntime", "openvino"} <= set(legend)


def test_pareto_colours_are_stable_and_unknown_runtimes_get_their_own() -> None:
    colors = plots.runtime_colors(["torch", "tvm", "onnxruntime", "not recorded", "mlc"])
    assert colors["torch"] == plots.RUNTIME_COLORS["torch"]
    assert colors["onnxruntime"] == plots.RUNTIME_COLORS["onnxruntime"]
    assert len(set(colors.values())) == 5
    svg = plots.pareto_svg(
        [("a", 1.0, 0.9), ("b", 2.0, 0.95)], x_label="x", y_label="y", runtimes={"a": "tvm", "b": "tvm"}
    ).decode()
    assert set(_runtime_groups(svg)) == {"runtime-tvm"}
    again = plots.pareto_svg(
        [("a", 1.0, 0.9), ("b", 2.0, 0.95)], x_label="x", y_label="y", runtimes={"a": "tvm", "b": "tvm"}
    ).decode()
    assert svg == again  # no dates, fixed ids


def test_evidence_without_runtimes_still_loads_and_renders(fast_png: None) -> None:
    old = classifier_evidence()
    assert all("runtime" not in c for c in old["candidates"])
    ev = validate_evidence(old)
    assert all(c.runtime is None for c in ev.candidates)
    assert all(c.runtime is None for c in load_evidence(as_v1(old)).candidates)
    html, card = render_report(old), render_model_card(old)
    assert "not recorded (evidence written before runtimes were recorded)" in html
    assert "- **Runtime:** not recorded" in card


@pytest.mark.parametrize(
    ("runtime", "match"),
    [
        ({"version": "1", "settings": {}}, r"runtime\.name: Field required"),
        ({"name": "", "version": "1", "settings": {}}, r"runtime\.name: String should have at least 1"),
        ({"name": "x", "version": 1, "settings": {}}, r"runtime\.version: Input should be a valid string"),
        ({"name": "x", "version": "1", "settings": {}, "extra": 1}, r"runtime\.extra: Extra inputs"),
    ],
)
def test_a_malformed_runtime_is_one_line_data_error(runtime: dict[str, Any], match: str) -> None:
    ev = classifier_evidence()
    ev["candidates"][0]["runtime"] = runtime
    with pytest.raises(DataError, match=match):
        validate_evidence(ev)


def test_runners_describe_what_the_runtime_runs_with(onnx_classifier: tuple[Path, Path]) -> None:
    model, _ = onnx_classifier
    served = describe_runner(OrtRunner(model, threads=1, spin=False))
    assert served["name"] == "onnxruntime" and served["version"] == onnxruntime.__version__
    assert served["settings"]["intra_op_threads"] == 1 and served["settings"]["spinning"] is False
    assert describe_runner(OrtRunner(model, threads=2))["settings"]["spinning"] is True

    class Bare:
        device = "cpu"

    assert describe_runner(Bare()) == {
        "name": "Bare",
        "version": "not recorded",
        "settings": {"device": "cpu"},
    }


def test_a_candidate_not_timed_on_the_gpu_records_the_cpu_runtime_its_checks_ran_on(
    onnx_classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    from modelyard.candidate import Candidate
    from modelyard.evaluate import run as evaluate_run
    from modelyard.evaluate.efficiency import runtime_of

    model, _ = onnx_classifier
    spec = OrtRunner(model).spec
    ms = evaluate_run._unknown_efficiency("not measured: no GPU runtime", "gpu")
    evaluate_run._record_cpu_runtime(ms, Candidate("c", "onnx", model, spec), 1)
    runtime = runtime_of(ms)
    assert runtime is not None and runtime["name"] == "onnxruntime"
    assert runtime["settings"]["device"] == "cpu" and "not timed on the target" in runtime["settings"]["note"]
    broken = evaluate_run._unknown_efficiency("not measured: no GPU runtime", "gpu")
    evaluate_run._record_cpu_runtime(broken, Candidate("b", "onnx", tmp_path / "missing.onnx", spec), 1)
    assert runtime_of(broken) is None  # nothing invented for a model that does not load
