"""The monitor report: one self-contained HTML page of a served model's checks over time (what ``modelyard
monitor report`` writes).

Data first, rendering second: :func:`build_report` cuts the prediction log into consecutive windows
(:func:`~modelyard.monitor.watch.history`) and gathers what the page shows in a :class:`MonitorReport`;
:func:`render_html` draws it (inline SVG charts, every text HTML-escaped, no script, nothing fetched) and
:func:`write_report` writes it atomically. The page shows, per window: each drift signal's statistic against
its threshold, the input features' effects (the features that moved most), the mean confidence, the
estimated and realised accuracy with their intervals against the offline accuracy, and the alarms with what
moved; and the last window's confidences against the reference's as two histograms.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
from numpy.typing import NDArray

from modelyard.errors import DataError
from modelyard.monitor.db import default_path
from modelyard.monitor.log import PredictionLog
from modelyard.monitor.reference import MonitorReference
from modelyard.monitor.status import reference_for
from modelyard.monitor.watch import DEFAULT_WINDOW, MonitorStatus, history
from modelyard.monitor.window import WindowRows
from modelyard.registry import Registry
from modelyard.report.view import atomic_write_text

__all__ = ["MonitorReport", "build_report", "default_report_path", "render_html", "write_report"]

DRIFT_CHECKS = ("drift.inputs", "drift.embeddings", "drift.outputs")
TOP_FEATURES = 6
HIST_BINS = 20
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


@dataclass(frozen=True)
class MonitorReport:
    """What the report page shows: the windows' statuses (oldest first), the mean confidence of each window,
    and the confidences of the last window and of the reference."""

    model: str
    version: str
    window: int
    alpha: float
    windows: tuple[MonitorStatus, ...]
    mean_confidence: tuple[float | None, ...]
    last_confidences: NDArray[np.float64]
    reference_confidences: NDArray[np.float64] | None
    created_unix_s: float

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def alarmed_windows(self) -> int:
        return sum(1 for w in self.windows if w.alarm)


def default_report_path(home: Path | str, name: str) -> Path:
    """``<home>/monitor/<name>-report.html``."""
    return Path(home) / "monitor" / f"{name}-report.html"


def _latest_version(versions: Sequence[str]) -> str:
    return max(versions, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))


def build_report(
    home: Path | str,
    name: str,
    *,
    window: int = DEFAULT_WINDOW,
    alpha: float = 0.05,
    db: Path | str | None = None,
    max_windows: int | None = None,
) -> MonitorReport:
    """The report of the latest logged version of ``name`` in the prediction log of ``home`` (or ``db``):
    consecutive windows of ``window`` requests against its reference at false-alarm rate ``alpha``.
    DataError when there is no log, ``name`` has no logged requests or no usable reference, or fewer than
    ``window`` requests are logged."""
    home = Path(home)
    log = PredictionLog(db if db is not None else default_path(home))
    if not log.path.exists():
        raise DataError(
            f"no prediction log at {log.path}: serve a model with monitoring on (the default) and send it "
            "requests first"
        )
    served = log.versions()
    mine = [v.version for v in served if v.model == name]
    if not mine:
        known = sorted({v.model for v in served})
        raise DataError(
            f"model {name!r} has no logged requests in {log.path}; logged models: "
            f"{', '.join(known) if known else 'none yet'}"
        )
    version = _latest_version(mine)
    if not version.isdigit():
        raise DataError(f"{name}:{version} is not a registry version number; cannot find its reference")
    reference = reference_for(Registry(home), name, int(version))
    return report_of(
        log, reference, model=name, version=version, window=window, alpha=alpha, max_windows=max_windows
    )


def report_of(
    log: PredictionLog,
    reference: MonitorReference,
    *,
    model: str,
    version: str,
    window: int = DEFAULT_WINDOW,
    alpha: float = 0.05,
    max_windows: int | None = None,
) -> MonitorReport:
    """The report of ``model:version`` in ``log`` against ``reference`` (what :func:`build_report` calls)."""
    windows = history(
        log, reference, model=model, version=version, window=window, alpha=alpha, max_windows=max_windows
    )
    if not windows:
        n = len(log.window(model, version=version))
        raise DataError(
            f"{model}:{version} has {n} logged requests, fewer than one window of {window}; "
            f"use --window {max(n, 1)} or less, or send more requests"
        )
    preds = log.window(model, version=version, last_n=window * len(windows))
    means: list[float | None] = []
    last = np.zeros(0)
    for i in range(len(windows)):
        chunk = preds[i * window : (i + 1) * window]
        conf = WindowRows.of(chunk, [], reference).confidence
        means.append(float(conf.mean()) if conf.size else None)
        last = conf
    p = reference.predictions
    return MonitorReport(
        model=model,
        version=version,
        window=window,
        alpha=alpha,
        windows=tuple(windows),
        mean_confidence=tuple(means),
        last_confidences=last,
        reference_confidences=None if p is None else np.asarray(p.confidence, dtype=np.float64),
        created_unix_s=time.time(),
    )


def write_report(report: MonitorReport, path: Path | str) -> Path:
    """Render ``report`` and write it to ``path`` atomically (temp file + rename); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, render_html(report))


# ---------------------------------------------------------------------------------------------- charts

Series = tuple[str, Sequence[float | None]]
Band = tuple[Sequence[float | None], Sequence[float | None]]

_W, _H, _L, _R, _T, _B = 640, 240, 56, 150, 14, 34


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _finite(v: float | None) -> TypeGuard[float]:
    return v is not None and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    bands: Sequence[Band | None] = (),
    dashed: Sequence[Series] = (),
    y_range: tuple[float, float] | None = None,
) -> str:
    """An SVG line chart over window indexes (1..n): solid ``series`` (with an optional interval ``band``
    each) and dashed reference lines (thresholds, offline figures). Missing values leave gaps."""
    every = [v for _, vals in (*series, *dashed) for v in vals if _finite(v)]
    every += [v for b in bands if b is not None for part in b for v in part if _finite(v)]
    n = max([len(vals) for _, vals in (*series, *dashed)] + [1])
    if not every:
        return f'<p class="none">{_e(title)}: no values</p>'
    lo, hi = y_range if y_range is not None else (min(every), max(every))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = (lo, hi) if y_range is not None else (lo - pad, hi + pad)
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(i: int) -> float:
        return _L + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return _T + ph * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>',
        f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(
            f'<line x1="{_L}" x2="{_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
            f'<text x="{_L - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{_e(_fmt(v))}</text>'
        )
    step = max(1, math.ceil(n / 10))
    for i in range(0, n, step):
        parts.append(
            f'<text x="{x(i):.1f}" y="{_H - _B + 16}" text-anchor="middle" class="tick">{i + 1}</text>'
        )
    parts.append(
        f'<text x="{_L + pw / 2}" y="{_H - 4}" text-anchor="middle" class="tick">window (oldest first)</text>'
    )

    def path(vals: Sequence[float | None]) -> str:
        d, pen = [], "M"
        for i, v in enumerate(vals):
            if _finite(v):
                d.append(f"{pen}{x(i):.1f},{y(min(max(v, lo), hi)):.1f}")
                pen = "L"
            else:
                pen = "M"
        return " ".join(d)

    legend: list[tuple[str, str, bool]] = []
    for j, (name, vals) in enumerate(series):
        colour = _COLOURS[j % len(_COLOURS)]
        band = bands[j] if j < len(bands) else None
        if band is not None:
            for i, (a, b) in enumerate(zip(band[0], band[1], strict=False)):
                if _finite(a) and _finite(b):
                    parts.append(
                        f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(max(a, lo)):.1f}" '
                        f'y2="{y(min(b, hi)):.1f}" stroke="{colour}" stroke-width="6" stroke-opacity="0.25"/>'
                    )
        parts.append(f'<path d="{path(vals)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, val in enumerate(vals):
            if _finite(val):
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(min(max(val, lo), hi)):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{_e(name)}, window {i + 1}: {_e(_fmt(val))}</title></circle>"
                )
        legend.append((name, colour, False))
    for j, (name, vals) in enumerate(dashed):
        colour = _COLOURS[(j + len(series)) % len(_COLOURS)] if len(dashed) > 1 else "#555"
        parts.append(
            f'<path d="{path(vals)}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5,4"/>'
        )
        legend.append((name, colour, True))
    for k, (name, colour, dash) in enumerate(legend):
        ly = _T + 12 + 16 * k
        style = ' stroke-dasharray="5,4"' if dash else ""
        parts.append(
            f'<line x1="{_W - _R + 8}" x2="{_W - _R + 26}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="2"{style}/><text x="{_W - _R + 30}" y="{ly}" class="legend">{_e(name[:22])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(
    title: str, samples: Sequence[tuple[str, NDArray[np.float64]]], *, bins: int = HIST_BINS
) -> str:
    """An SVG of the share of each sample in ``bins`` equal bins of [0, 1], side by side per bin."""
    samples = [(n, s[np.isfinite(s)]) for n, s in samples if s is not None and s.size]
    if not samples:
        return f'<p class="none">{_e(title)}: no values</p>'
    edges = np.linspace(0.0, 1.0, bins + 1)
    shares = [np.histogram(np.clip(s, 0.0, 1.0), bins=edges)[0] / s.size for _, s in samples]
    top = max(float(max(h.max() for h in shares)), 1e-9)
    pw, ph = _W - _L - _R, _H - _T - _B
    slot = pw / bins
    bar = slot / (len(samples) + 0.5)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>',
        f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for k in range(5):
        v = top * k / 4
        yv = _T + ph * (1 - k / 4)
        parts.append(f'<text x="{_L - 4}" y="{yv + 4:.1f}" text-anchor="end" class="tick">{v:.0%}</text>')
    for k in range(0, bins + 1, max(1, bins // 5)):
        parts.append(
            f'<text x="{_L + slot * k:.1f}" y="{_H - _B + 16}" text-anchor="middle" class="tick">'
            f"{edges[k]:.1f}</text>"
        )
    parts.append(f'<text x="{_L + pw / 2}" y="{_H - 4}" text-anchor="middle" class="tick">confidence</text>')
    for j, ((name, s), h) in enumerate(zip(samples, shares, strict=True)):
        colour = _COLOURS[j % len(_COLOURS)]
        for b in range(bins):
            height = ph * float(h[b]) / top
            parts.append(
                f'<rect x="{_L + slot * b + bar * (j + 0.25):.1f}" y="{_T + ph - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}" fill="{colour}" fill-opacity="0.8">'
                f"<title>{_e(name)}: {float(h[b]):.1%} in [{edges[b]:.2f}, {edges[b + 1]:.2f})</title></rect>"
            )
        ly = _T + 12 + 16 * j
        parts.append(
            f'<rect x="{_W - _R + 8}" y="{ly - 9}" width="18" height="10" fill="{colour}"/>'
            f'<text x="{_W - _R + 30}" y="{ly}" class="legend">{_e(f"{name} ({s.size})"[:22])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- the page


def _values(windows: Sequence[MonitorStatus], check: str, key: str | None = None) -> list[float | None]:
    out: list[float | None] = []
    for w in windows:
        s = w.signal(check)
        if s is None:
            out.append(None)
            continue
        v = s.measurement.value if key is None else s.measurement.details.get(key)
        out.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None)
    return out


def _interval(windows: Sequence[MonitorStatus], check: str) -> Band:
    lo: list[float | None] = []
    hi: list[float | None] = []
    for w in windows:
        s = w.signal(check)
        iv = None if s is None else s.measurement.interval
        lo.append(None if iv is None else iv[0])
        hi.append(None if iv is None else iv[1])
    return lo, hi


def _present(windows: Sequence[MonitorStatus], check: str) -> bool:
    return any(w.signal(check) is not None for w in windows)


def _feature_effects(windows: Sequence[MonitorStatus]) -> list[Series]:
    """The input features with the largest effect in any window (at most TOP_FEATURES), their effect per
    window (None where the window did not list it among its top ten)."""
    per: list[dict[str, float]] = []
    for w in windows:
        s = w.signal("drift.inputs")
        feats = [] if s is None else s.measurement.details.get("features") or []
        per.append({str(f["name"]): float(f["effect"]) for f in feats if isinstance(f, dict)})
    best: dict[str, float] = {}
    for effects in per:
        for name, v in effects.items():
            if math.isfinite(v):
                best[name] = max(best.get(name, -math.inf), v)
    top = sorted(best, key=lambda k: -best[k])[:TOP_FEATURES]
    return [(name, [effects.get(name) for effects in per]) for name in top]


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _section(title: str, body: str, note: str = "") -> str:
    text = f'<p class="note">{_e(note)}</p>' if note else ""
    return f"<section><h2>{_e(title)}</h2>{text}{body}</section>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.alarm{color:#b00020;font-weight:600}
.ok{color:#2e7d32}.note,.none{color:#666;font-size:.9em}.tick{font-size:10px;fill:#555}
.legend{font-size:11px;fill:#222}svg.chart{max-width:100%;height:auto;display:block;margin:.4em 0}
""".strip()


def render_html(report: MonitorReport) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no script, nothing fetched)."""
    ws = report.windows
    n_alarm = report.alarmed_windows
    verdict = (
        f'<span class="alarm">{n_alarm} of {len(ws)} windows with alarms</span>'
        if n_alarm
        else f'<span class="ok">no alarms in {len(ws)} windows</span>'
    )
    last = ws[-1]
    head = (
        f"<h1>Monitor report: {_e(report.label)}</h1>"
        f"<p>{len(ws)} consecutive windows of {report.window} requests, from {_e(_when(ws[0].first_unix_s))} "
        f"to {_e(_when(last.last_unix_s))} UTC; false-alarm rate {report.alpha:g} per window, shared among "
        f"the checks that can alarm. {verdict}. Latest window: {_e(last.summary())}</p>"
        f'<p class="note">Written {_e(_when(report.created_unix_s))} UTC by modelyard monitor report.</p>'
    )
    sections = []
    for check in DRIFT_CHECKS:
        if _present(ws, check):
            sections.append(
                _section(
                    f"{check}: max effect vs threshold",
                    line_chart(
                        check,
                        [("statistic", _values(ws, check))],
                        dashed=[("threshold", _values(ws, check, "threshold"))],
                    ),
                    "The largest per-feature effect of each window against the calibrated threshold at the "
                    "check's share of the false-alarm rate; above the line is an alarm (when the check may "
                    "alarm on that window).",
                )
            )
    effects = _feature_effects(ws)
    if effects:
        sections.append(
            _section(
                "Input drift: effect per feature",
                line_chart("input feature effects", effects),
                f"The {len(effects)} features with the largest effect in any window (standardised "
                "Wasserstein-1 for numeric features, Jensen-Shannon distance for categorical ones).",
            )
        )
    if _present(ws, "drift.ood_rate"):
        sections.append(
            _section(
                "OOD flag rate",
                line_chart(
                    "OOD flag rate",
                    [("window rate", _values(ws, "drift.ood_rate"))],
                    dashed=[("offline rate", _values(ws, "drift.ood_rate", "offline_rate"))],
                ),
            )
        )
    if _present(ws, "drift.mmd_p"):
        sections.append(
            _section(
                "MMD test (shown only)",
                line_chart(
                    "MMD p-value",
                    [("p-value", _values(ws, "drift.mmd_p"))],
                    dashed=[("alpha", [report.alpha] * len(ws))],
                    y_range=(0.0, 1.0),
                ),
            )
        )
    if any(m is not None for m in report.mean_confidence):
        sections.append(
            _section(
                "Confidence",
                line_chart("mean confidence", [("mean confidence", list(report.mean_confidence))])
                + histogram_chart(
                    "confidence: last window vs reference",
                    [
                        ("last window", report.last_confidences),
                        *(
                            [("reference", report.reference_confidences)]
                            if report.reference_confidences is not None
                            else []
                        ),
                    ],
                ),
                "Mean confidence per window; below, the share of the last window's confidences in each bin "
                "against the reference's.",
            )
        )
    acc_series: list[Series] = []
    acc_bands: list[Band | None] = []
    for check, label in (("accuracy.estimated", "estimated"), ("accuracy.realised", "realised")):
        if _present(ws, check):
            acc_series.append((label, _values(ws, check)))
            acc_bands.append(_interval(ws, check))
    if acc_series:
        offline = _values(ws, "accuracy.estimated", "offline_accuracy")
        sections.append(
            _section(
                "Accuracy: estimated before labels vs realised",
                line_chart(
                    "accuracy",
                    acc_series,
                    bands=acc_bands,
                    dashed=[("offline", offline)] if any(_finite(v) for v in offline) else [],
                ),
                "Points are the window's figure, bars its 95% interval; realised accuracy needs labels "
                "posted as feedback.",
            )
        )
    sections.append(_section("Alarms", _alarm_table(ws)))
    sections.append(_section("Windows", _window_table(ws)))
    notes = sorted({n for w in ws for n in w.notes})
    if notes:
        sections.append(_section("Notes", "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Monitor report: {_e(report.label)}</title><style>{_CSS}</style></head><body>"
        + head
        + "".join(sections)
        + "</body></html>\n"
    )


def _alarm_table(ws: Sequence[MonitorStatus]) -> str:
    rows = []
    for i, w in enumerate(ws, start=1):
        for a in w.alarms:
            moved = "; ".join(f"{f.name}: {f.detail}" for f in a.moved[:5]) or "-"
            rows.append(
                f"<tr><td>{i}</td><td>{_e(_when(w.last_unix_s))}</td><td>{_e(a.check)}</td>"
                f'<td class="alarm">{_e(a.message)}</td><td>{_e(moved)}</td></tr>'
            )
    if not rows:
        return '<p class="ok">No alarm in any window.</p>'
    return (
        "<table><tr><th>window</th><th>ends (UTC)</th><th>check</th><th>message</th><th>what moved</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _window_table(ws: Sequence[MonitorStatus]) -> str:
    checks = sorted({s.name for w in ws for s in w.signals})
    head = "".join(f"<th>{_e(c)}</th>" for c in checks)
    rows = []
    for i, w in enumerate(ws, start=1):
        cells = []
        for c in checks:
            s = w.signal(c)
            if s is None or s.measurement.value is None:
                cells.append("<td>-</td>")
                continue
            cls = ' class="alarm"' if s.alarm else ""
            cells.append(f'<td{cls} title="{_e(s.summary)}">{_e(_fmt(s.measurement.value))}</td>')
        rows.append(
            f"<tr><td>{i}</td><td>{_e(_when(w.first_unix_s))}</td><td>{w.requests}</td><td>{w.rows}</td>"
            + "".join(cells)
            + "</tr>"
        )
    return (
        f"<table><tr><th>window</th><th>starts (UTC)</th><th>requests</th><th>rows</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )
