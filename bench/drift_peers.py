"""The drift and accuracy-estimation peers of bench/drift.py, each at its defaults.

Runs INSIDE a peer's own venv (bench/setup_drift_peers.sh), never in modelyard's: Evidently 0.7 needs
pandas<3 and both tools are heavy. It does not import modelyard. bench/drift.py writes the data as .npy files
under bench/out/drift/ and a job file naming them; this script prints one JSON object on stdout (progress
goes to stderr).

Subcommands:

- ``evidently JOB``: Evidently's ``Report([DataDriftPreset()])``. ``Report.run`` costs seconds per window
  at every size (mostly building the plotly widgets of every column), so it is run and timed on the first
  ``report_runs`` windows of each group only, and every window's verdict is computed by the function
  ``Report.run`` itself calls per column: ``get_stattest(reference, current, Numerical, None)`` (the preset's
  default choice: KS p-value < 0.05 with a reference of <= 1000 rows, normed Wasserstein >= 0.1 above) and
  ``test(reference, current, Numerical, None)``. "Dataset drift" is a drifted share >= 0.5 (the preset's
  ``drift_share``), as in ``get_dataset_drift``. Where ``Report.run`` ran, its column scores and share are
  compared with these and the largest difference is reported.
- ``nannyml JOB``: NannyML's ``UnivariateDriftCalculator(column_names=...)`` at its defaults (Jensen-Shannon,
  ``DefaultChunker``: about 10 chunks of the reference at fit and of each window at calculate, thresholds
  mean +- 3 sd of the reference chunks), fitted once per reference; a window alarms if any column alerts in
  any of its chunks. Also, as a second setting, ``chunk_size=n`` (the window is one chunk).
- ``cbpe JOB``: NannyML's ``CBPE(problem_type='classification_binary', metrics=['accuracy'],
  chunk_size=n)`` fitted on the labelled reference; the windows are estimated in one call, one chunk each
  (the accuracy estimate of a chunk does not depend on how the rest is chunked).

NannyML sends usage analytics unless ``NML_DISABLE_USAGE_LOGGING`` is set; it is set here before nannyml is
imported, whatever the environment says.

Usage: bench/.venv-evidently/bin/python bench/drift_peers.py evidently JOB
       bench/.venv-nannyml/bin/python bench/drift_peers.py nannyml|cbpe JOB
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"  # before nannyml is imported: never send usage analytics
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np
import pandas as pd

# Evidently's p-value tests: drift when the score is *below* the threshold. For one "more drift = larger"
# statistic per window these scores become -log10(p).
PVALUE_TESTS = frozenset({"ks", "chisquare", "z", "fisher_exact", "g_test", "t_test", "mannw", "anderson"})


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def frame(x: np.ndarray, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(x, dtype=np.float64), columns=columns)


def finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def clean(value: Any) -> Any:
    """JSON-ready: non-finite floats become None (NaN is not valid JSON)."""
    if isinstance(value, float | np.floating):
        return finite(float(value))
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# Evidently


class EvidentlyColumns:
    """What ``Report.run`` computes per column: the preset's default test, its score and verdict.

    The default test depends on the reference's size and on the number of distinct values in reference +
    window (<= 5: a categorical test); for a reference column with more than 5 distinct values it depends on
    the reference alone, so it is picked once per column, as ``get_stattest`` picks it, and reused.
    """

    def __init__(self, ref: pd.DataFrame) -> None:
        self.ref = {c: ref[c].replace([-np.inf, np.inf], np.nan).dropna() for c in ref.columns}
        self.tests: dict[str, Any] = {}

    def __call__(self, cur: pd.DataFrame) -> list[dict[str, Any]]:
        from evidently.legacy.calculations.stattests.registry import get_stattest
        from evidently.legacy.core import ColumnType

        out = []
        for col, r in self.ref.items():
            c = cur[col].replace([-np.inf, np.inf], np.nan).dropna()
            test = self.tests.get(col)
            if test is None:
                test = get_stattest(r, c, ColumnType.Numerical, None)
                if r.nunique() > 5:
                    self.tests[col] = test
            res = test(r, c, ColumnType.Numerical, None)
            score = float(res.drift_score)
            drift = -math.log10(max(score, 1e-300)) if test.name in PVALUE_TESTS else score
            out.append({"test": test.name, "score": score, "drift": drift, "drifted": bool(res.drifted)})
        return out


def evidently_report(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[float, float, dict[str, float]]:
    """``Report([DataDriftPreset()]).run``: seconds, drifted share and per-column scores."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    seconds = time.perf_counter() - t0
    share = math.nan
    scores: dict[str, float] = {}
    for m in snapshot.dict()["metrics"]:
        kind = m["config"]["type"]
        if kind.endswith("DriftedColumnsCount"):
            share = float(m["value"]["share"])
        elif kind.endswith("ValueDrift"):
            scores[m["config"]["column"]] = float(m["value"])
    return seconds, share, scores


def run_evidently(job: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    # imported before the first window, so that the import time is reported apart from the per-window times
    import evidently.legacy.calculations.stattests.registry
    import evidently.presets  # noqa: F401

    import_s = time.perf_counter() - t0
    columns = job["columns"]
    groups = {}
    for g in job["groups"]:
        ref = frame(np.load(g["reference"]), columns)
        windows = np.load(g["windows"], mmap_mode="r")
        evidently_columns = EvidentlyColumns(ref)
        rows = []
        for i in range(windows.shape[0]):
            cur = frame(windows[i], columns)
            t = time.perf_counter()
            cols = evidently_columns(cur)
            fast_s = time.perf_counter() - t
            n_drifted = sum(c["drifted"] for c in cols)
            share = n_drifted / len(cols)
            row: dict[str, Any] = {
                "dataset_drift": share >= 0.5,
                "any_column": n_drifted > 0,
                "share": share,
                "max_drift": max(c["drift"] for c in cols),
                "tests": sorted({c["test"] for c in cols}),
                "columns_s": fast_s,
            }
            if i < g.get("report_runs", 0):
                seconds, rep_share, scores = evidently_report(ref, cur)
                diff = max(abs(scores[c] - x["score"]) for c, x in zip(columns, cols, strict=True))
                row.update(report_s=seconds, report_share=rep_share, report_max_score_diff=diff)
                log(f"  evidently {g['name']} window {i}: Report.run {seconds:.2f} s, share {rep_share:.3f}")
            rows.append(row)
        groups[g["name"]] = {"windows": rows}
        log(f"  evidently {g['name']}: {len(rows)} windows")
    return {
        "tool": "evidently",
        "versions": {n: version(n) for n in ("evidently", "pandas", "numpy", "scipy")},
        "setting": "Report([DataDriftPreset()]) defaults: drift_share 0.5, per-column test chosen by Evidently",
        "import_s": import_s,
        "groups": groups,
    }


# ---------------------------------------------------------------------------------------------------
# NannyML univariate drift


def nannyml_window(calc: Any, cur: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    t = time.perf_counter()
    res = calc.calculate(cur)
    seconds = time.perf_counter() - t
    df = res.filter(period="analysis").to_df()
    values = np.array([df[(c, "jensen_shannon", "value")].to_numpy(dtype=float) for c in columns])
    alerts = np.array([df[(c, "jensen_shannon", "alert")].to_numpy(dtype=bool) for c in columns])
    return {
        "alarm": bool(alerts.any()),
        "n_alerts": int(alerts.sum()),
        "max_js": finite(float(np.nanmax(values))) if np.isfinite(values).any() else None,
        "chunks": int(values.shape[1]),
        "seconds": seconds,
    }


def run_nannyml(job: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import nannyml as nml

    import_s = time.perf_counter() - t0
    columns = job["columns"]
    groups = {}
    seen: dict[str, int] = {}  # NannyML's warnings (few chunks, undefined thresholds), counted, not printed
    for g in job["groups"]:
        ref = frame(np.load(g["reference"]), columns)
        windows = np.load(g["windows"], mmap_mode="r")
        n = int(windows.shape[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            groups[g["name"]] = nannyml_group(nml, ref, windows, columns, n)
        for w in caught:
            text = str(w.message).splitlines()[0][:120]
            seen[text] = seen.get(text, 0) + 1
        log(f"  nannyml {g['name']}: {windows.shape[0]} windows")
    return {
        "tool": "nannyml",
        "versions": {n: version(n) for n in ("nannyml", "pandas", "numpy", "scipy")},
        "setting": "UnivariateDriftCalculator(column_names=...) defaults: jensen_shannon, DefaultChunker "
        "(10 chunks), StandardDeviationThreshold (mean +- 3 sd of reference chunks)",
        "import_s": import_s,
        "warnings": seen,
        "groups": groups,
    }


def nannyml_group(
    nml: Any, ref: pd.DataFrame, windows: np.ndarray, columns: list[str], n: int
) -> dict[str, Any]:
    """Both settings on one group's windows: fit once on the reference, calculate per window."""
    out: dict[str, Any] = {}
    for setting, kwargs in (("default", {}), ("chunk_n", {"chunk_size": n})):
        t = time.perf_counter()
        try:
            calc = nml.UnivariateDriftCalculator(column_names=columns, **kwargs).fit(ref)
        except Exception as exc:  # a setting NannyML refuses is reported, not fatal
            out[setting] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        fit_s = time.perf_counter() - t
        rows = []
        for i in range(windows.shape[0]):
            try:
                rows.append(nannyml_window(calc, frame(windows[i], columns), columns))
            except Exception as exc:
                out[setting] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                break
        else:
            out[setting] = {"fit_s": fit_s, "windows": rows}
    return out


# ---------------------------------------------------------------------------------------------------
# NannyML CBPE


def run_cbpe(job: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import nannyml as nml

    import_s = time.perf_counter() - t0
    ref_p = np.load(job["reference_proba"]).astype(np.float64)
    ref_y = np.load(job["reference_labels"]).astype(np.int64)
    win_p = np.load(job["windows_proba"]).astype(np.float64)  # (W, n): P(class 1)
    n = int(win_p.shape[1])
    reference = pd.DataFrame({"y_pred_proba": ref_p, "y_pred": (ref_p >= 0.5).astype(int), "y_true": ref_y})
    flat = win_p.reshape(-1)
    analysis = pd.DataFrame({"y_pred_proba": flat, "y_pred": (flat >= 0.5).astype(int)})
    est = nml.CBPE(
        problem_type="classification_binary",
        y_pred_proba="y_pred_proba",
        y_pred="y_pred",
        y_true="y_true",
        metrics=["accuracy"],
        chunk_size=n,
    )
    t = time.perf_counter()
    est.fit(reference)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    df = est.estimate(analysis).filter(period="analysis").to_df()
    estimate_s = time.perf_counter() - t
    if len(df) != win_p.shape[0]:
        raise SystemExit(f"error: CBPE returned {len(df)} chunks for {win_p.shape[0]} windows")
    return {
        "tool": "nannyml-cbpe",
        "versions": {n: version(n) for n in ("nannyml", "pandas", "numpy", "scikit-learn")},
        "setting": f"CBPE(problem_type='classification_binary', metrics=['accuracy'], chunk_size={n}); "
        "calibration: its default (isotonic), fitted on the labelled reference",
        "import_s": import_s,
        "fit_s": fit_s,
        "estimate_s": estimate_s,
        "estimate": df[("accuracy", "value")].astype(float).tolist(),
        "lower": df[("accuracy", "lower_confidence_boundary")].astype(float).tolist(),
        "upper": df[("accuracy", "upper_confidence_boundary")].astype(float).tolist(),
    }


RUNNERS = {"evidently": run_evidently, "nannyml": run_nannyml, "cbpe": run_cbpe}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=sorted(RUNNERS))
    parser.add_argument("job", type=Path, help="job file written by bench/drift.py")
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())
    result = RUNNERS[args.tool](job)
    result["python"] = platform.python_version()
    print(json.dumps(clean(result), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
