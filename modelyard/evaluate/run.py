"""Measure the baseline and every candidate: the evidence suite, the security checks, efficiency, then
throughput re-timed round-robin across all candidates so they share the machine's drift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.config import Policy
from modelyard.data.dataset import Dataset
from modelyard.errors import DataError
from modelyard.evaluate.evidence import Measurement
from modelyard.evaluate.suite import Progress, no_progress
from modelyard.optimize.candidate import Candidate
from modelyard.runtime.device import cpu_info


@dataclass
class EvalOptions:
    """How hard to measure. Tests shrink these; the defaults are what users get."""

    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    latency_calls: int = 200
    min_time_s: float = 0.5
    measure_rss: bool = True
    n_resamples: int = 2000
    backdoor_scan: bool = True


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
) -> tuple[dict[str, dict[str, Measurement]], dict[str, Any], dict[str, dict[str, Any]]]:
    """Every check on every candidate (baseline included), paired with the baseline; each candidate's
    predictions on each input set computed once. Returns the measurements, how the suite ran, and each
    candidate's serving rules (fitted temperature, OOD score and threshold, input contract)."""
    from modelyard.evaluate import suite as S
    from modelyard.evaluate.compare import apply_holm
    from modelyard.evaluate.efficiency import measure_efficiency
    from modelyard.evaluate.quality import classification_evidence, embedding_evidence
    from modelyard.security.audit import backdoor_measurement, candidate_scan_measurement
    from modelyard.security.contract import input_contract

    task = baseline.spec.task
    everyone = [baseline, *candidates]
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
    results: dict[str, dict[str, Measurement]] = {}
    rules: dict[
        str, dict[str, Any]
    ] = {}  # per candidate: what the server applies (temperature, OOD, contract)
    sample = dataset.x_test[:64]
    k = int(baseline.spec.num_classes or dataset.num_classes or base["test"].shape[1])
    for cand in everyone:
        progress(f"{cand.name}: predictions", 0.0)
        with S._timed(seconds, "predictions"):
            preds = base if cand is baseline else S.Predictions(cand, threads=threads).all(inputs, dataset)
        progress(f"{cand.name}: quality, calibration, slices, robustness, OOD", 0.0)
        serving: dict[str, Any] = {"temperature": None, "ood": None}
        if task == "classification":
            assert dataset.y_test is not None
            with S._timed(seconds, "quality"):
                ms = classification_evidence(
                    dataset.y_test,
                    base["test"],
                    preds["test"],
                    num_classes=k,
                    n_resamples=options.n_resamples,
                )
            try:
                extra, serving = S.classification_checks(
                    dataset.y_test,
                    base,
                    preds,
                    inputs,
                    num_classes=k,
                    labels=dataset.classes,
                    policy=policy,
                    slices=dataset.slices,
                    clean_idx=clean_idx,
                    n_resamples=options.n_resamples,
                    seconds=seconds,
                )
                ms.update(extra)
            except Exception as exc:  # a check bug is UNKNOWN with its reason, never a crashed run
                ms.update(S.check_failed(S.CLASSIFIER_CHECKS, exc))
        else:
            with S._timed(seconds, "quality"):
                ms = embedding_evidence(base["test"], preds["test"], dataset.pairs)
            try:
                ms.update(S.embedding_checks(base, preds, inputs, seconds=seconds))
            except Exception as exc:
                ms.update(S.check_failed(S.EMBEDDER_CHECKS, exc))
        with S._timed(seconds, "security"):
            ms["security.file_scan"] = candidate_scan_measurement(cand)
            if task == "classification" and backdoor is not None:
                ok = backdoor.get("status") == "ok"
                ms["security.backdoor_flagged_classes"] = backdoor_measurement(
                    backdoor if ok else None, reason=None if ok else backdoor.get("reason")
                )
        rules[cand.name] = {**serving, "input_contract": input_contract(cand.spec)}
        progress(f"{cand.name}: speed and memory", 0.0)
        with S._timed(seconds, "efficiency"):
            ms.update(
                measure_efficiency(
                    cand,
                    sample,
                    price_usd_per_hour=price_usd_per_hour,
                    batch_sizes=options.batch_sizes,
                    latency_calls=options.latency_calls,
                    min_time_s=options.min_time_s,
                    threads=threads,
                    measure_rss=options.measure_rss,
                )
            )
        isa = cpu_info()["isa"]
        isa_text = ", ".join(flag for flag, on in isa.items() if on) or "no AVX2/AVX-512/VNNI/AMX"
        for name, m in ms.items():
            if name.startswith("efficiency."):
                m.details["cpu_isa"] = isa_text
        results[cand.name] = ms
        progress(f"{cand.name}: evaluated", 1.0)
    if task == "classification":
        apply_holm({c.name: results[c.name] for c in candidates})
    if len(everyone) > 1:
        progress("comparing throughput, interleaved", 0.0)
        with S._timed(seconds, "efficiency"):
            _interleaved_best(everyone, results, sample, price_usd_per_hour, options, threads)
    suite = {
        "seconds": seconds,
        "sample_sizes": inputs.sample_sizes,
        "calibration_split": inputs.cal_how,
        "ood_source": inputs.ood_source,
        "ood_sets": inputs.ood_names,
        "adversarial": inputs.adversarial or inputs.unknown.get("adversarial"),
    }
    return results, suite, rules


def _tile(x: Any, n: int) -> Any:
    idx = [i % len(x) for i in range(n)]
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def _interleaved_best(
    everyone: list[Candidate],
    results: dict[str, dict[str, Measurement]],
    sample: Any,
    price_usd_per_hour: float,
    options: EvalOptions,
    threads: int | None,
) -> None:
    """Re-measure every candidate's best-batch throughput round-robin, so all of them share the machine's
    drift (a shared machine is noisy); the median of the rounds replaces the sequential figure, and the cost
    per 1M predictions follows it."""
    from modelyard.evaluate.efficiency import interleaved_throughput

    runners = {}
    for cand in everyone:
        best = results[cand.name].get("efficiency.throughput_best")
        if best is None or best.value is None:
            continue
        batch = int(best.details.get("best_batch") or 32)
        runners[cand.name] = (cand.load(threads=threads), cand.preprocessor()(_tile(sample, batch)))
    if len(runners) < 2:
        return
    rounds = interleaved_throughput(runners, rounds=5, min_time_s=max(0.1, options.min_time_s / 2))
    for name, per_round in rounds.items():
        ms = results[name]
        best = ms["efficiency.throughput_best"]
        median = float(np.median(per_round))
        best.details["sequential_items_per_s"] = best.value
        best.details["interleaved_rounds_items_per_s"] = [round(r, 2) for r in per_round]
        best.details["method"] = (
            "median of 5 rounds timed round-robin across all candidates at each one's best batch size "
            f"({best.details.get('best_batch')})"
        )
        best.value = median
        cost = ms.get("efficiency.cost_usd_per_1m")
        if cost is not None and median > 0:
            cost.value = price_usd_per_hour / 3600.0 / median * 1e6
            cost.status = "ok"
