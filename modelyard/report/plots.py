"""Plots for the report, each a function from plain data to PNG bytes.

matplotlib is imported inside the functions (it is slow to import) and figures are drawn on
``matplotlib.figure.Figure`` with the Agg canvas directly, so pyplot's global figure registry is never
touched and nothing leaks between calls.
"""

from __future__ import annotations

import io
import math
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


def _text(s: str) -> str:
    """Show a user string literally: matplotlib would read ``$...$`` as math."""
    return s.replace("$", r"\$")


def pareto_png(
    points: Sequence[tuple[str, float, float]],
    *,
    x_label: str,
    y_label: str,
    champion: str | None = None,
    frontier: Sequence[str] = (),
    failed: Sequence[str] = (),
) -> bytes:
    """Scatter of (name, x, y) points; the champion as a star, the frontier members joined by a line,
    candidates that did not pass their gates as grey crosses."""
    if not points:
        raise DataError("pareto_png needs at least one (name, x, y) point; got none")
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    xs = [p[1] for p in points]
    ok = [p for p in points if p[0] not in set(failed)]
    bad = [p for p in points if p[0] in set(failed)]
    if ok:
        ax.scatter([p[1] for p in ok], [p[2] for p in ok], s=40, color=_COLOR, zorder=3, label="passed gates")
    if bad:
        ax.scatter(
            [p[1] for p in bad],
            [p[2] for p in bad],
            s=50,
            marker="x",
            color="grey",
            zorder=3,
            label="failed gates",
        )
    front = sorted((p for p in points if p[0] in set(frontier)), key=lambda p: (p[1], p[2]))
    if front:
        ax.plot(
            [p[1] for p in front],
            [p[2] for p in front],
            color=_FRONTIER_COLOR,
            linestyle="--",
            marker="o",
            zorder=2,
            label="Pareto frontier",
        )
    for name, x, y in points:
        if name == champion:
            ax.scatter(
                [x],
                [y],
                s=260,
                marker="*",
                color=_CHAMPION_COLOR,
                edgecolor="black",
                zorder=4,
                label="champion",
            )
        ax.annotate(_text(name), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    positive = [x for x in xs if x > 0]
    if len(positive) == len(xs) and max(xs) / min(xs) > 50:
        ax.set_xscale("log")
    ax.set_xlabel(_text(x_label))
    ax.set_ylabel(_text(y_label))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


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
