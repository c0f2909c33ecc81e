"""The ship-a-model flow: baseline -> passes -> candidates -> checks -> evidence -> policy -> champion,
then report, model card and registry. The CLI and tests call ``run_pipeline``."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelyard import gate
from modelyard.candidate import Candidate
from modelyard.config import DEFAULT_PRICE_USD_PER_HOUR, PRICE_SOURCE, Policy, Settings
from modelyard.data.dataset import Dataset
from modelyard.errors import GateFailed, ModelyardError, PassSkipped, first_line
from modelyard.evaluate.efficiency import runtime_of
from modelyard.evaluate.evidence import Measurement
from modelyard.evaluate.run import EvalOptions, evaluate_candidates
from modelyard.evaluate.schema import CandidateEvidence, RunEvidence, VersionEvidence, validate_evidence
from modelyard.evaluate.suite import Progress, no_progress
from modelyard.optimize.recipes import get_pass, parse_recipe
from modelyard.optimize.registry import PassContext, config_to_dict
from modelyard.runtime.device import check_target, cpu_info, gpu_runtime
from modelyard.runtime.preprocess import predict
from modelyard.scale.executor import Executor


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    evidence: dict[str, Any]
    champion: str | None
    versions: dict[str, int] = field(default_factory=dict)
    model_name: str = ""
    alias_moved: bool = False  # the registry's champion alias now points at this run's champion

    @functools.cached_property
    def typed_evidence(self) -> RunEvidence:
        """The evidence as the typed schema (validated once)."""
        return validate_evidence(self.evidence)

    @property
    def outputs(self) -> dict[str, Path]:
        return {n: self.run_dir / n for n in ("evidence.json", "report.html", "MODEL_CARD.md")}

    def require_champion(self) -> str:
        """The champion's name; raises GateFailed (with every failed gate) when no candidate passed."""
        if self.champion is not None:
            return self.champion
        failed = [
            f"{c.name}: {', '.join(g.gate for g in c.verdict.gates if not g.passed)}"
            for c in self.typed_evidence.candidates
        ]
        raise GateFailed(
            f"no candidate passed the policy's gates ({'; '.join(failed)}); run {self.run_id} is registered "
            f"and the champion alias was not moved; outputs in {self.run_dir}"
        )


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:80] or "candidate"


def _step_label(step: str) -> str:
    return re.sub(r"\s+", "", step)


def _validate_candidate(
    cand: Candidate, parent: Candidate, dataset: Dataset, parent_outputs: dict[str, np.ndarray]
) -> str:
    """Load the produced candidate, run it on a few fit inputs and compare with its parent.

    ``parent_outputs`` caches each parent's outputs on that sample, so a parent shared by several recipes
    (the baseline, usually) is loaded and run once."""
    sample = dataset.fit_sample(16, seed=1)
    try:
        runner = cand.load()
        out = predict(runner, cand.preprocessor(), sample, batch_size=8)
    except ModelyardError as exc:
        raise PassSkipped(f"the produced model fails to load or run: {exc}") from None
    except Exception as exc:
        raise PassSkipped(f"the produced model fails to load or run: {first_line(exc, limit=200)}") from None
    if parent.name not in parent_outputs:
        parent_outputs[parent.name] = predict(parent.load(), parent.preprocessor(), sample, batch_size=8)
    ref = parent_outputs[parent.name]
    if out.shape != ref.shape:
        raise PassSkipped(f"the produced model gives outputs of shape {out.shape}, its parent {ref.shape}")
    if not np.all(np.isfinite(out)):
        raise PassSkipped("the produced model gives NaN or infinite outputs")
    if cand.spec.task == "classification":
        agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
        return f"checked against its parent on {len(sample)} fit inputs: top-1 agreement {agree:.3f}"
    a = out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    return f"checked against its parent on {len(sample)} fit inputs: mean cosine {float(np.mean(np.sum(a * b, 1))):.4f}"


def _prefixed(progress: Progress, prefix: str) -> Callable[[str], None]:
    def report(msg: str) -> None:
        progress(f"{prefix}: {msg}", 0.0)

    return report


def build_candidates(
    baseline: Candidate,
    dataset: Dataset,
    recipes: list[str],
    workdir: Path,
    *,
    policy: Policy,
    threads: int | None,
    progress: Progress = no_progress,
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Apply every recipe; shared prefixes are built once. Returns candidates and skipped steps with reasons."""
    parsed = [(r, parse_recipe(r)) for r in recipes]  # validates every recipe before any work
    built: dict[str, Candidate] = {}
    skipped: list[dict[str, str]] = []
    failed_prefixes: set[str] = set()
    parent_outputs: dict[str, np.ndarray] = {}
    out: list[Candidate] = []
    is_gpu = policy.hardware.target == "gpu" and gpu_runtime().usable
    for recipe, steps in parsed:
        parent = baseline
        prefix = ""
        labels = [_step_label(s) for s in recipe.split(">")]
        for (name, config), label in zip(steps, labels, strict=True):
            prefix = f"{prefix}>{label}" if prefix else label
            if prefix in failed_prefixes:
                break
            if prefix in built:
                parent = built[prefix]
                continue
            progress(f"{prefix}: running pass {name}", 0.0)
            info = get_pass(name)
            step_dir = workdir / _slug(prefix)
            if step_dir.exists():
                shutil.rmtree(step_dir)
            step_dir.mkdir(parents=True)
            ctx = PassContext(
                workdir=step_dir,
                dataset=dataset.fit_part(),
                threads=threads,
                fidelity=policy.fidelity_floors(),
                progress=_prefixed(progress, prefix),
                is_gpu=is_gpu,
            )
            try:
                t0 = time.perf_counter()
                made = info.fn(parent, config, ctx)
                made = replace(
                    made,
                    name=prefix,
                    parent=parent.name,
                    passes=[*parent.passes, config_to_dict(name, config)],
                    tokenizer_dir=made.tokenizer_dir or parent.tokenizer_dir,
                )
                made.notes.append(_validate_candidate(made, parent, dataset, parent_outputs))
                made.meta["pass_seconds"] = round(time.perf_counter() - t0, 2)
            except PassSkipped as exc:
                skipped.append({"recipe": recipe, "pass": prefix, "reason": str(exc)})
                failed_prefixes.add(prefix)
                progress(f"{prefix}: skipped ({exc})", 1.0)
                break
            except ModelyardError as exc:
                skipped.append({"recipe": recipe, "pass": prefix, "reason": f"failed: {exc}"})
                failed_prefixes.add(prefix)
                progress(f"{prefix}: failed ({exc})", 1.0)
                break
            except Exception as exc:  # a pass bug must not sink the run; the reason is reported
                skipped.append(
                    {
                        "recipe": recipe,
                        "pass": prefix,
                        "reason": f"failed: {type(exc).__name__}: {first_line(exc)}",
                    }
                )
                failed_prefixes.add(prefix)
                if os.environ.get("MODELYARD_DEBUG"):
                    traceback.print_exc()
                progress(f"{prefix}: failed ({type(exc).__name__})", 1.0)
                break
            built[prefix] = made
            out.append(made)
            parent = made
            progress(f"{prefix}: done", 1.0)
    return out, skipped


def assemble_evidence(
    *,
    run_id: str,
    model_name: str,
    model_source: str,
    baseline: Candidate,
    candidates: list[Candidate],
    dataset: Dataset,
    measurements: dict[str, dict[str, Measurement]],
    skipped: list[dict[str, str]],
    policy: Policy,
    price_usd_per_hour: float,
    price_source: str,
    audits: dict[str, Any] | None = None,
    suite: dict[str, Any] | None = None,
    serving: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    task = baseline.spec.task
    audits = audits or {}
    hw = cpu_info()
    rows = []
    for cand in [baseline, *candidates]:
        ms = {k: m.to_dict() for k, m in measurements[cand.name].items()}
        rows.append(
            {
                "name": cand.name,
                "parent": cand.parent,
                "format": cand.format,
                "runtime": runtime_of(measurements[cand.name]),
                "passes": cand.passes,
                "artifact_sha256": cand.artifact_sha256(),
                "size_bytes": cand.size_bytes(),
                "notes": cand.notes,
                "meta": {k: v for k, v in cand.meta.items() if k != "factory_kwargs"},
                "serving": (serving or {}).get(cand.name),
                "measurements": ms,
                "verdict": gate.verdict(measurements[cand.name], task, policy).model_dump(),
            }
        )
    typed = [CandidateEvidence.model_validate(row) for row in rows]
    champion, reason = gate.choose_champion(typed, task, policy)
    return {
        "schema": "modelyard.evidence/2",
        "run_id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": model_name, "task": task, "source": model_source, "spec": baseline.spec.to_dict()},
        "dataset": dataset.describe(),
        "hardware": {
            "cpu": hw["cpu"],
            "cores": hw["cores"],
            "machine": hw["machine"],
            "isa": hw["isa"],
            "int8_note": hw["int8_note"],
            "price_usd_per_hour": price_usd_per_hour,
            "price_source": price_source,
            "target": policy.hardware.target,
            "efficiency_device": _efficiency_device(measurements),
        },
        "policy": policy.to_dict(),
        "candidates": rows,
        "skipped": skipped,
        "champion": champion,
        "champion_reason": reason,
        "pareto": gate.pareto_front(typed, task),
        "audit": {"data": audits.get("data") or {}, "model": audits.get("model") or {}},
        "caveats": _caveats(audits, rows, dataset, suite or {}) + _contended_timing(measurements),
        "suite": {
            **(suite or {}),
            "seconds": {**(suite or {}).get("seconds", {}), **audits.get("seconds", {})},
        },
    }


def _fit_caveat(dataset: Dataset, suite: dict[str, Any]) -> str:
    """What was fitted on what: the fit part for passes and fitted checks, the test part for every figure."""
    n_cal = 0 if dataset.x_cal is None else len(dataset.x_cal)
    fit = f"{dataset.n_train} train" + (f" + {n_cal} calibration" if n_cal else "")
    cal = suite.get("calibration_split")
    return (
        f"fitted on the fit part ({fit} items): whatever the passes fit (quantization calibration, smoothing, "
        "the int8 sensitivity search and its floors check, fine-tuning)"
        + (
            f", temperature and OOD threshold ({cal})"
            if cal
            else (
                ", the kNN OOD reference and threshold"
                if dataset.y_test is None
                else "; temperature and OOD threshold not fitted (no calibration items)"
            )
        )
        + f"; every figure here is measured on the {dataset.n_test} test items, which nothing was fitted on "
        f"(test split: {dataset.split or 'given as separate items'})"
    )


def _caveats(
    audits: dict[str, Any], rows: list[dict[str, Any]], dataset: Dataset, suite: dict[str, Any]
) -> list[str]:
    """Sentences attached to every accuracy figure: what was fitted on what, and what the audits found that
    limits what a figure means."""
    out = [_fit_caveat(dataset, suite), *((audits.get("data") or {}).get("caveats") or [])]
    bd = (audits.get("model") or {}).get("backdoor") or {}
    if bd.get("flagged_classes"):
        out.append(
            "the backdoor scans flag the training data of class(es) "
            + ", ".join(map(str, bd["flagged_classes"]))
            + f" ({bd.get('n_suspicious', 0)} suspicious items): the model may have learned a trigger"
        )
    scan = (audits.get("model") or {}).get("scan") or {}
    if scan and scan.get("status") not in (None, "PASS"):
        out.append(
            f"the model file scan says {scan.get('status')}: {'; '.join(scan.get('findings') or [])[:300]}"
        )
    return out


def _contended_timing(measurements: dict[str, dict[str, Measurement]]) -> list[str]:
    """A caveat when speed figures were timed while other processes kept at least ``CONTENDED_CORES`` busy
    (each efficiency measurement records ``other_cores``): those figures, and the gate's and the server's
    choices made from them, reflect the neighbours as much as the model."""
    from modelyard.evaluate.machine_load import CONTENDED_CORES

    worst: dict[str, float] = {}
    for name, ms in measurements.items():
        for key, m in ms.items():
            other = m.details.get("other_cores") if key.startswith("efficiency.") else None
            if isinstance(other, int | float) and other >= CONTENDED_CORES:
                worst[name] = max(worst.get(name, 0.0), float(other))
    if not worst:
        return []
    each = ", ".join(f"{name} ({cores:.2f})" for name, cores in sorted(worst.items()))
    return [
        f"speed figures were timed while other processes kept cores busy (most, in cores: {each}); latency, "
        "throughput, cost and the batching the server picks from them may be off: rerun on a quiet machine"
    ]


def _efficiency_device(measurements: dict[str, dict[str, Measurement]]) -> str:
    """Which device the efficiency figures were taken on, from their details: one device ("cpu"), or each
    device with the candidates measured on it; "not recorded" when no figure says."""
    on: dict[str, list[str]] = {}
    for name, ms in measurements.items():
        for key, m in ms.items():
            device = m.details.get("device") if key.startswith("efficiency.") and m.status == "ok" else None
            if device and name not in on.setdefault(str(device), []):
                on[str(device)].append(name)
    if not on:
        return "not recorded"
    if len(on) == 1:
        return next(iter(on))
    return "; ".join(f"{device} ({', '.join(names)})" for device, names in sorted(on.items()))


def _int8_verdict_note(evidence: dict[str, Any]) -> None:
    """Say plainly whether int8 paid off on this device, from the final throughput of int8 candidates vs their
    parents: it pays off when it is at least 1.1x faster and the two throughput intervals do not overlap."""
    by_name = {c["name"]: c for c in evidence["candidates"]}
    lines = []
    for c in evidence["candidates"]:
        if not any(p["pass"].startswith("int8") for p in c["passes"][-1:]):
            continue
        parent = by_name.get(c["parent"] or "")
        m = c["measurements"].get("efficiency.throughput_best", {})
        pm = parent["measurements"].get("efficiency.throughput_best", {}) if parent else {}
        t, tp = m.get("value"), pm.get("value")
        if t and tp:
            ratio = t / tp
            iv, piv = m.get("interval"), pm.get("interval")
            overlap = bool(iv and piv and iv[0] <= piv[1] and piv[0] <= iv[1])
            if ratio < 1.1:
                verdict = "does not pay off here"
            elif overlap:
                verdict = "not clearly: the throughput intervals overlap"
            else:
                verdict = "pays off here"
            device = (m.get("details") or {}).get("device") or "this machine"
            lines.append(
                f"{c['name']}: {ratio:.2f}x the throughput of its fp32 parent {c['parent']} on {device} "
                f"({verdict})"
            )
    if lines:
        evidence["hardware"]["int8_measured"] = lines


def _with_serving(manifest: dict[str, Any], rules: dict[str, Any] | None) -> dict[str, Any]:
    """The registered manifest carries the serving rules in meta["serving"]; the Candidate is not changed."""
    return {**manifest, "meta": {**manifest.get("meta", {}), "serving": rules}}


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def run_pipeline(
    baseline: Candidate,
    dataset: Dataset,
    *,
    model_name: str,
    model_source: str,
    recipes: list[str],
    policy: Policy,
    settings: Settings,
    options: EvalOptions | None = None,
    register: bool = True,
    ood_data: dict[str, Any] | None = None,
    ood_source: str | None = None,
    progress: Progress = no_progress,
    move_champion: bool = True,
    executor: Executor | None = None,
) -> RunResult:
    """Audit the data and model, build candidates, measure them all, gate, choose the champion, write
    outputs, register versions. ``ood_data`` maps a set name to out-of-distribution inputs (default: the
    built-in set for a demo dataset). ``move_champion=False`` registers the run without moving the champion
    alias (``modelyard ship`` then starts a rollout instead). ``executor``: where builds and deterministic checks
    run (default: here; see ``modelyard.scale``)."""
    from modelyard.evaluate.audits import run_audits
    from modelyard.evaluate.suite import validate_ood_data
    from modelyard.gate import gates_for
    from modelyard.registry import VersionEntry
    from modelyard.registry.mlflow_backend import open_registry
    from modelyard.report import write_evidence, write_model_card, write_report

    options = options or EvalOptions()
    gates_for(policy)  # validate waivers before any work
    for r in recipes:
        parse_recipe(r)
    if ood_data is not None:
        validate_ood_data(ood_data, dataset)
    dataset.fit_inputs()  # no fit items: refused here (fitted quantities never use test items)
    check_target(policy.hardware.target)  # a GPU target on a machine without a GPU runtime: refused here
    home = settings.home
    run_id = new_run_id()
    price = settings.price_usd_per_hour or policy.hardware.price_usd_per_hour
    price_source = (
        "MODELYARD_PRICE_USD_PER_HOUR"
        if settings.price_usd_per_hour
        else (
            "policy [hardware] price_usd_per_hour"
            if policy.hardware.price_usd_per_hour != DEFAULT_PRICE_USD_PER_HOUR
            else PRICE_SOURCE
        )
    )
    work = home / "tmp" / run_id
    work.mkdir(parents=True, exist_ok=True)
    staging = home / "runs" / f".{run_id}.partial"
    try:
        audits = run_audits(
            baseline,
            dataset,
            progress=progress,
            data_audit=options.data_audit,
            backdoor_scan=options.backdoor_scan,
        )
        build = build_candidates if executor is None else executor.build_candidates
        candidates, skipped = build(
            baseline, dataset, recipes, work, policy=policy, threads=settings.threads, progress=progress
        )
        measurements, suite, serving = evaluate_candidates(
            baseline,
            candidates,
            dataset,
            policy=policy,
            audits=audits,
            ood_data=ood_data,
            ood_source=ood_source,
            price_usd_per_hour=price,
            options=options,
            threads=settings.threads,
            progress=progress,
            map_checks=None if executor is None else executor.map_checks,
        )
        if executor is not None and executor.describe() is not None:
            suite["executor"] = executor.describe()
        evidence = assemble_evidence(
            run_id=run_id,
            model_name=model_name,
            model_source=model_source,
            baseline=baseline,
            candidates=candidates,
            dataset=dataset,
            measurements=measurements,
            skipped=skipped,
            policy=policy,
            price_usd_per_hour=price,
            price_source=price_source,
            audits=audits,
            suite=suite,
            serving=serving,
        )
        _int8_verdict_note(evidence)
        typed = validate_evidence(evidence)
        # Outputs are written into a temporary folder and renamed into place: all or nothing.
        staging.mkdir(parents=True, exist_ok=True)
        write_evidence(evidence, staging)
        write_report(evidence, staging)
        write_model_card(evidence, staging)
        versions: dict[str, int] = {}
        if register:
            progress("registering versions", 0.0)
            from modelyard.monitor.reference import FILE_NAME as REFERENCE_FILE
            from modelyard.monitor.reference import write_reference
            from modelyard.monitor.reference_build import build_reference
            from modelyard.security.trust import version_trust

            rows = {c["name"]: c for c in evidence["candidates"]}
            typed_rows = {c.name: c for c in typed.candidates}
            entries = []
            for cand in [baseline, *candidates]:
                base = cand.path if cand.path.is_dir() else cand.path.parent
                files = {str(p.relative_to(base)): p for p in cand.files()}
                if cand.tokenizer_dir is not None and cand.tokenizer_dir != cand.path:
                    for p in sorted(cand.tokenizer_dir.glob("*")):
                        if p.is_file() and p.suffix in (".json", ".txt"):
                            files.setdefault(f"tokenizer/{p.name}", p)
                row = rows[cand.name]
                typed_row = typed_rows[cand.name]
                # What served traffic is compared with (fit items only): see modelyard.monitor.reference.
                progress(f"{cand.name}: monitor reference", 0.0)
                reference = build_reference(
                    cand, dataset, serving=serving.get(cand.name), measurements=typed_row.measurements
                )
                files[REFERENCE_FILE] = write_reference(
                    reference, work / "monitor" / _slug(cand.name) / REFERENCE_FILE
                )
                manifest = _with_serving(cand.to_dict(), serving.get(cand.name))
                # The trust decision that let the baseline in goes with every version that still needs the
                # pickle or the factory to load; ONNX and Hugging Face versions carry none.
                trust = version_trust(
                    cand.format, cand.meta, baseline_name=baseline.name, baseline_meta=baseline.meta
                )
                manifest["meta"] = {k: v for k, v in manifest["meta"].items() if k != "trust"}
                if trust is not None:
                    manifest["meta"]["trust"] = trust
                entries.append(
                    VersionEntry(
                        name=cand.name,
                        files=files,
                        manifest=manifest,
                        evidence=VersionEvidence.of(typed_row, run_id),
                        parent=cand.parent,
                        passes=cand.passes,
                        data_sha256=evidence["dataset"]["fingerprint_sha256"],
                        artifact_sha256=row["artifact_sha256"],
                    )
                )
            versions = open_registry(settings).register_run(
                model_name,
                entries,
                run_id=run_id,
                champion=evidence["champion"],
                reason=f"run {run_id}: {evidence['champion_reason']}",
                move_champion=move_champion,
            )
        final = home / "runs" / run_id
        os.replace(staging, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(home / "tmp")
    moved = bool(versions) and evidence["champion"] is not None and move_champion
    return RunResult(run_id, final, evidence, evidence["champion"], versions, model_name, alias_moved=moved)
