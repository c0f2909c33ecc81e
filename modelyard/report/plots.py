"""Plots for the report, each a function from plain data to PNG bytes.

matplotlib is imported inside the functions (it is slow to import) and figures are drawn on
``matplotlib.figure.Figure`` with the Agg canvas directly, so pyplot's global figure registry is never
touched and nothing leaks between calls.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelyard.errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 96
_CHAMPION_COLOR = "#d4a017"
_COLOR = "#3b6ea5"
_FRONTIER_COLOR = "#9a3b3b"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" stamp: the same data gives the same bytes across matplotlib versions' metadata.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    return buf.getvalue()


def _svg(fig: Figure) -> bytes:
    import matplotlib

    buf = io.BytesIO()
    # Text as <text> (smaller, searchable); fixed ids and no date, so the same data gives the same bytes.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "modelyard"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    fig.clear()
    return buf.getvalue()


def _text(s: str) -> str:
    """Show a user string literally: matplotlib would read ``$...$`` as math."""
    return s.replace("$", r"\$")


# Fixed colours for the runtimes modelyard runs, so a runtime keeps its colour from one report to the next.
RUNTIME_COLORS = {"onnxruntime": "#3b6ea5", "openvino": "#7b3fa0", "torch": "#d9730d"}
_OTHER_RUNTIME_COLORS = ("#2a9d8f", "#8c564b", "#c2477f", "#17becf", "#8a8a00")
_NOT_RECORDED_COLOR = "#808080"
NOT_RECORDED = "not recorded"


def runtime_colors(runtimes: Sequence[str]) -> dict[str, str]:
    """A distinct colour per runtime name: fixed ones for onnxruntime, openvino and torch, then the others
    in name order from a second palette; grey for "not recorded"."""
    out: dict[str, str] = {}
    others = iter(itertools.cycle(_OTHER_RUNTIME_COLORS))
    for name in sorted(set(runtimes)):
        if name == NOT_RECORDED:
            out[name] = _NOT_RECORDED_COLOR
        else:
            out[name] = RUNTIME_COLORS.get(name) or next(others)
    return out


def runtime_gid(runtime: str) -> str:
    """The SVG group id of a runtime's points (``runtime-<name>``, lower case, dashes)."""
    return "runtime-" + (re.sub(r"[^a-z0-9]+", "-", runtime.lower()).strip("-") or "unnamed")


def _pareto_figure(
    points: Sequence[tuple[str, float, float]],
    *,
    x_label: str,
    y_label: str,
    champion: str | None,
    frontier: Sequence[str],
    failed: Sequence[str],
    runtimes: Mapping[str, str] | None,
) -> Figure:
    if not points:
        raise DataError("the Pareto plot needs at least one (name, x, y) point; got none")
    from matplotlib.lines import Line2D

    runtime_of = {name: (runtimes or {}).get(name, NOT_RECORDED) for name, _, _ in points}
    colors = runtime_colors(list(runtime_of.values()))
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    xs = [p[1] for p in points]
    handles: list[Any] = []
    for runtime, color in colors.items():
        mine = [p for p in points if runtime_of[p[0]] == runtime]
        ok = [p for p in mine if p[0] not in set(failed)]
        bad = [p for p in mine if p[0] in set(failed)]
        if ok:
            ax.scatter(
                [p[1] for p in ok], [p[2] for p in ok], s=40, color=color, zorder=3, gid=runtime_gid(runtime)
            )
        if bad:
            ax.scatter(
                [p[1] for p in bad],
                [p[2] for p in bad],
                s=50,
                marker="x",
                color=color,
                zorder=3,
                gid=runtime_gid(runtime) + "-failed",
            )
        handles.append(Line2D([], [], linestyle="", marker="o", color=color, label=_text(runtime)))
    if failed and any(p[0] in set(failed) for p in points):
        handles.append(Line2D([], [], linestyle="", marker="x", color="black", label="failed gates"))
    front = sorted((p for p in points if p[0] in set(frontier)), key=lambda p: (p[1], p[2]))
    if front:
        (line,) = ax.plot(
            [p[1] for p in front],
            [p[2] for p in front],
            color=_FRONTIER_COLOR,
            linestyle="--",
            marker="o",
            markerfacecolor="none",
            zorder=2,
            label="Pareto frontier",
        )
        handles.append(line)
    for name, x, y in points:
        if name == champion:
            star = ax.scatter(
                [x],
                [y],
                s=260,
                marker="*",
                color=_CHAMPION_COLOR,
                edgecolor="black",
                zorder=4,
                label="champion",
            )
            handles.append(star)
        ax.annotate(_text(name), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    positive = [x for x in xs if x > 0]
    if len(positive) == len(xs) and max(xs) / min(xs) > 50:
        ax.set_xscale("log")
    ax.set_xlabel(_text(x_label))
    ax.set_ylabel(_text(y_label))
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=8, title="runtime", title_fontsize=8)
    return fig


def pareto_png(
    points: Sequence[tuple[str, float, float]],
    *,
    x_label: str,
    y_label: str,
    champion: str | None = None,
    frontier: Sequence[str] = (),
    failed: Sequence[str] = (),
    runtimes: Mapping[str, str] | None = None,
) -> bytes:
    """Scatter of (name, x, y) points coloured by runtime (``runtimes``: name -> runtime; legend names
    each), the champion as a star, the frontier members joined by a dashed line, candidates that did not pass
    their gates as crosses."""
    return _png(
        _pareto_figure(
            points,
            x_label=x_label,
            y_label=y_label,
            champion=champion,
            frontier=frontier,
            failed=failed,
            runtimes=runtimes,
        )
    )


def pareto_svg(
    points: Sequence[tuple[str, float, float]],
    *,
    x_label: str,
    y_label: str,
    champion: str | None = None,
    frontier: Sequence[str] = (),
    failed: Sequence[str] = (),
    runtimes: Mapping[str, str] | None = None,
) -> bytes:
    """:func:`pareto_png` as SVG: each runtime's points in a group with id ``runtime_gid(runtime)`` (failed
    ones in ``<id>-failed``), text kept as text."""
    return _svg(
        _pareto_figure(
            points,
            x_label=x_label,
            y_label=y_label,
            champion=champion,
            frontier=frontier,
            failed=failed,
            runtimes=runtimes,
        )
    )


def reliability_png(panels: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> bytes:
    """One reliability diagram per (title, bins): accuracy bars per confidence bin, the gap to the mean
    confidence, and the diagonal. Each bin is ``{lo, hi, count, confidence, accuracy}``; empty bins are skipped."""
    if not panels:
        raise DataError("reliability_png needs at least one (title, bins) panel; got none")
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(2.7 * ncols, 2.7 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for i, (title, bins) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        for b in bins:
            if not isinstance(b, Mapping):
                continue
            lo, hi, acc, conf = (_num(b.get(k)) for k in ("lo", "hi", "accuracy", "confidence"))
            count = _num(b.get("count"))
            if lo is None or hi is None or acc is None or not count:
                continue
            ax.bar(lo, acc, width=hi - lo, align="edge", color=_COLOR, edgecolor="white", linewidth=0.5)
            if conf is not None:
                ax.bar(
                    lo,
                    abs(conf - acc),
                    bottom=min(conf, acc),
                    width=hi - lo,
                    align="edge",
                    color=_FRONTIER_COLOR,
                    alpha=0.35,
                    linewidth=0,
                )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(_text(title), fontsize=9)
        if i % ncols == 0:
            ax.set_ylabel("accuracy")
        if i // ncols == nrows - 1:
            ax.set_xlabel("confidence")
    for j in range(len(panels), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return _png(fig)


def latency_png(samples: Mapping[str, Sequence[float]], *, unit: str = "ms") -> bytes:
    """Box plot of latency samples per candidate (whiskers at 1.5 IQR, outliers as dots)."""
    data = {name: [float(v) for v in vals if _num(v) is not None] for name, vals in samples.items()}
    data = {name: vals for name, vals in data.items() if vals}
    if not data:
        raise DataError("latency_png needs at least one candidate with latency samples; got none")
    fig = _figure(max(4.0, 1.2 * len(data) + 2), 3.6)
    ax = fig.add_subplot()
    names = list(data)
    ax.boxplot(
        [data[n] for n in names], positions=list(range(1, len(names) + 1)), widths=0.5, manage_ticks=False
    )
    ax.set_xticks(list(range(1, len(names) + 1)))
    ax.set_xticklabels([_text(n) for n in names], rotation=20, ha="right", fontsize=8)
    lows = [min(v) for v in data.values()]
    if min(lows) > 0 and max(max(v) for v in data.values()) / min(lows) > 20:
        ax.set_yscale("log")
    ax.set_ylabel(f"batch-1 latency ({_text(unit)})")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def throughput_png(curves: Mapping[str, Mapping[Any, Any]]) -> bytes:
    """Throughput (items/s) against batch size, one line per candidate. Curve keys are batch sizes."""
    series: dict[str, list[tuple[float, float]]] = {}
    for name, curve in curves.items():
        pts = []
        for k, v in curve.items():
            b, y = _num(k), _num(v)
            if b is not None and y is not None and b > 0:
                pts.append((b, y))
        if pts:
            series[name] = sorted(pts)
    if not series:
        raise DataError("throughput_png needs at least one candidate with a throughput curve; got none")
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_text(name))
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted({p[0] for pts in series.values() for p in pts})))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items/s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def corruption_curves_png(curves: Mapping[str, Sequence[tuple[float, float]]]) -> bytes:
    """Mean accuracy over corruptions against severity, one line per candidate; severity 0 is clean accuracy."""
    series = {
        name: sorted(
            (s, a) for s, a in ((_num(p[0]), _num(p[1])) for p in pts) if s is not None and a is not None
        )
        for name, pts in curves.items()
    }
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        raise DataError(
            "corruption_curves_png needs at least one candidate with (severity, accuracy) points; got none"
        )
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_text(name))
    ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("mean accuracy over corruptions")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def ood_histograms_png(panels: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Small multiples, one per candidate: histograms of the OOD score for in-distribution and OOD inputs
    (each normalised to its own total), with the serving threshold as a vertical line when given.
    Each panel is ``{edges: [B+1], id: [B counts], ood: [B counts], threshold: float|None, score: str}``."""
    usable: list[tuple[str, list[float], dict[str, list[float]], float | None, Mapping[str, Any]]] = []
    for name, p in panels.items():
        raw = [_num(e) for e in p.get("edges") or []]
        edges = [e for e in raw if e is not None]
        if len(edges) < 2 or len(edges) != len(raw):
            continue
        hists = {}
        for key in ("id", "ood"):
            counts = [_num(c) or 0.0 for c in p.get(key) or []]
            total = sum(counts)
            if len(counts) == len(edges) - 1 and total > 0:
                hists[key] = [c / total for c in counts]
        if hists:
            usable.append((name, edges, hists, _num(p.get("threshold")), p))
    if not usable:
        raise DataError(
            "ood_histograms_png needs at least one candidate with histogram edges and counts; got none"
        )
    ncols = min(3, len(usable))
    nrows = math.ceil(len(usable) / ncols)
    fig = _figure(3.3 * ncols, 2.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (name, edges, hists, threshold, p) in enumerate(usable):
        ax = axes[i // ncols][i % ncols]
        widths = [b - a for a, b in itertools.pairwise(edges)]
        for key, color, label in (("id", _COLOR, "in-distribution"), ("ood", _FRONTIER_COLOR, "OOD")):
            if key in hists:
                ax.bar(
                    edges[:-1], hists[key], width=widths, align="edge", color=color, alpha=0.5, label=label
                )
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="serving threshold")
        ax.set_title(_text(name), fontsize=9)
        ax.set_xlabel(_text(f"{p.get('score') or 'score'} (larger = more OOD)"), fontsize=8)
        if i % ncols == 0:
            ax.set_ylabel("share of items")
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(usable), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return _png(fig)


def per_class_png(classes: Sequence[str], series: Mapping[str, Sequence[float | None]]) -> bytes:
    """Grouped bars of per-class recall, one bar per series (candidate) in each class group."""
    data = {name: [_num(x) for x in vals] for name, vals in series.items()}
    data = {name: vals for name, vals in data.items() if any(x is not None for x in vals)}
    if not classes or not data:
        raise DataError(
            "per_class_png needs classes and at least one candidate with per-class recall; got none"
        )
    fig = _figure(max(5.0, 0.35 * len(classes) * len(data) + 2), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(data)
    for j, (name, vals) in enumerate(data.items()):
        xs = [i + (j - (len(data) - 1) / 2) * width for i in range(len(classes))]
        ys = [(vals[i] if i < len(vals) else None) or 0.0 for i in range(len(classes))]
        ax.bar(xs, ys, width=width, label=_text(name))
    ax.set_xticks(list(range(len(classes))))
    ax.set_xticklabels([_text(str(c)) for c in classes], rotation=45 if len(classes) > 12 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("recall")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)
