"""What the evidence suite costs on the digits demo, per check, and how it grows with the dataset (1x, 4x, 16x).

The suite is what `modelyard optimize` runs after building candidates: the data and model audits, then every
check on the baseline and every candidate (quality, paired comparison, calibration, slices, robustness,
adversarial transfer, OOD, security, efficiency). The comparison point is the floor any evaluation tool pays:
one plain prediction pass over the test split per candidate (a suite that re-predicts per check, as users report
of other tools, pays that floor once per check instead).

Bigger datasets are the digits splits tiled 4x and 16x, each copy with small pixel noise so copies are near
duplicates rather than exact ones. Perturbation checks use the sample size the policy's smallest robustness
margin needs, so their cost stops growing once the test split is larger than that.

Run: .venv/bin/python bench/suite_cost.py [--scales 1,4,16] [--quick]
Prints a table per scale and the growth table, writes bench/out/suite_cost.md, ends with one JSON line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import json_line, log, markdown_table

from modelyard.config import Policy
from modelyard.data.dataset import Dataset
from modelyard.evaluate.audits import run_audits
from modelyard.pipeline import EvalOptions, build_candidates, evaluate_candidates
from modelyard.runtime.device import cpu_info
from modelyard.runtime.preprocess import predict
from modelyard.zoo.demos import load_demo

OUT = Path(__file__).resolve().parent / "out"
RECIPES = ["onnx", "onnx > int8-static", "prune(0.5) > onnx", "distill(0.5) > onnx"]


def _tile(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if k == 1:
        return x
    copies = [x] + [np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1).astype(x.dtype) for _ in range(k - 1)]
    return np.concatenate(copies)


def scaled(ds: Dataset, k: int) -> Dataset:
    rng = np.random.default_rng(k)
    tile_y = lambda y: None if y is None else np.tile(y, k)  # noqa: E731
    return replace(
        ds,
        name=ds.name,
        x_train=_tile(ds.x_train, k, rng),
        y_train=tile_y(ds.y_train),
        x_test=_tile(ds.x_test, k, rng),
        y_test=tile_y(ds.y_test),
        x_cal=_tile(ds.x_cal, k, rng) if ds.x_cal is not None else None,
        y_cal=tile_y(ds.y_cal),
    )


def run_scale(demo: Any, candidates: list[Any], k: int, options: EvalOptions) -> dict[str, Any]:
    ds = scaled(demo.dataset, k)
    everyone = [demo.baseline, *candidates]
    t0 = time.perf_counter()
    floor = 0.0
    for cand in everyone:  # the floor: one prediction pass over the test split per candidate
        runner, pre = cand.load(), cand.preprocessor()
        t = time.perf_counter()
        predict(runner, pre, ds.x_test, batch_size=64)
        floor += time.perf_counter() - t
    t_audit = time.perf_counter()
    audits = run_audits(demo.baseline, ds)
    t_eval = time.perf_counter()
    _, suite, _ = evaluate_candidates(
        demo.baseline,
        candidates,
        ds,
        policy=Policy(),
        price_usd_per_hour=0.10,
        options=options,
        threads=None,
        audits=audits,
    )
    t_end = time.perf_counter()
    seconds = {**audits["seconds"], **suite["seconds"]}
    return {
        "scale": k,
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "candidates": len(everyone),
        "seconds": seconds,
        "audits_s": t_eval - t_audit,
        "checks_s": t_end - t_eval,
        "total_s": t_end - t_audit,
        "floor_s": floor,
        "robust_n": suite["sample_sizes"]["robustness"]["n"],
        "wall_incl_floor_s": t_end - t0,
    }


def growth(t1: float, tk: float, k: int) -> float | None:
    if t1 <= 0 or tk <= 0:
        return None
    return math.log(tk / t1) / math.log(k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,4,16", help="dataset multiples, comma-separated (default 1,4,16)")
    ap.add_argument(
        "--quick", action="store_true", help="shorter efficiency timing (the checks are unchanged)"
    )
    args = ap.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    home = OUT / "suite_cost" / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    options = (
        EvalOptions(batch_sizes=(1, 32), latency_calls=50, min_time_s=0.15, n_resamples=1000)
        if args.quick
        else EvalOptions()
    )
    log("loading the digits demo and building its candidates (once)")
    demo = load_demo("digits", home)
    work = OUT / "suite_cost" / "candidates"
    t = time.perf_counter()
    candidates, skipped = build_candidates(
        demo.baseline, demo.dataset, RECIPES, work, policy=Policy(), threads=None
    )
    build_s = time.perf_counter() - t
    for s in skipped:
        log(f"skipped {s['pass']}: {s['reason']}")
    results = []
    for k in scales:
        log(f"scale {k}x: audits and every check on {len(candidates) + 1} candidates")
        results.append(run_scale(demo, candidates, k, options))

    checks = sorted({c for r in results for c in r["seconds"]})
    headers = ["check"] + [f"{r['scale']}x s" for r in results]
    if len(results) > 1:
        headers += [f"growth 1x->{r['scale']}x" for r in results[1:]]
    rows = []
    base = results[0]
    for c in [*checks, "TOTAL (audits + checks)", "floor: one predict pass per candidate"]:
        key = {"TOTAL (audits + checks)": "total_s", "floor: one predict pass per candidate": "floor_s"}.get(
            c
        )
        vals = [r[key] if key else r["seconds"].get(c, 0.0) for r in results]
        row: list[Any] = [c, *(f"{v:.2f}" for v in vals)]
        for r, v in zip(results[1:], vals[1:], strict=True):
            g = growth(vals[0], v, r["scale"] // base["scale"])
            row.append("n/a" if g is None else f"{g:.2f}")
        rows.append(row)
    info = cpu_info()
    lines = [
        f"# suite cost on the digits demo ({len(candidates) + 1} candidates incl. baseline)",
        "",
        f"machine: {info['cpu']}, {info['cores']} cores; candidates built once in {build_s:.1f} s",
        "",
        markdown_table(headers, rows),
        "",
        "sizes: "
        + "; ".join(
            f"{r['scale']}x = {r['n_train']} train / {r['n_test']} test, perturbation sample {r['robust_n']}"
            for r in results
        ),
        "",
        "growth = log(t_k / t_1) / log(k): 1 is linear, below 1 sub-linear (fixed-cost or capped checks).",
    ]
    text = "\n".join(lines)
    print(text)
    (OUT / "suite_cost.md").write_text(text + "\n")
    last = results[-1]
    payload = {
        "bench": "suite_cost",
        "candidates": len(candidates) + 1,
        "total_s": {f"{r['scale']}x": round(r["total_s"], 2) for r in results},
        "checks_s": {f"{r['scale']}x": round(r["checks_s"], 2) for r in results},
        "floor_s": {f"{r['scale']}x": round(r["floor_s"], 2) for r in results},
        "growth_exponent_total": None
        if len(results) < 2
        else round(growth(base["total_s"], last["total_s"], last["scale"] // base["scale"]) or 0.0, 3),
        "suite_under_2_min_at_1x": base["total_s"] < 120,
        "cpu": info["cpu"],
        "cores": info["cores"],
    }
    print(json_line(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
