"""Rendering for the terminal: the CLI's consoles, a run's candidates table, checks beyond accuracy, audits
and outputs, and a served version's monitor status."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from modelyard.evaluate.schema import Measurement, RunEvidence

if TYPE_CHECKING:
    from modelyard.monitor.signals import Signal
    from modelyard.monitor.watch import MonitorStatus

# Tables are wide; when output is not a terminal (CI logs, pipes) do not squeeze them into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
# `serve` prints its one start-up line with Rich's default width (80 columns when not a terminal).
serve_console = Console()


def _ends(m: Measurement) -> tuple[float, float] | None:
    if m.interval is None or m.interval[0] is None or m.interval[1] is None:
        return None
    return m.interval[0], m.interval[1]


def _fmt(m: Measurement | None, kind: str = "g") -> str:
    if m is None or m.value is None:
        return "unknown"
    v = m.value
    ends = _ends(m)
    if kind == "pct":
        s = f"{100 * v:.2f}%"
        if ends:
            s += f" [{100 * ends[0]:.1f}, {100 * ends[1]:.1f}]"
        return s
    if kind == "bytes":
        return f"{v / 1024:.0f} KB" if v < 2**20 else f"{v / 2**20:.1f} MB"
    if kind == "int":
        s = f"{v:,.0f}"
        if ends:
            s += f" [{ends[0]:,.0f}, {ends[1]:,.0f}]"
        return s
    if kind == "usd":
        return f"${v:.4f}"
    return f"{v:.4g}"


def _candidates_table(evidence: RunEvidence) -> Table:
    task = evidence.model.task
    table = Table(title=f"{evidence.model.name} — run {evidence.run_id}", show_lines=False)
    cols = ["candidate"]
    if task == "classification":
        cols += ["accuracy [95% CI]", "drop (pts)", "flips", "ECE"]
    else:
        cols += ["cosine mean", "cosine p5", "top-10 agree", "recall@1"]
    cols += ["p50 ms", "items/s (best) [95% CI]", "size", "$/1M", "verdict"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("candidate", "verdict") else "right")
    for c in evidence.candidates:
        m = c.measurements
        if task == "classification":
            q = [
                _fmt(m.get("quality.accuracy"), "pct"),
                _fmt(m.get("compare.accuracy_drop")),
                _fmt(m.get("compare.flip_rate"), "pct").split(" ")[0],
                _fmt(m.get("calibration.ece")),
            ]
        else:
            q = [
                _fmt(m.get("quality.cosine_mean")),
                _fmt(m.get("quality.cosine_p5")),
                _fmt(m.get("quality.top10_agreement")),
                _fmt(m.get("quality.paraphrase_recall_at_1")),
            ]
        failed = [g.gate for g in c.verdict.gates if not g.passed]
        verdict = "[green]pass[/]" if c.verdict.passed else f"[red]fail[/] ({', '.join(failed)})"
        name = c.name + (" [bold yellow]★[/]" if c.name == evidence.champion else "")
        table.add_row(
            name,
            *q,
            _fmt(m.get("efficiency.latency_p50_ms")),
            _fmt(m.get("efficiency.throughput_best"), "int"),
            _fmt(m.get("efficiency.size_bytes"), "bytes"),
            _fmt(m.get("efficiency.cost_usd_per_1m"), "usd"),
            verdict,
        )
    return table


def _checks_table(evidence: RunEvidence) -> Table:
    """The checks beyond accuracy and speed, one row per candidate."""
    task = evidence.model.task
    table = Table(title="beyond accuracy (against the baseline)")
    if task == "classification":
        cols = [
            ("neg. flips", "compare.negative_flip_rate", "pct"),
            ("KL nats", "compare.kl_mean", "g"),
            ("worst-class drop", "slices.worst_class_drop", "g"),
            ("ECE after T", "calibration.ece_calibrated", "g"),
            ("T", "calibration.temperature", "g"),
            ("corrupt. acc", "robustness.corruption_accuracy", "pct"),
            ("rel. mCE", "robustness.relative_mce", "g"),
            ("consistency", "robustness.consistency", "pct"),
            ("PGD acc", "robustness.adversarial_accuracy", "pct"),
            ("OOD AUROC", "ood.auroc", "g"),
            ("scan", "security.file_scan", "scan"),
        ]
    else:
        cols = [
            ("perturbation cosine", "robustness.perturbation_cosine", "g"),
            ("OOD AUROC", "ood.auroc", "g"),
            ("OOD FPR@95", "ood.fpr95", "g"),
            ("scan", "security.file_scan", "scan"),
        ]
    table.add_column("candidate")
    for title, _, _ in cols:
        table.add_column(title, justify="right")
    for c in evidence.candidates:
        m = c.measurements
        cells = []
        for _, key, kind in cols:
            if kind == "scan":
                scan = m.get(key)
                v = None if scan is None else scan.value
                cells.append("unknown" if v is None else ("PASS" if v >= 1 else "[red]FAIL[/]"))
            else:
                cells.append(_fmt(m.get(key), kind).split(" ")[0])
        table.add_row(c.name, *cells)
    return table


def _section(audit: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    part = audit.get(key)
    return part if isinstance(part, Mapping) else {}


def _render_audits(ev: RunEvidence) -> None:
    data = _section(ev.audit, "data")
    leak = data.get("leakage") or {}
    li = data.get("label_issues") or {}
    bits = []
    if leak and leak.get("applies", True):
        bits.append(f"leakage {100 * float(leak.get('near_fraction') or 0):.1f}% of test items")
    if li.get("status") == "ok":
        bits.append(f"label issues ~{100 * float(li.get('estimated_error_rate') or 0):.1f}%")
    model_audit = _section(ev.audit, "model")
    bd = _section(model_audit, "backdoor")
    if bd.get("status") == "ok":
        bits.append(
            "backdoor scans: " + (", ".join(map(str, bd.get("flagged_classes") or [])) or "no class flagged")
        )
    scan = _section(model_audit, "scan")
    if scan:
        bits.append(f"model file scan {scan.get('status')}")
    if bits:
        console.print("[dim]audit[/] " + "; ".join(bits))
    for c in ev.caveats:
        console.print(f"[yellow]caveat[/] {c}")


def render_run(result: Any) -> None:
    """A run (``pipeline.RunResult``) for the terminal, from its typed evidence."""
    ev: RunEvidence = result.typed_evidence
    console.print(_candidates_table(ev))
    console.print(_checks_table(ev))
    _render_audits(ev)
    for s in ev.skipped:
        console.print(f"[dim]skipped[/] {s.pass_}: {s.reason}")
    hw = ev.hardware
    for line in hw.int8_measured or []:
        console.print(f"[dim]int8[/] {line}")
    isa = ", ".join(k for k, v in hw.isa.items() if v) or "none of AVX2/AVX-512/VNNI/AMX"
    on = f"; speed and cost measured on {hw.efficiency_device}" if hw.efficiency_device else ""
    console.print(f"[dim]CPU[/] {hw.cpu} ({hw.cores} cores; {isa}){on}")
    if result.champion:
        console.print(f"[bold]champion:[/] {result.champion} — {ev.champion_reason}")
    else:
        console.print(f"[bold red]no champion:[/] {ev.champion_reason}")
        for c in ev.candidates:
            for g in c.verdict.gates:
                if not g.passed:
                    console.print(f"[red]failed[/] {c.name}: {g.gate}: {g.reason}")
    console.print(f"outputs: {result.run_dir}/ (report.html, MODEL_CARD.md, evidence.json)")
    if result.versions:
        shown = ", ".join(f"{n}=v{v}" for n, v in result.versions.items())
        console.print(
            f"registry: {result.model_name} {shown}" + (" (alias champion set)" if result.alias_moved else "")
        )


def _live_value(sig: Signal) -> str:
    m = sig.measurement
    if m.value is None:
        return "unknown"
    if m.unit == "fraction":
        text = f"{100 * m.value:.1f}%"
        if m.interval is not None:
            text += f" [{100 * m.interval[0]:.1f}, {100 * m.interval[1]:.1f}]"
        return text
    if m.unit == "points":
        return f"{m.value:+.1f} points"
    return f"{m.value:.3g}" + (f" {m.unit}" if m.unit in ("sd",) else "")


def render_status(status: MonitorStatus) -> None:
    """One served version's window: a row per live check, then the alarms naming what moved, then notes."""
    title = f"{status.label}: last {status.requests} requests ({status.rows} rows; window {status.window})"
    table = Table(title=title, title_justify="left")
    for column in ("check", "value", "compared with", "tested at", "alarm"):
        table.add_column(column)
    for sig in status.signals:
        alarm = "shown only" if sig.alarm is None else ("[bold red]ALARM[/]" if sig.alarm else "ok")
        level = "" if sig.level is None else f"{sig.level:.3g}"
        table.add_row(sig.name, _live_value(sig), sig.compared_with, level, alarm)
    console.print(table)
    for a in status.alarms:
        console.print(f"[bold red]alarm[/] {a.check}: {a.message}", highlight=False, soft_wrap=True)
    for note in status.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False, soft_wrap=True)
