"""Rendering for the terminal: the CLI's consoles, and a run's candidates table, checks beyond accuracy,
audits and outputs."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

# Tables are wide; when output is not a terminal (CI logs, pipes) do not squeeze them into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
# `serve` prints its one start-up line with Rich's default width (80 columns when not a terminal).
serve_console = Console()


def _fmt(m: dict[str, Any] | None, kind: str = "g") -> str:
    if not m or m.get("value") is None:
        return "unknown"
    v = float(m["value"])
    if kind == "pct":
        s = f"{100 * v:.2f}%"
        if m.get("interval"):
            lo, hi = m["interval"]
            s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
        return s
    if kind == "bytes":
        return f"{v / 1024:.0f} KB" if v < 2**20 else f"{v / 2**20:.1f} MB"
    if kind == "int":
        s = f"{v:,.0f}"
        if m.get("interval"):
            lo, hi = m["interval"]
            s += f" [{lo:,.0f}, {hi:,.0f}]"
        return s
    if kind == "usd":
        return f"${v:.4f}"
    return f"{v:.4g}"


def _candidates_table(evidence: dict[str, Any]) -> Table:
    task = evidence["model"]["task"]
    table = Table(title=f"{evidence['model']['name']} — run {evidence['run_id']}", show_lines=False)
    cols = ["candidate"]
    if task == "classification":
        cols += ["accuracy [95% CI]", "drop (pts)", "flips", "ECE"]
    else:
        cols += ["cosine mean", "cosine p5", "top-10 agree", "recall@1"]
    cols += ["p50 ms", "items/s (best) [95% CI]", "size", "$/1M", "verdict"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("candidate", "verdict") else "right")
    for c in evidence["candidates"]:
        m = c["measurements"]
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
        failed = [g["gate"] for g in c["verdict"]["gates"] if not g["passed"]]
        verdict = "[green]pass[/]" if c["verdict"]["passed"] else f"[red]fail[/] ({', '.join(failed)})"
        name = c["name"] + (" [bold yellow]★[/]" if c["name"] == evidence["champion"] else "")
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


def _checks_table(evidence: dict[str, Any]) -> Table:
    """The checks beyond accuracy and speed, one row per candidate."""
    task = evidence["model"]["task"]
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
    for c in evidence["candidates"]:
        m = c["measurements"]
        cells = []
        for _, key, kind in cols:
            if kind == "scan":
                v = (m.get(key) or {}).get("value")
                cells.append("unknown" if v is None else ("PASS" if v >= 1 else "[red]FAIL[/]"))
            else:
                cells.append(_fmt(m.get(key), kind).split(" ")[0])
        table.add_row(c["name"], *cells)
    return table


def _render_audits(ev: dict[str, Any]) -> None:
    data = (ev.get("audit") or {}).get("data") or {}
    leak = data.get("leakage") or {}
    li = data.get("label_issues") or {}
    bits = []
    if leak and leak.get("applies", True):
        bits.append(f"leakage {100 * float(leak.get('near_fraction') or 0):.1f}% of test items")
    if li.get("status") == "ok":
        bits.append(f"label issues ~{100 * float(li.get('estimated_error_rate') or 0):.1f}%")
    bd = ((ev.get("audit") or {}).get("model") or {}).get("backdoor") or {}
    if bd.get("status") == "ok":
        bits.append(
            "backdoor scans: " + (", ".join(map(str, bd.get("flagged_classes") or [])) or "no class flagged")
        )
    scan = ((ev.get("audit") or {}).get("model") or {}).get("scan") or {}
    if scan:
        bits.append(f"model file scan {scan.get('status')}")
    if bits:
        console.print("[dim]audit[/] " + "; ".join(bits))
    for c in ev.get("caveats") or []:
        console.print(f"[yellow]caveat[/] {c}")


def render_run(result: Any) -> None:
    ev = result.evidence
    console.print(_candidates_table(ev))
    console.print(_checks_table(ev))
    _render_audits(ev)
    for s in ev["skipped"]:
        console.print(f"[dim]skipped[/] {s['pass']}: {s['reason']}")
    for line in ev["hardware"].get("int8_measured", []):
        console.print(f"[dim]int8[/] {line}")
    isa = ", ".join(k for k, v in ev["hardware"]["isa"].items() if v) or "none of AVX2/AVX-512/VNNI/AMX"
    device = ev["hardware"].get("efficiency_device")
    on = f"; speed and cost measured on {device}" if device else ""
    console.print(f"[dim]CPU[/] {ev['hardware']['cpu']} ({ev['hardware']['cores']} cores; {isa}){on}")
    if result.champion:
        console.print(f"[bold]champion:[/] {result.champion} — {ev['champion_reason']}")
    else:
        console.print(f"[bold red]no champion:[/] {ev['champion_reason']}")
        for c in ev["candidates"]:
            for g in c["verdict"]["gates"]:
                if not g["passed"]:
                    console.print(f"[red]failed[/] {c['name']}: {g['gate']}: {g.get('reason', '')}")
    console.print(f"outputs: {result.run_dir}/ (report.html, MODEL_CARD.md, evidence.json)")
    if result.versions:
        shown = ", ".join(f"{n}=v{v}" for n, v in result.versions.items())
        console.print(
            f"registry: {result.model_name} {shown}" + (" (alias champion set)" if result.champion else "")
        )
