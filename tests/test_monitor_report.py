"""``modelyard monitor report``: the "blobs" server in-process fed two clean windows (labelled) and one
drifted window; the page written from the registry + log is self-contained HTML with its SVG charts, names
the alarm and the features that moved, escapes what it shows; an unknown model or a missing log is refused in
one line (exit 2)."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.monitor.report import build_report, default_report_path, render_html
from modelyard.registry import Registry
from tests.helpers.serving import MODEL, app_client, build_blobs_registry, infer_body, settings_for

WINDOW = 20  # requests per window, 2 rows each: within a quarter of the reference's 192 fit rows
ROWS = 2


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def blobs_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh items of the blobs training distribution (same centres as ``make_blobs()``) and their classes."""
    centres = np.random.default_rng(0).normal(scale=3.0, size=(3, 6))
    y = np.arange(n) % 3
    x = centres[y] + np.random.default_rng(seed).normal(size=(n, 6))
    return x.astype(np.float32), y


async def _send(client: Any, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Requests of ROWS items each; with ``y``, each request's labels posted as feedback."""
    labels = []
    for i in range(0, len(x), ROWS):
        r = await client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x[i : i + ROWS]))
        assert r.status_code == 200, r.text
        if y is not None:
            labels.append({"id": r.headers["x-request-id"], "label": [int(v) for v in y[i : i + ROWS]]})
    if labels:
        r = await client.post(f"/v2/models/{MODEL}/feedback", json={"feedback": labels})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Path:
    """A home folder with blobs registered and its log: two clean, labelled windows, then a drifted one."""
    import anyio

    registry: Registry = build_blobs_registry(tmp_path_factory.mktemp("report-home"), onnx_classifier)

    async def traffic() -> None:
        async with app_client(settings_for(registry, monitor_every_s=0), registry) as (_, c):
            for seed in (21, 22):
                await _send(c, *blobs_like(WINDOW * ROWS, seed))
            x, _ = blobs_like(WINDOW * ROWS, 23)
            await _send(c, x + 4.0)  # every feature moved by 4 (about one sd of a blob)

    anyio.run(traffic)
    return registry.home


def test_the_report_shows_the_windows_charts_and_alarms(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "report", MODEL, "--home", str(home), "--window", str(WINDOW)]) == 0
    line = capsys.readouterr().out.strip()
    path = default_report_path(home, MODEL)
    assert line.count("\n") == 0 and str(path) in line and "3 windows" in line and "1 with alarms" in line
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temp file left
    page = path.read_text(encoding="utf-8")

    report = build_report(home, MODEL, window=WINDOW)
    assert [w.alarm for w in report.windows] == [False, False, True]
    clean, drifted = report.windows[0], report.windows[-1]
    assert clean.signal("accuracy.realised") is not None and drifted.signal("accuracy.realised") is None
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # self-contained: no script, nothing fetched
    assert "<script" not in page and "src=" not in page and "<link" not in page and "@import" not in page
    # a chart per drift signal, feature effects, OOD rate, MMD, confidence (line + histogram), accuracy
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) >= 7
    for svg in svgs:  # each chart is well-formed SVG
        ElementTree.fromstring(svg)
    for title in (
        "drift.inputs: max effect vs threshold",
        "Input drift: effect per feature",
        "Confidence",
        "Accuracy: estimated before labels vs realised",
        "Alarms",
    ):
        assert html.escape(title) in page, title
    # the alarm and what moved, in the data's units
    (inputs_alarm,) = [a for a in drifted.alarms if a.check == "drift.inputs"]
    assert html.escape(inputs_alarm.message) in page
    assert inputs_alarm.moved
    for f in inputs_alarm.moved[:5]:
        assert html.escape(f"{f.name}: {f.detail}") in page
    # the reference's confidences beside the last window's
    assert report.reference_confidences is not None and report.last_confidences.size == WINDOW * ROWS
    assert "reference (" in page and f"last window ({WINDOW * ROWS})" in page

    out = home / "elsewhere" / "r.html"
    assert main(["monitor", "report", MODEL, "--home", str(home), "--window", "30", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.read_text(encoding="utf-8").count("<svg") >= 5


def test_the_report_escapes_what_it_shows(home: Path) -> None:
    report = build_report(home, MODEL, window=WINDOW)
    page = render_html(replace(report, model="<script>alert(1)</script>"))
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_unknown_model_or_no_log_is_refused_in_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "report", "nope", "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no logged requests" in err and "blobs" in err and "\n" not in err and "Traceback" not in err
    assert main(["monitor", "report", MODEL, "--home", str(home), "--window", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fewer than one window of 1000" in err and "\n" not in err
    assert main(["monitor", "report", MODEL, "--home", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no prediction log" in err and "\n" not in err
    assert not default_report_path(tmp_path / "empty", MODEL).exists()
