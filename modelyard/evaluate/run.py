"""Measure the baseline and every candidate: the evidence suite, the security checks, efficiency, then
throughput re-timed round-robin across all candidates so they share the machine's drift.

Efficiency runs on the device of the policy's ``[hardware] target`` (``Candidate.load(device=...)``); a
candidate whose runtime cannot reach that device gets UNKNOWN efficiency figures with the reason, never
figures from another device. With two or more candidates, the final ``efficiency.throughput_best`` of each is
built from the interleaved rounds (at the batch size its own rounds found best: chosen on one set of rounds,
measured on another) and ``efficiency.cost_usd_per_1m`` is rebuilt from it by ``cost_measurement``; both are
new measurements that replace the sequential ones, whose figures stay in the details."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.config import Policy
from modelyard.data.dataset import Dataset
from modelyard.errors import DataError, ModelyardError
from modelyard.evaluate._inputs import tile
from modelyard.evaluate.checks import CheckContext, measurement_table, run_plugins
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.suite import Progress, SuiteInputs, no_progress
from modelyard.runtime.device import GPU_FIX, cpu_info, gpu_runtime, resolve_device


@dataclass
class EvalOptions:
    """How hard to measure. Tests shrink these; the defaults are what users get."""

    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    latency_calls: int = 200
    min_time_s: float = 0.5
    measure_rss: bool = True
    n_resamples: int = 2000
    backdoor_scan: bool = True
    data_audit: bool = True  # off: the data audit (duplicates, leakage, label issues) is skipped and said so

    @classmethod
    def quick(cls) -> EvalOptions:
        """The ``--quick`` preset: fewer batch sizes and timing repeats (faster, noisier efficiency figures)."""
        return cls(batch_sizes=(1, 32), latency_calls=50, min_time_s=0.15, n_resamples=1000)


def evaluate_candidates(
    baseline: Candidate,
    candidates: list[Candidate],
    dataset: Dataset,
    *,
    policy: Policy,
    price_usd_per_hour: float,
    options: EvalOptions,
    threads: int | None,
    audits: dict[str, Any] | None = None,
    ood_data: dict[str, Any] | None = None,
    ood_source: str | None = None,
    progress: Progress = no_progress,
    map_checks: MapChecks | None = None,
) -> tuple[dict[str, dict[str, Measurement]], dict[str, Any], dict[str, dict[str, Any]]]:
    """Every check on every candidate (baseline included), paired with the baseline; each candidate's
    predictions on each input set computed once. Returns the measurements, how the suite ran, and each
    candidate's serving rules (fitted temperature, OOD score and threshold, input contract).
    ``map_checks`` runs ``check_candidate`` over the candidates (default: here, one after another)."""
    from modelyard.evaluate import suite as S
    from modelyard.evaluate.compare import apply_holm
    from modelyard.evaluate.efficiency import measure_efficiency
    from modelyard.security.contract import input_contract

    task = baseline.spec.task
    everyone = [baseline, *candidates]
    device = policy.hardware.target
    audits = audits or {}
    if task == "classification" and dataset.y_test is None:
        raise DataError("a classifier needs test labels")
    inputs = S.prepare_inputs(
        baseline, dataset, policy, ood_data=ood_data, ood_source=ood_source, progress=progress
    )
    seconds = dict(inputs.seconds)
    progress("baseline: predicting every input set", 0.0)
    with S._timed(seconds, "predictions"):
        base = S.Predictions(baseline, threads=threads).all(inputs, dataset)
    clean_idx = audits.get("data", {}).get("clean_test_indices")
    backdoor = audits.get("model", {}).get("backdoor")
    unmet = S.unmet_needs(
        dataset, inputs, audited=clean_idx is not None, backdoor_scanned=backdoor is not None
    )
    shared = CheckInputs(
        baseline=baseline,
        dataset=dataset,
        policy=policy,
        inputs=inputs,
        base=base,
        unmet=unmet,
        clean_idx=clean_idx,
        backdoor=backdoor,
        num_classes=int(baseline.spec.num_classes or dataset.num_classes or base["test"].shape[1]),
        n_resamples=options.n_resamples,
        threads=threads,
    )
    # The deterministic checks of every candidate (in a Ray task each with --ray: see modelyard.scale), then
    # the timing checks here, on the machine that serves the candidate.
    checked = (map_checks or _map_locally)(shared, everyone, progress)
    results: dict[str, dict[str, Measurement]] = {}
    rules: dict[
        str, dict[str, Any]
    ] = {}  # per candidate: what the server applies (temperature, OOD, contract)
    sample = dataset.x_test[:64]
    for cand, (ms, serving, check_seconds) in zip(everyone, checked, strict=True):
        for key, value in check_seconds.items():
            seconds[key] = round(seconds.get(key, 0.0) + value, 3)
        rules[cand.name] = {**serving, "input_contract": input_contract(cand.spec)}
        progress(f"{cand.name}: speed and memory", 0.0)
        unreachable = _unreachable(cand, device)
        with S._timed(seconds, "efficiency"):
            ms.update(
                _unknown_efficiency(unreachable, device)
                if unreachable
                else measure_efficiency(
                    cand,
                    sample,
                    price_usd_per_hour=price_usd_per_hour,
                    batch_sizes=options.batch_sizes,
                    latency_calls=options.latency_calls,
                    min_time_s=options.min_time_s,
                    threads=threads,
                    measure_rss=options.measure_rss,
                    device=device,
                )
            )
        if unreachable:
            _record_cpu_runtime(ms, cand, threads)
        results[cand.name] = ms
        progress(f"{cand.name}: evaluated", 1.0)
    if task == "classification":
        apply_holm({c.name: results[c.name] for c in candidates})
    if len(everyone) > 1:
        progress("comparing throughput, interleaved", 0.0)
        with S._timed(seconds, "efficiency"):
            _interleaved_best(everyone, results, sample, price_usd_per_hour, options, threads, device)
    isa = cpu_info()["isa"]
    isa_text = ", ".join(flag for flag, on in isa.items() if on) or "no AVX2/AVX-512/VNNI/AMX"
    for ms in results.values():
        for name, m in ms.items():
            if name.startswith("efficiency."):
                m.details["cpu_isa"] = isa_text
    suite = {
        "seconds": seconds,
        "sample_sizes": inputs.sample_sizes,
        "calibration_split": inputs.cal_how,
        "ood_source": inputs.ood_source,
        "ood_sets": inputs.ood_names,
        "adversarial": inputs.adversarial or inputs.unknown.get("adversarial"),
    }
    return results, suite, rules


@dataclass
class CheckInputs:
    """What every candidate's deterministic checks share: built once per run (sent once to Ray workers)."""

    baseline: Candidate
    dataset: Dataset
    policy: Policy
    inputs: SuiteInputs
    base: dict[str, np.ndarray]
    unmet: dict[str, str]
    clean_idx: Any
    backdoor: dict[str, Any] | None
    num_classes: int
    n_resamples: int
    threads: int | None


# (measurements, serving rules, seconds per suite part) of one candidate's deterministic checks
CheckResult = tuple[dict[str, Measurement], dict[str, Any], dict[str, float]]
MapChecks = Callable[[CheckInputs, list[Candidate], Progress], list[CheckResult]]


def _map_locally(shared: CheckInputs, cands: list[Candidate], progress: Progress) -> list[CheckResult]:
    return [check_candidate(shared, cand, progress) for cand in cands]


def check_candidate(shared: CheckInputs, cand: Candidate, progress: Progress = no_progress) -> CheckResult:
    """Every check of ``cand`` that gives the same figures wherever it runs (quality, calibration, slices,
    robustness, OOD, plugins, security); the timing checks are left to ``evaluate_candidates``."""
    from modelyard.evaluate import suite as S
    from modelyard.evaluate.quality import classification_evidence, embedding_evidence
    from modelyard.security.audit import backdoor_measurement, candidate_scan_measurement

    dataset, inputs, base, unmet = shared.dataset, shared.inputs, shared.base, shared.unmet
    task = shared.baseline.spec.task
    is_baseline = cand.name == shared.baseline.name and cand.parent is None
    seconds: dict[str, float] = {}
    progress(f"{cand.name}: predictions", 0.0)
    with S._timed(seconds, "predictions"):
        preds = base if is_baseline else S.Predictions(cand, threads=shared.threads).all(inputs, dataset)
    progress(f"{cand.name}: quality, calibration, slices, robustness, OOD", 0.0)
    serving: dict[str, Any] = {"temperature": None, "ood": None}
    if task == "classification":
        assert dataset.y_test is not None
        with S._timed(seconds, "quality"):
            ms = classification_evidence(
                dataset.y_test,
                base["test"],
                preds["test"],
                num_classes=shared.num_classes,
                n_resamples=shared.n_resamples,
            )
        try:
            extra, serving = S.classification_checks(
                dataset.y_test,
                base,
                preds,
                inputs,
                num_classes=shared.num_classes,
                labels=dataset.classes,
                policy=shared.policy,
                slices=dataset.slices,
                clean_idx=shared.clean_idx,
                n_resamples=shared.n_resamples,
                seconds=seconds,
            )
            ms.update(extra)
        except Exception as exc:  # a check bug is UNKNOWN with its reason, never a crashed run
            ms.update(S.check_failed(task, unmet, exc))
    else:
        with S._timed(seconds, "quality"):
            ms = embedding_evidence(base["test"], preds["test"], dataset.pairs)
        try:
            ms.update(S.embedding_checks(base, preds, inputs, seconds=seconds))
        except Exception as exc:
            ms.update(S.check_failed(task, unmet, exc))
    context = CheckContext(
        task=task,
        candidate=cand.name,
        is_baseline=is_baseline,
        y=dataset.y_test,
        base=base,
        cand=preds,
        dataset=dataset,
        policy=shared.policy,
    )
    with S._timed(seconds, "plugins"):
        ms.update(run_plugins(context, ms, unmet))
    with S._timed(seconds, "security"):
        ms["security.file_scan"] = candidate_scan_measurement(cand)
        backdoor = shared.backdoor
        if task == "classification" and backdoor is not None:
            ok = backdoor.get("status") == "ok"
            ms["security.backdoor_flagged_classes"] = backdoor_measurement(
                backdoor if ok else None, reason=None if ok else backdoor.get("reason")
            )
    return ms, serving, seconds


def _unreachable(cand: Candidate, device: str) -> str | None:
    """Why ``cand``'s runtime cannot run on ``device`` here, or None when it can."""
    if resolve_device(device) == "cpu":
        return None
    status = gpu_runtime()
    if status.reaches(cand.format):
        return None
    runtime = "ONNX Runtime" if cand.format == "onnx" else "torch"
    why = status.note_for(cand.format)
    return f"not measured: the target is the GPU and {runtime} cannot run there ({why}); {GPU_FIX}"


def _record_cpu_runtime(ms: dict[str, Measurement], cand: Candidate, threads: int | None) -> None:
    """For a candidate not timed on the target: the runtime of the CPU Runner its checks ran on."""
    from modelyard.evaluate.efficiency import RUNTIME_KEY
    from modelyard.runtime.base import describe_runner

    try:
        runtime = describe_runner(cand.load(threads=threads))
    except ModelyardError:  # the checks already say why it does not load
        return
    runtime["settings"]["note"] = "the CPU Runner the checks ran on; not timed on the target device"
    ms["efficiency.load_time_s"].details[RUNTIME_KEY] = runtime


def _unknown_efficiency(reason: str, device: str) -> dict[str, Measurement]:
    """Every efficiency measurement UNKNOWN with ``reason``: the figures would come from another device."""
    return {
        name: measure(name, None, reason=reason, device=f"not loaded ({resolve_device(device)} unreachable)")
        for name in measurement_table()
        if name.startswith("efficiency.")
    }


def _interleaved_best(
    everyone: list[Candidate],
    results: dict[str, dict[str, Measurement]],
    sample: Any,
    price_usd_per_hour: float,
    options: EvalOptions,
    threads: int | None,
    device: str = "cpu",
) -> None:
    """Re-time every candidate's best-batch throughput round-robin, so all of them share the machine's drift
    (a shared machine is noisy). Each candidate's ``efficiency.throughput_best`` is replaced by a new
    measurement built from these rounds (median, order-statistic interval), with the sequential figure kept in
    its details, and ``efficiency.cost_usd_per_1m`` by ``cost_measurement`` of it: nothing is patched."""
    from modelyard.evaluate.efficiency import (
        THROUGHPUT_ROUNDS,
        cost_measurement,
        interleaved_throughput,
        runner_device,
        throughput_measurement,
    )
    from modelyard.evaluate.machine_load import OtherLoad

    runners = {}
    where: dict[str, dict[str, Any]] = {}
    for cand in everyone:
        best = results[cand.name].get("efficiency.throughput_best")
        if best is None or best.value is None:
            continue
        batch = int(best.details.get("best_batch") or 32)
        runner = cand.load(threads=threads, device=device)
        where[cand.name] = runner_device(runner)
        runners[cand.name] = (runner, cand.preprocessor()(tile(sample, batch)))
    if len(runners) < 2:
        return
    min_time_s = max(0.1, options.min_time_s / 2)
    meter = OtherLoad()
    start = meter.snapshot()
    rounds = interleaved_throughput(runners, rounds=THROUGHPUT_ROUNDS, min_time_s=min_time_s)
    load = meter.details_since(start)
    replaced = ("method", "rounds_items_per_s", "interval_method", "interval_coverage", "batch_selection")
    for name, per_round in rounds.items():
        seq = results[name]["efficiency.throughput_best"]
        kept = {k: v for k, v in seq.details.items() if k not in replaced}
        best = throughput_measurement(
            "efficiency.throughput_best",
            per_round,
            **{**kept, **where[name], **load},
            method=f"median of {THROUGHPUT_ROUNDS} rounds timed round-robin across all {len(runners)} "
            f"candidates at each one's best batch size (here {seq.details.get('best_batch')}), "
            f">= {min_time_s:g} s per round",
            batch_selection="the best batch size was chosen on the sequential rounds (curve, repeats); "
            "this figure comes from fresh rounds",
            sequential_items_per_s=seq.value,
            sequential_interval=list(seq.interval) if seq.interval is not None else None,
            sequential_method=seq.details.get("method"),
            sequential_rounds_items_per_s=seq.details.get("rounds_items_per_s"),
        )
        results[name]["efficiency.throughput_best"] = best
        results[name]["efficiency.cost_usd_per_1m"] = cost_measurement(
            best, price_usd_per_hour=price_usd_per_hour
        )
