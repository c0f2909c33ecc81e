"""Drift monitoring: modelyard's detector and accuracy estimate against Evidently and NannyML, on the same
windows, in one run.

Detectors (every one sees the same windows, written once as .npy files under bench/out/drift/):

- ours: ``modelyard.monitor.drift.Reference(reference, conditional=True).check(window, alpha=0.05)`` (what the
  monitor's input check uses): the max, over the features and over the residuals of those the others
  predict in part (a linear fit on the reference), of the standardised Wasserstein-1 distance, against a
  threshold calibrated by resampling the reference at the window's size (the calibration is timed apart from
  the checks);
- Evidently 0.7 ``Report([DataDriftPreset()])`` at its defaults: its "dataset drift" flag (>= 50 % of the
  columns drifted) and "any column drifted" (bench/drift_peers.py says how its verdicts are computed);
- NannyML 0.13 ``UnivariateDriftCalculator`` at its defaults (Jensen-Shannon, about 10 chunks per window,
  thresholds mean +- 3 sd of the reference's chunks): alarm if any column alerts; and, marked as a different
  setting, with ``chunk_size`` = the window size.

Data: a synthetic 10,000 x 30 reference (standard normal, five pairs correlated at 0.8) and fresh windows of
n = 100, 500, 2,000 and 10,000 rows: unshifted ones (false alarms), and ones with a mean shift of 0.1, 0.25 or
0.5 sd or a 1.5x variance in one random feature of 30 (power). Then scikit-learn's breast-cancer data split on
its own features: reference = the rows below the median of "mean radius" (or "mean texture"), windows of 100
rows from the rows above (a real shift); random halves as the control (no shift).

Power is given at each detector's own threshold, and, for a fair comparison, with every detector's statistic
re-thresholded after the fact to a 5 % false-alarm rate on the same unshifted windows.

Accuracy estimate: a logistic regression on a synthetic binary problem it cannot fit exactly (an interaction
and a square in the true log-odds), windows of 500 rows under covariate shift (P(y | x) fixed): coverage of our
95 % interval over the realised accuracy and mean absolute error, ours vs NannyML's CBPE; both fit their
calibration on the same labelled reference, never on the windows.

Prediction log cost: bench/serve_load.py runs ``modelyard serve`` with its prediction log (the default) and
with ``--no-monitor``, interleaved, on the digits demo, loopback only, closed loop at C=32.

The peers run in their own venvs (bash bench/setup_drift_peers.sh); without one, its columns read "not run".

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/drift.py [--quick]`` (see bench/README.md). Prints the tables,
writes bench/out/drift.md, ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OtherLoad, json_line, log, markdown_table, rounded

from modelyard.evaluate.stats import wilson_interval
from modelyard.monitor.drift import Reference
from modelyard.monitor.estimate import compare, estimate_accuracy, realised_accuracy
from modelyard.runtime.device import cpu_info

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WORK = OUT / "drift"
# This run's data files (windows, job files, CBPE inputs): one folder per process, so two runs never share one.
SCRATCH = WORK / f"run-{os.getpid()}"
PEERS = HERE / "drift_peers.py"
VENVS = {
    "evidently": HERE / ".venv-evidently",
    "nannyml": HERE / ".venv-nannyml",
    "cbpe": HERE / ".venv-nannyml",
}
SETUP = {
    "evidently": "bash bench/setup_drift_peers.sh evidently",
    "nannyml": "bash bench/setup_drift_peers.sh nannyml",
    "cbpe": "bash bench/setup_drift_peers.sh nannyml",
}

ALPHA = 0.05
MAX_OTHER_LOAD = 0.3  # cores other processes may use while a timing is taken before it is marked
SIZES = (100, 500, 2_000, 10_000)
N_REF, N_FEATURES, N_PAIRS, RHO = 10_000, 30, 5, 0.8
SHIFTS = {
    "mean0.1": ("mean", 0.1),
    "mean0.25": ("mean", 0.25),
    "mean0.5": ("mean", 0.5),
    "var1.5": ("var", 1.5),
}
BC_WINDOW = 100
EST_WINDOW, EST_SHIFTS, EST_FEATURES, EST_USED = 500, (0.0, 0.5, 1.0, 1.5, 2.0), 8, 5
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
)

# Every detector at its own threshold: (label, alarm field, statistic field).
DETECTORS = (
    ("ours, alpha = 5 %", "ours_alarm", "ours_stat"),
    ("Evidently DataDriftPreset: dataset drift (>= 50 % of columns)", "ev_dataset", "ev_share"),
    ("Evidently: any column drifted", "ev_any", "ev_max"),
    ("NannyML univariate JS, default chunking: any column alert", "nml_alarm", "nml_max"),
    ("NannyML, chunk_size = n (one chunk per window) [not its default]", "nml_n_alarm", "nml_n_max"),
)
STATISTICS = {
    "ours_stat": "ours: max standardised W1 over features and conditional residuals",
    "ev_share": "Evidently: share of drifted columns",
    "ev_max": "Evidently: max column score (normed W1; -log10 p for KS)",
    "nml_max": "NannyML default chunking: max JS over columns and chunks",
    "nml_n_max": "NannyML chunk_size = n: max JS over columns",
}


# ---------------------------------------------------------------------------------------------------
# windows


@dataclass
class Group:
    """Windows that share one reference: one window size of the synthetic data, or one breast-cancer split."""

    name: str
    stage: str
    reference: np.ndarray  # (N, d) float32: the values every detector sees
    windows: np.ndarray  # (W, n, d) float32
    kinds: list[str]  # per window: "none", a SHIFTS key, "radius" or "texture"
    report_runs: int = 0  # Evidently Report.run on this many windows (timed, checked against its verdicts)
    rows: list[dict[str, Any]] = field(default_factory=list)  # per window: every detector's result

    def __post_init__(self) -> None:
        self.rows = self.rows or [{"kind": k} for k in self.kinds]

    @property
    def n(self) -> int:
        return int(self.windows.shape[1])


def correlated_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard normal rows of N_FEATURES columns; columns (2k, 2k+1), k < N_PAIRS, correlated at RHO."""
    z = rng.standard_normal((n, N_FEATURES))
    for k in range(N_PAIRS):
        z[:, 2 * k + 1] = RHO * z[:, 2 * k] + math.sqrt(1.0 - RHO**2) * z[:, 2 * k + 1]
    return z


def synthetic_group(reference: np.ndarray, n: int, args: argparse.Namespace) -> Group:
    rng = np.random.default_rng([args.seed, n])
    kinds = ["none"] * args.null_windows + [s for s in SHIFTS for _ in range(args.shift_windows)]
    windows = np.empty((len(kinds), n, N_FEATURES), dtype=np.float32)
    for i, kind in enumerate(kinds):
        x = correlated_normal(rng, n)
        if kind != "none":
            how, size = SHIFTS[kind]
            j = int(rng.integers(N_FEATURES))
            x[:, j] = x[:, j] + size if how == "mean" else x[:, j] * math.sqrt(size)
        windows[i] = x
    runs = min(args.report_runs, args.null_windows)
    return Group(f"n{n}", f"n{n}", reference, windows, kinds, report_runs=runs)


def breast_cancer_groups(args: argparse.Namespace) -> tuple[list[Group], list[str]]:
    """Natural splits (below vs above the median of a feature) and random halves (the control)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = np.asarray(data.data, dtype=np.float32)
    names = [str(f) for f in data.feature_names]
    rng = np.random.default_rng([args.seed, 569])
    groups = []
    half = x.shape[0] // 2
    for feature in ("radius", "texture"):
        order = np.argsort(x[:, names.index(f"mean {feature}")], kind="stable")
        ref, rest = x[order[:half]], x[order[half:]]
        windows = np.stack(
            [rest[rng.choice(rest.shape[0], BC_WINDOW, replace=False)] for _ in range(args.bc_windows)]
        )
        runs = 1 if feature == "radius" and args.report_runs > 1 else 0
        groups.append(Group(f"bc-{feature}", "bc", ref, windows, [feature] * len(windows), report_runs=runs))
    for s in range(args.bc_splits):
        perm = rng.permutation(x.shape[0])
        ref, rest = x[perm[:half]], x[perm[half:]]
        windows = np.stack(
            [rest[rng.choice(rest.shape[0], BC_WINDOW, replace=False)] for _ in range(args.bc_per_split)]
        )
        groups.append(Group(f"bc-random-{s:02d}", "bc", ref, windows, ["none"] * len(windows)))
    return groups, names


# ---------------------------------------------------------------------------------------------------
# detectors


@dataclass
class Timing:
    calibration_s: dict[int, float] = field(default_factory=dict)
    check_s: dict[int, list[float]] = field(default_factory=dict)
    other_cores: dict[int, float] = field(default_factory=dict)  # during our checks, per n
    peer_other_cores: dict[str, float] = field(default_factory=dict)  # during a peer's run, per "tool/stage"


def children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_ours(
    groups: list[Group], names: list[str], timing: Timing, seed: int, ref: Reference | None = None
) -> None:
    """Check every window of ``groups``; ``ref``: a Reference shared by the groups (else one per group)."""
    meter = OtherLoad()
    for g in groups:
        ref_g = (
            ref
            if ref is not None
            else Reference(g.reference.astype(np.float64), names, seed=seed, conditional=True)
        )
        t0 = time.perf_counter()
        ref_g.null_distribution(g.n)  # the one-time calibration for this window size
        calib = time.perf_counter() - t0
        times = []
        start = meter.snapshot()
        for i in range(g.windows.shape[0]):
            w = np.asarray(g.windows[i], dtype=np.float64)
            t0 = time.perf_counter()
            r = ref_g.check(w, alpha=ALPHA)
            times.append(time.perf_counter() - t0)
            g.rows[i].update(ours_alarm=bool(r.alarm), ours_stat=r.statistic)
        if g.stage != "bc":
            timing.calibration_s[g.n] = calib
            timing.check_s[g.n] = times
            timing.other_cores[g.n] = meter.cores_since(start)


def references_stage(
    args: argparse.Namespace, names: list[str]
) -> dict[int, dict[str, list[tuple[int, int]]]]:
    """Ours alone over ``--references`` further references, each drawn afresh and calibrated on its own: the
    false-alarm rate the threshold controls is an average over references (one reference's own sampling
    deviation moves its rate, the more so as the window nears its size), and power at n = 2,000 the same way.
    Per size: {"null": [(alarms, windows) per reference], "mean0.1": [...] (n = 2,000 only)}."""
    out: dict[int, dict[str, list[tuple[int, int]]]] = {}
    w = args.windows_per_reference
    for n in SIZES:
        cell: dict[str, list[tuple[int, int]]] = {"null": [], "mean0.1": []}
        for r in range(args.references):
            rng = np.random.default_rng([args.seed, 7, n, r])
            ref = Reference(correlated_normal(rng, N_REF), names, seed=args.seed + 1 + r, conditional=True)
            alarms = sum(ref.check(correlated_normal(rng, n), alpha=ALPHA).alarm for _ in range(w))
            cell["null"].append((int(alarms), w))
            if n == 2_000:
                hits = 0
                for _ in range(w):
                    x = correlated_normal(rng, n)
                    x[:, int(rng.integers(N_FEATURES))] += SHIFTS["mean0.1"][1]
                    hits += ref.check(x, alpha=ALPHA).alarm
                cell["mean0.1"].append((int(hits), w))
        out[n] = cell
        log(f"  n={n:,}: {sum(k for k, _ in cell['null'])} alarms in {w * args.references} unshifted windows")
    return out


def table_references(
    multi: dict[int, dict[str, list[tuple[int, int]]]],
) -> tuple[str, dict[int, float], float | None]:
    rows = []
    rates: dict[int, float] = {}
    for n, cell in multi.items():
        k, m = sum(a for a, _ in cell["null"]), sum(b for _, b in cell["null"])
        per = [a / b for a, b in cell["null"]]
        rates[n] = k / m
        rows.append(
            [
                f"n={n:,}",
                len(cell["null"]),
                m,
                f"{100 * k / m:.1f} % {wilson_text(k, m)}",
                f"{100 * min(per):.0f}-{100 * max(per):.0f} %",
            ]
        )
    power = None
    hits = multi.get(2_000, {}).get("mean0.1") or []
    if hits:
        k, m = sum(a for a, _ in hits), sum(b for _, b in hits)
        power = k / m
        rows.append(
            [
                "power, mean 0.1 sd in 1 of 30, n=2,000",
                len(hits),
                m,
                f"{100 * power:.1f} % {wilson_text(k, m)}",
                "-",
            ]
        )
    head = ["window", "references", "windows", "ours: alarm rate (Wilson)", "one reference's rate: range"]
    return markdown_table(head, rows), rates, power


def peer_python(tool: str) -> Path:
    return VENVS[tool] / "bin" / "python"


def run_peer(tool: str, job: dict[str, Any], tag: str, timeout_s: float) -> dict[str, Any] | str:
    """Run bench/drift_peers.py TOOL in the tool's venv; its JSON, or why not."""
    py = peer_python(tool)
    if not py.is_file():
        return f"not run: {VENVS[tool].relative_to(HERE.parent)} is missing; create it with `{SETUP[tool]}`"
    path = SCRATCH / f"job-{tool}-{tag}.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "NML_DISABLE_USAGE_LOGGING": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(
            [str(py), str(PEERS), tool, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"failed: no answer within {timeout_s:.0f} s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return f"failed: exit code {proc.returncode} (its error is printed above)"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def write_group(g: Group) -> dict[str, Any]:
    ref_path, win_path = SCRATCH / f"{g.name}-reference.npy", SCRATCH / f"{g.name}-windows.npy"
    np.save(ref_path, g.reference)
    np.save(win_path, g.windows)
    return {
        "name": g.name,
        "reference": str(ref_path),
        "windows": str(win_path),
        "report_runs": g.report_runs,
    }


def run_drift_peers(
    groups: list[Group],
    names: list[str],
    tag: str,
    args: argparse.Namespace,
    peers: dict[str, Any],
    timing: Timing,
) -> None:
    job = {"columns": names, "groups": [write_group(g) for g in groups]}
    for tool in ("evidently", "nannyml"):
        if tool not in args.peers:
            peers.setdefault(tool, {"why_not": "not run: left out with --peers"})
            continue
        log(f"  {tool} on {tag} ...")
        t0, meter, child0 = time.perf_counter(), OtherLoad(), children_cpu_s()
        start = meter.snapshot()
        res = run_peer(tool, job, tag, args.peer_timeout_s)
        own_child = (children_cpu_s() - child0) / max(time.perf_counter() - t0, 1e-9)
        timing.peer_other_cores[f"{tool}/{tag}"] = max(0.0, meter.cores_since(start) - own_child)
        if isinstance(res, str):
            peers.setdefault(tool, {"why_not": res})
            log(f"  {tool}: {res}")
            continue
        peers.setdefault(tool, {}).update(
            versions=res["versions"], setting=res["setting"], import_s=res["import_s"]
        )
        seen = peers[tool].setdefault("warnings", {})
        for text, count in res.get("warnings", {}).items():
            seen[text] = seen.get(text, 0) + count
        log(f"  {tool} on {tag}: {time.perf_counter() - t0:.0f} s")
        for g in groups:
            out = res["groups"][g.name]
            if tool == "evidently":
                for row, w in zip(g.rows, out["windows"], strict=True):
                    row.update(
                        ev_dataset=w["dataset_drift"],
                        ev_any=w["any_column"],
                        ev_share=w["share"],
                        ev_max=w["max_drift"],
                    )
                    row["ev_columns_s"] = w["columns_s"]
                    for k in ("report_s", "report_share", "report_max_score_diff"):
                        if k in w:
                            row[k] = w[k]
                continue
            for setting, prefix in (("default", "nml"), ("chunk_n", "nml_n")):
                part = out.get(setting, {})
                if "windows" not in part:
                    peers[tool].setdefault("errors", {})[f"{g.name}/{setting}"] = part.get(
                        "error", "no result"
                    )
                    continue
                peers[tool].setdefault("fit_s", {})[f"{g.name}/{setting}"] = part["fit_s"]
                for row, w in zip(g.rows, part["windows"], strict=True):
                    row.update(
                        {
                            f"{prefix}_alarm": w["alarm"],
                            f"{prefix}_max": w["max_js"],
                            f"{prefix}_s": w["seconds"],
                        }
                    )
                    row[f"{prefix}_chunks"] = w["chunks"]
    if not args.keep_windows:
        for spec in job["groups"]:
            Path(spec["windows"]).unlink(missing_ok=True)
            Path(spec["reference"]).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# accuracy estimate under covariate shift


def true_logit(x: np.ndarray) -> np.ndarray:
    """The true log-odds; a linear model cannot fit the interaction or the square."""
    return 2.0 * x[:, 0] - 1.5 * x[:, 1] + 1.0 * x[:, 2] * x[:, 3] + 0.75 * (x[:, 4] ** 2 - 1.0)


def draw(rng: np.random.Generator, n: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, EST_FEATURES)) + shift
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_logit(x)))).astype(np.int64)
    return x, y


def estimate_stage(args: argparse.Namespace, peers: dict[str, Any]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng([args.seed, 500])
    zero = np.zeros(EST_FEATURES)
    x_train, y_train = draw(rng, 4_000, zero)
    model = LogisticRegression().fit(x_train, y_train)
    x_ref, y_ref = draw(rng, 4_000, zero)  # the labelled reference: calibration for ours and CBPE alike
    ref_probs = model.predict_proba(x_ref)
    sizes, probs, inputs, realised = [], [], [], []
    for s in EST_SHIFTS:
        for _ in range(args.estimate_windows):
            u = np.zeros(EST_FEATURES)  # a random direction among the features the labels depend on
            u[:EST_USED] = rng.standard_normal(EST_USED)
            x, y = draw(rng, EST_WINDOW, s * u / np.linalg.norm(u))
            p = model.predict_proba(x)
            sizes.append(s)
            probs.append(p)
            inputs.append(x)
            realised.append(realised_accuracy(p.argmax(axis=1) == y))
    rows: list[dict[str, Any]] = [{} for _ in probs]
    seconds = {}
    # the labels are never passed: they arrive later. "ours" weights the reference by the inputs' density
    # ratio (what the monitor does when the reference holds input features); "conf": confidences only
    for key, with_inputs in (("ours", True), ("conf", False)):
        t0 = time.perf_counter()
        for row, p, x, real in zip(rows, probs, inputs, realised, strict=True):
            extra = {"inputs": x, "reference_inputs": x_ref} if with_inputs else {}
            est = estimate_accuracy(probs=p, reference_probs=ref_probs, reference_labels=y_ref, **extra)
            row.update(
                {
                    key: est.estimated_accuracy,
                    f"{key}_lo": est.interval[0],
                    f"{key}_hi": est.interval[1],
                    f"{key}_covered": compare(est, real).covered,
                }
            )
        seconds[key] = (time.perf_counter() - t0) / len(probs)
    ours_s = seconds["ours"]
    for row, s, real in zip(rows, sizes, realised, strict=True):
        row.update(shift=s, realised=real.accuracy)
    job = {
        "reference_proba": str(SCRATCH / "estimate-reference-proba.npy"),
        "reference_labels": str(SCRATCH / "estimate-reference-labels.npy"),
        "windows_proba": str(SCRATCH / "estimate-windows-proba.npy"),
    }
    np.save(job["reference_proba"], ref_probs[:, 1])
    np.save(job["reference_labels"], y_ref)
    np.save(job["windows_proba"], np.stack([p[:, 1] for p in probs]))
    if "cbpe" in args.peers:
        log("  NannyML CBPE ...")
        res = run_peer("cbpe", job, "estimate", args.peer_timeout_s)
    else:
        res = "not run: left out with --peers"
    if isinstance(res, str):
        peers["cbpe"] = {"why_not": res}
    else:
        peers["cbpe"] = {k: res[k] for k in ("versions", "setting", "import_s", "fit_s", "estimate_s")}
        for row, e, lo, hi in zip(rows, res["estimate"], res["lower"], res["upper"], strict=True):
            row.update(cbpe=e, cbpe_lo=lo, cbpe_hi=hi)
    return {
        "rows": rows,
        "ours_s": ours_s,
        "conf_s": seconds["conf"],
        "model_accuracy_unshifted": float(np.mean([r["realised"] for r in rows if r["shift"] == 0.0])),
    }


# ---------------------------------------------------------------------------------------------------
# prediction log on vs off (bench/serve_load.py)


def serve_stage(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "serve_load.py"), "--models", "digits", "--servers", "ours,ours-nolog"]
    cmd += ["--concurrency", "32", "--rates", "", "--out-md", str(WORK / "serve_load.md")]
    cmd += ["--quick", "--rounds", "2"] if args.quick else ["--rounds", "3"]
    log(f"  {' '.join(cmd[1:])}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        stdout, _ = proc.communicate(timeout=args.serve_timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # serve_load stops the server it runs on KeyboardInterrupt
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return {"why_not": f"not measured: bench/serve_load.py took more than {args.serve_timeout_s:.0f} s"}
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        return {"why_not": f"not measured: bench/serve_load.py exited with code {proc.returncode}"}
    res = json.loads(lines[-1])
    return {
        "ratio": res["log_on_off_ratio_c32"]["digits"],
        "rps": res["digits_c32_rps"],
        "p99_ms": res["p99_ms_c32"]["digits"],
        "contended": res["contended_c32"]["digits"],
        "elapsed_s": res["elapsed_s"],
    }


# ---------------------------------------------------------------------------------------------------
# figures


def rows_of(
    groups: list[Group], stage: str | None = None, kind: str | None = None, name: str | None = None
) -> list[dict[str, Any]]:
    return [
        r
        for g in groups
        if (stage is None or g.stage == stage) and (name is None or g.name == name)
        for r in g.rows
        if kind is None or r["kind"] == kind
    ]


def rate(rows: list[dict[str, Any]], key: str) -> tuple[int, int] | None:
    flags = [r[key] for r in rows if r.get(key) is not None]
    return (sum(bool(f) for f in flags), len(flags)) if flags and len(flags) == len(rows) else None


def wilson_text(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"({100 * lo:.0f}-{100 * hi:.0f})"


def fmt_rate(kn: tuple[int, int] | None, *, ci: bool = True) -> str:
    """``k of n`` as a percentage, with its 95 % Wilson interval in brackets; "not run" when missing."""
    if kn is None:
        return "not run"
    k, n = kn
    return f"{100 * k / n:.0f} %" + (f" {wilson_text(k, n)}" if ci else "")


def threshold_at(null: list[float], target: float = ALPHA) -> float:
    """The smallest null value t with share(null > t) <= target (ties can make the achieved rate lower)."""
    v = sorted(null)
    return v[max(math.ceil(len(v) * (1.0 - target)), 1) - 1]


def rethresholded(
    rows: list[dict[str, Any]], null_rows: list[dict[str, Any]], key: str
) -> tuple[int, int] | None:
    null = [r.get(key) for r in null_rows]
    vals = [r.get(key) for r in rows]
    if not null or any(v is None for v in null + vals):
        return None
    t = threshold_at(null)
    return sum(v > t for v in vals), len(vals)


def table_false_alarms(groups: list[Group]) -> tuple[str, dict[int, tuple[int, int] | None]]:
    head = [
        "detector (its own threshold)",
        *[f"n={n:,}" for n in SIZES],
        f"breast cancer, random split (n={BC_WINDOW})",
    ]
    rows, ours = [], {}
    for label, alarm, _stat in DETECTORS:
        cells = []
        for n in SIZES:
            kn = rate(rows_of(groups, f"n{n}", "none"), alarm)
            cells.append(fmt_rate(kn))
            if alarm == "ours_alarm":
                ours[n] = kn
        cells.append(fmt_rate(rate(rows_of(groups, "bc", "none"), alarm)))
        rows.append([label, *cells])
    return markdown_table(head, rows), ours


def table_power(groups: list[Group], *, own: bool) -> str:
    """Power per shift and window size: at each detector's own threshold, or with each statistic
    re-thresholded to 5 % false alarms on the same size's unshifted windows."""
    cols = [(alarm, label) for label, alarm, _s in DETECTORS] if own else list(STATISTICS.items())
    rows = []
    if not own:
        for n in SIZES:
            null = rows_of(groups, f"n{n}", "none")
            cells = [fmt_rate(rethresholded(null, null, k), ci=False) for k, _ in cols]
            rows.append([f"false alarms (unshifted), n={n:,}", *cells])
    for shift in SHIFTS:
        for n in SIZES:
            sel = rows_of(groups, f"n{n}", shift)
            null = rows_of(groups, f"n{n}", "none")
            cells = [fmt_rate(rate(sel, k) if own else rethresholded(sel, null, k)) for k, _ in cols]
            rows.append([f"{shift}, n={n:,}", *cells])
    return markdown_table(["shift, window", *[text for _k, text in cols]], rows)


def table_breast_cancer(groups: list[Group]) -> str:
    null = rows_of(groups, "bc", "none")
    rows = []
    for label, alarm, stat in DETECTORS:
        cells = [fmt_rate(rate(rows_of(groups, "bc", f), alarm)) for f in ("radius", "texture")]
        cells.append(fmt_rate(rate(null, alarm)))
        cells += [
            fmt_rate(rethresholded(rows_of(groups, "bc", f), null, stat)) for f in ("radius", "texture")
        ]
        rows.append([label, *cells])
    head = [
        "detector",
        "mean radius split: alarms",
        "mean texture split: alarms",
        "random split: false alarms",
        "radius, re-thresholded",
        "texture, re-thresholded",
    ]
    return markdown_table(head, rows)


def med(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def fmt_s(v: float | None, digits: int = 3) -> str:
    return "not run" if v is None else f"{v:.{digits}f}"


def table_cost(groups: list[Group], timing: Timing, peers: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Seconds per check per window size; a cell taken while other processes kept more than
    MAX_OTHER_LOAD cores busy is marked †."""

    def per_n(key: str) -> dict[int, float | None]:
        return {n: med([r[key] for r in rows_of(groups, f"n{n}") if r.get(key) is not None]) for n in SIZES}

    def load(who: str, n: int) -> float | None:
        return timing.other_cores.get(n) if who == "ours" else timing.peer_other_cores.get(f"{who}/n{n}")

    def cells(values: dict[int, float | None], who: str, digits: int) -> list[str]:
        marks = {
            n: " †" if (load(who, n) or 0.0) > MAX_OTHER_LOAD and values[n] is not None else "" for n in SIZES
        }
        return [fmt_s(values[n], digits) + marks[n] for n in SIZES]

    ours = {n: med(timing.check_s.get(n, [])) for n in SIZES}
    report = per_n("report_s")
    fit = peers.get("nannyml", {}).get("fit_s", {})
    calib = {n: timing.calibration_s.get(n) for n in SIZES}
    rows = [
        ["ours: Reference.check (median over all windows)", *cells(ours, "ours", 4)],
        ["ours: one-time calibration for the window size (B = 1000 null draws)", *cells(calib, "ours", 2)],
        [
            "Evidently: Report([DataDriftPreset()]).run (median of the windows it ran on)",
            *cells(report, "evidently", 2),
        ],
        [
            "Evidently: its per-column tests alone (what Report.run computes per column)",
            *cells(per_n("ev_columns_s"), "evidently", 3),
        ],
        ["NannyML: calculate, default chunking", *cells(per_n("nml_s"), "nannyml", 3)],
        ["NannyML: calculate, chunk_size = n", *cells(per_n("nml_n_s"), "nannyml", 3)],
        [
            "NannyML: fit on the reference (one-time), default chunking",
            *cells({n: fit.get(f"n{n}/default") for n in SIZES}, "nannyml", 2),
        ],
    ]
    for who, text in (("ours", "our checks"), ("evidently", "Evidently's run"), ("nannyml", "NannyML's run")):
        loads = [load(who, n) for n in SIZES]
        if any(v is not None for v in loads):
            rows.append(
                [
                    f"other processes' CPU during {text} (cores)",
                    *["-" if v is None else f"{v:.2f}" for v in loads],
                ]
            )
    big = SIZES[-1]
    contended = [w for w in ("ours", "evidently") if (load(w, big) or 0.0) > MAX_OTHER_LOAD]
    table = markdown_table(["seconds per check", *[f"n={n:,}" for n in SIZES]], rows)
    return table, {"ours": ours[big], "evidently": report[big], "contended": contended}


def table_estimate(est: dict[str, Any]) -> tuple[str, dict[str, float | None]]:
    rows_all = est["rows"]
    has_cbpe = all("cbpe" in r for r in rows_all)
    out_rows = []
    summary: dict[str, float | None] = {}
    for s in (*EST_SHIFTS, None):
        rows = [r for r in rows_all if s is None or r["shift"] == s]
        cells: list[Any] = [
            "all" if s is None else f"{s:g} sd",
            len(rows),
            f"{np.mean([r['realised'] for r in rows]):.3f}",
        ]
        figures = {}
        for key in ("ours", "conf"):
            cover = sum(r[f"{key}_covered"] for r in rows)
            mae = float(np.mean([abs(r[key] - r["realised"]) for r in rows]))
            width = float(np.mean([r[f"{key}_hi"] - r[f"{key}_lo"] for r in rows]))
            cells += [
                f"{cover / len(rows):.2f} {wilson_text(cover, len(rows))}",
                f"{100 * mae:.2f}",
                f"{100 * width:.1f}",
            ]
            figures[key] = (cover / len(rows), mae)
        if has_cbpe:
            cb_mae = float(np.mean([abs(r["cbpe"] - r["realised"]) for r in rows]))
            cb_cover = np.mean([r["cbpe_lo"] <= r["realised"] <= r["cbpe_hi"] for r in rows])
            cells += [f"{100 * cb_mae:.2f}", f"{cb_cover:.2f}"]
        else:
            cb_mae = None
            cells += ["not run", "not run"]
        out_rows.append(cells)
        if s is None:
            summary = {
                "coverage": figures["ours"][0],
                "mae": figures["ours"][1],
                "conf_coverage": figures["conf"][0],
                "conf_mae": figures["conf"][1],
                "cbpe_mae": cb_mae,
            }
    head = [
        "covariate shift",
        "windows",
        "realised accuracy (mean)",
        "ours (inputs weighted): 95 % interval coverage (Wilson)",
        "ours (inputs weighted): MAE, points",
        "ours (inputs weighted): interval width, points",
        "ours, confidences only [CBPE's inputs]: coverage",
        "ours, confidences only: MAE, points",
        "ours, confidences only: width, points",
        "CBPE (chunk_size = window): MAE, points",
        "CBPE: coverage of its +-3 sampling-error band",
    ]
    return markdown_table(head, out_rows), summary


def machine() -> dict[str, Any]:
    info = cpu_info()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": info["cpu"],
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cores": cores,
    }


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="drift detection and accuracy estimation: ours vs Evidently and NannyML"
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer windows per cell (a few minutes); says so in the output"
    )
    p.add_argument("--null-windows", type=int, help="unshifted windows per size (default 100; --quick 20)")
    p.add_argument("--shift-windows", type=int, help="windows per shift and size (default 50; --quick 10)")
    p.add_argument(
        "--bc-windows", type=int, help="windows per breast-cancer natural split (default 50; --quick 10)"
    )
    p.add_argument("--bc-splits", type=int, help="random breast-cancer splits (default 20; --quick 10)")
    p.add_argument("--bc-per-split", type=int, help="windows per random split (default 5; --quick 2)")
    p.add_argument(
        "--estimate-windows", type=int, help="estimate windows per shift size (default 50; --quick 15)"
    )
    p.add_argument(
        "--report-runs", type=int, help="Evidently Report.run per window size (default 2; --quick 1)"
    )
    p.add_argument(
        "--peers", default="evidently,nannyml,cbpe", help="comma-separated peers to run ('' for none)"
    )
    p.add_argument("--references", type=int, help="further references for ours alone (default 12; --quick 3)")
    p.add_argument(
        "--windows-per-reference", type=int, help="windows per further reference (default 25; --quick 10)"
    )
    p.add_argument("--skip-serve", action="store_true", help="do not measure the prediction log's cost")
    p.add_argument("--serve-timeout-s", type=float, default=600.0, help="limit for bench/serve_load.py")
    p.add_argument("--peer-timeout-s", type=float, default=1800.0, help="limit for one peer process")
    p.add_argument(
        "--keep-windows",
        action="store_true",
        help="keep this run's windows, job files and CBPE inputs (bench/out/drift/run-PID/)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-md", type=Path, default=OUT / "drift.md", help="Markdown copy")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "null_windows": (100, 20),
        "shift_windows": (50, 10),
        "bc_windows": (50, 10),
        "bc_splits": (20, 10),
        "bc_per_split": (5, 2),
        "estimate_windows": (50, 15),
        "report_runs": (2, 1),
        "references": (12, 3),
        "windows_per_reference": (25, 10),
    }
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if q else full)
        if getattr(args, key) < (0 if key == "report_runs" else 1):
            p.error(f"--{key.replace('_', '-')} must be positive")
    args.peers = {s.strip() for s in args.peers.split(",") if s.strip()}
    if args.peers - set(VENVS):
        p.error(f"unknown peers {sorted(args.peers - set(VENVS))}; known: {', '.join(VENVS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    try:
        groups, timing, est, serve, peers = measure(args)
    finally:
        if args.keep_windows:
            log(f"kept this run's windows, peer job files and CBPE inputs in {SCRATCH}")
        else:
            shutil.rmtree(SCRATCH, ignore_errors=True)
    elapsed = time.perf_counter() - started
    text, payload = report(groups, timing, est, serve, peers, machine(), args, elapsed)
    print(text)
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(text, encoding="utf-8")
    log(f"wrote {args.out_md} (the tables)")
    if "ratio" in serve:
        log(f"serve_load's own report: {WORK / 'serve_load.md'}")
    print(json_line(payload))
    return 0


def measure(
    args: argparse.Namespace,
) -> tuple[list[Group], Timing, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Every stage in turn: per window size ours then each peer; breast cancer; the estimate; the log's cost."""
    mach = machine()
    counts = f"{args.null_windows} unshifted and {args.shift_windows} per shift per window size"
    log(f"drift: {counts}{' (--quick)' if args.quick else ''}; {mach['cores']} cores, {mach['cpu']}")
    peers: dict[str, Any] = {}
    names = [f"x{j}" for j in range(N_FEATURES)]
    reference = correlated_normal(np.random.default_rng([args.seed, 0]), N_REF).astype(np.float32)
    ref = Reference(
        reference.astype(np.float64), names, seed=args.seed, conditional=True
    )  # one, calibrated per window size
    timing = Timing()
    groups: list[Group] = []
    for n in SIZES:  # interleaved per window size: ours, then each peer, on the same windows
        log(f"n={n:,}: drawing {args.null_windows + len(SHIFTS) * args.shift_windows} windows ...")
        g = synthetic_group(reference, n, args)
        groups.append(g)
        log(f"n={n:,}: ours ...")
        run_ours([g], names, timing, args.seed, ref)
        run_drift_peers([g], names, g.name, args, peers, timing)
        g.windows = g.windows[:0]  # free the memory; the files are gone too unless --keep-windows
    log("breast cancer: natural and random splits ...")
    bc, bc_names = breast_cancer_groups(args)
    run_ours(bc, bc_names, timing, args.seed)
    run_drift_peers(bc, bc_names, "bc", args, peers, timing)
    groups += bc
    log(f"ours over {args.references} further references ...")
    est = {"references": references_stage(args, names)}
    log("accuracy estimate under covariate shift ...")
    est.update(estimate_stage(args, peers))
    serve = {"why_not": "not measured: --skip-serve"} if args.skip_serve else None
    if serve is None:
        log("prediction log on vs off (bench/serve_load.py) ...")
        serve = serve_stage(args)
    return groups, timing, est, serve, peers


def report(
    groups: list[Group],
    timing: Timing,
    est: dict[str, Any],
    serve: dict[str, Any],
    peers: dict[str, Any],
    mach: dict[str, Any],
    args: argparse.Namespace,
    elapsed: float,
) -> tuple[str, dict[str, Any]]:
    fa_table, ours_fa = table_false_alarms(groups)
    cost_table, cost = table_cost(groups, timing, peers)
    est_table, est_sum = table_estimate(est)
    refs_table, refs_fa, refs_power = table_references(est["references"])
    scale = "QUICK RUN (--quick): counts scaled down, intervals wide" if args.quick else "full design"
    peer_lines = []
    for tool in ("evidently", "nannyml", "cbpe"):
        info = peers.get(tool, {})
        if "why_not" in info:
            peer_lines.append(f"- {tool}: {info['why_not']}")
        else:
            vers = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
            errors = f"; errors: {info['errors']}" if info.get("errors") else ""
            if info.get("warnings"):
                errors += "; its warnings (silenced, counted): " + "; ".join(
                    f"'{text}' x{count}"
                    for text, count in sorted(info["warnings"].items(), key=lambda kv: -kv[1])
                )
            peer_lines.append(
                f"- {tool}: {info.get('setting')} ({vers}; import {info.get('import_s', 0):.1f} s){errors}"
            )
    diffs = [
        r["report_max_score_diff"] for r in rows_of(groups) if r.get("report_max_score_diff") is not None
    ]
    shares = [
        (r["report_share"], r["ev_share"]) for r in rows_of(groups) if r.get("report_share") is not None
    ]
    agree = (
        f"Report.run ran on {len(diffs)} windows: its column scores differ from the verdicts' by at most "
        f"{max(diffs):.2g} and its drifted share matched in {sum(abs(a - b) < 1e-12 for a, b in shares)}/{len(shares)}."
        if diffs
        else "Report.run did not run."
    )
    ratio = serve.get("ratio")
    if ratio is not None:
        rps = ", ".join(f"{k} {v}" for k, v in serve["rps"].items())
        p99 = ", ".join(f"{k} {v}" for k, v in serve["p99_ms"].items())
        bad = serve["contended"]
        serve_text = (
            f"ours (prediction log on, the default) / ours --no-monitor at C=32 on the digits demo: **{ratio:.3f}x** "
            f"throughput (req/s: {rps}; p99 ms: {p99}; serve_load took {serve['elapsed_s']} s). "
            + (
                f"† Contended: other processes took more than 0.3 cores in every window of {', '.join(bad)}; "
                "do not quote the ratio."
                if bad
                else "Every server had clean windows."
            )
        )
    else:
        serve_text = serve.get("why_not", "not measured")
    ev_s, ours_s = cost["evidently"], cost["ours"]
    speed = f"; Evidently's Report.run / ours = {ev_s / ours_s:,.0f}x" if ev_s and ours_s else ""
    parts = [
        "# drift: modelyard's drift check and accuracy estimate vs Evidently and NannyML",
        "",
        f"{scale}: {args.null_windows} unshifted windows and {args.shift_windows} per shift at each window size; "
        f"reference {N_REF:,} x {N_FEATURES} (standard normal, {N_PAIRS} pairs correlated at {RHO}); each shift "
        f"in 1 random feature of {N_FEATURES}. Machine: {mach['cpu']}, {mach['cores']} cores, ISA "
        f"{' '.join(mach['isa']) or 'none of note'}; Python {platform.python_version()}, numpy {np.__version__}. "
        f"Took {elapsed / 60:.1f} min. Rates in %, 95 % Wilson intervals in brackets.",
        "",
        "Peers (each in its own venv, at its defaults unless the row says otherwise):",
        "",
        *peer_lines,
        f"- Evidently's verdicts on every window come from the per-column test `Report.run` itself calls "
        f"(bench/drift_peers.py); {agree}",
        "",
        "## False alarms on unshifted windows",
        "",
        fa_table,
        "",
        f"## Ours over {args.references} further references (each drawn afresh, calibrated on its own)",
        "",
        "The threshold holds the false-alarm rate on average over references; one reference's own deviation from "
        "the population moves its rate, more as the window nears the reference's size (the check's note says so "
        "below 4x). The table above is one reference; this one is the rate the threshold controls. The Wilson "
        "interval treats the windows as independent (windows of one reference share it: optimistic).",
        "",
        refs_table,
        "",
        "## Power at each detector's own threshold",
        "",
        table_power(groups, own=True),
        "",
        "## Power with each statistic re-thresholded to 5 % false alarms on the same unshifted windows (the fair comparison)",
        "",
        "The threshold is the smallest unshifted value with at most 5 % of the unshifted windows above it; the first "
        "rows give the false-alarm rate that achieved (ties, e.g. in a share of columns, can make it lower).",
        "",
        table_power(groups, own=False),
        "",
        f"## Breast cancer (scikit-learn): {BC_WINDOW}-row windows, 284-row references",
        "",
        f"Natural splits: reference = rows below the feature's median, {args.bc_windows} windows from the rows above. "
        f"Control: {args.bc_splits} random halves x {args.bc_per_split} windows (windows of one split share a "
        "reference, so the interval is optimistic). Re-thresholded: at the 95th percentile of the control windows.",
        "",
        table_breast_cancer(groups),
        "",
        "## Cost",
        "",
        cost_table,
        "",
        f"† other processes kept more than {MAX_OTHER_LOAD} cores busy while it was measured: do not quote it. "
        f"At n = {SIZES[-1]:,}: ours {fmt_s(ours_s, 4)} s per check{speed}"
        + (f" (contended: {', '.join(cost['contended'])})." if cost["contended"] else "."),
        "",
        f"## Accuracy estimate under covariate shift ({EST_WINDOW}-row windows)",
        "",
        f"Logistic regression on {EST_FEATURES} standard-normal features; true log-odds 2 x0 - 1.5 x1 + x2 x3 + "
        "0.75 (x4^2 - 1); trained on 4,000 rows; labelled reference 4,000 further rows (isotonic recalibration for "
        f"ours, CBPE's fit); windows' means shifted by the given distance along a random direction among the "
        f"{EST_USED} features the labels depend on, labels drawn from the true model (P(y | x) fixed). CBPE and "
        "'ours, confidences only' see the probabilities alone and assume the reference's calibration carries over; "
        "'ours (inputs weighted)' also sees the window's and the reference's input features (never a window's "
        "labels) and weights the reference's calibration error by their density ratio: a different setting from "
        "CBPE's, the one the monitor uses when the reference holds input features. "
        f"Accuracy on unshifted windows {est['model_accuracy_unshifted']:.3f}. Ours: "
        f"{est['ours_s'] * 1000:.1f} ms per estimate with inputs, {est['conf_s'] * 1000:.1f} ms without.",
        "",
        est_table,
        "",
        "## Prediction log cost",
        "",
        serve_text,
        "",
    ]
    fa = [abs(k / n - ALPHA) for kn in ours_fa.values() if kn for k, n in [kn]]
    fa_refs = [abs(r - ALPHA) for r in refs_fa.values()]
    power = rate(rows_of(groups, "n2000", "mean0.1"), "ours_alarm")
    payload = {
        "bench": "drift",
        "false_alarm_max_abs_error": rounded(max(fa_refs), 4) if fa_refs else None,
        "false_alarm_max_abs_error_one_reference": rounded(max(fa), 4) if fa else None,
        "power_mean0.1_n2000": rounded(power[0] / power[1], 3) if power else None,
        "power_mean0.1_n2000_over_references": rounded(refs_power, 3),
        "seconds_per_check_n10000": rounded(ours_s, 4),
        "evidently_seconds_per_check_n10000": rounded(ev_s, 3),
        "estimate_coverage": rounded(est_sum["coverage"], 3),
        "estimate_mae": rounded(est_sum["mae"], 4),
        "nannyml_cbpe_mae": rounded(est_sum["cbpe_mae"], 4),
        "estimate_coverage_confidences_only": rounded(est_sum["conf_coverage"], 3),
        "estimate_mae_confidences_only": rounded(est_sum["conf_mae"], 4),
        "logging_throughput_ratio": rounded(ratio, 3),
        "contended": cost["contended"] + (["serve"] if serve.get("contended") else []),
        "quick": bool(args.quick),
        "elapsed_s": round(elapsed),
    }
    return "\n".join(parts), payload


if __name__ == "__main__":
    sys.exit(main())
