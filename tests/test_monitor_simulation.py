"""The monitoring simulation (issue 11, "Done when"): the digits demo registered by the pipeline (its own
PyTorch model, with its monitor reference), served by the real server (`modelyard serve` in its own process on
127.0.0.1), fed clean traffic and then three shifts.

- Clean traffic: test items (never used for fitting), drawn with replacement, one per request, every request
  labelled. Over ``CLEAN_WINDOWS`` disjoint windows of ``WINDOW`` requests the monitor raises an alarm in at
  most ``MAX_CLEAN_ALARMS`` of them: a detector whose false-alarm rate is ``ALPHA`` (5 %) per window exceeds
  that bound with probability below 0.5 %. Measured: 0 alarms in the 30 windows here, 2 in 150 windows over
  five other traffic seeds (1.3 %). Windows of 200 requests alarmed in 2 of 40 (5 %): the 360 test items are
  a finite pool whose own sampling deviation from the fit items adds to every window drawn from it, the more
  so the larger the window.
- Shifts, each one window of ``WINDOW`` requests after the last: brightness (+0.2 on every pixel), Gaussian
  noise (sd 0.2), and letters (a class the model never saw). Documented detection delay: an alarm fires on
  the first window made only of shifted requests, i.e. within ``WINDOW`` = 100 requests (every shift, in all
  six traffic seeds), and it names what moved: the reconstruction error of the image on the reference's
  principal components (``residual``: brighter or noisier images leave the digits' subspace), with its mean
  shift in pixel units, and for letters also the OOD flag rate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy.stats import binom

from modelyard.cli import main
from modelyard.config import Policy, Settings
from modelyard.data.ood_sets import digits_ood
from modelyard.monitor import MonitorStatus, history, load_reference, reference_for, watch
from modelyard.monitor.log import PredictionLog
from modelyard.monitor.reference import FILE_NAME
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from tests.helpers.serving import DEADLINE_S, FAST, server_process

MODEL = "digits-cnn"
WINDOW = 100  # requests per window, one item each: the documented detection delay
CLEAN_WINDOWS = 30
ALPHA = 0.05
MAX_CLEAN_ALARMS = int(binom.isf(0.005, CLEAN_WINDOWS, ALPHA))  # 5: P(Bin(30, 5 %) > 5) < 0.5 %
CONCURRENT = 16


@dataclass
class Simulation:
    home: Path
    version: int
    clean: list[MonitorStatus]
    shifted: dict[str, MonitorStatus]


def _body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }


async def _send(client: Any, items: np.ndarray, labels: np.ndarray | None = None) -> None:
    """One request per item (at most CONCURRENT in flight), then the labels as feedback when given."""
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(x: np.ndarray) -> str:
        async with gate:
            r = await client.post(f"/v2/models/{MODEL}/infer", json=_body(x[None]))
            assert r.status_code == 200, r.text
            return str(r.headers["x-request-id"])

    ids = await asyncio.gather(*(one(x) for x in items))
    if labels is not None:
        body = {"feedback": [{"id": i, "label": int(y)} for i, y in zip(ids, labels, strict=True)]}
        r = await client.post(f"/v2/models/{MODEL}/feedback", json=body)
        assert r.status_code == 200, r.text


def _wait_logged(log: PredictionLog, version: int, n: int) -> None:
    """Poll the prediction log (deadline-bound) until the server's writer committed ``n`` requests."""
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while len(log.window(MODEL, version=version)) < n:
        assert time.monotonic() < deadline, f"the server logged fewer than {n} requests before the deadline"
        pause.wait(0.05)


async def _simulate(
    home: Path, version: int, x_test: np.ndarray, y_test: np.ndarray, log_dir: Path
) -> Simulation:
    registry = Registry(home)
    reference = reference_for(registry, MODEL, version)
    rng = np.random.default_rng(0)
    log = PredictionLog.at_home(home)
    shifted: dict[str, MonitorStatus] = {}
    # the real server: `modelyard serve` in its own process on 127.0.0.1, its writer thread committing the log
    with server_process(home, log_dir, f"{MODEL}:{version}", "--monitor-every-s", "0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as client:
            idx = rng.integers(0, len(x_test), CLEAN_WINDOWS * WINDOW)
            await _send(client, x_test[idx], y_test[idx])
            logged = CLEAN_WINDOWS * WINDOW
            await asyncio.to_thread(_wait_logged, log, version, logged)
            clean = history(log, reference, model=MODEL, version=version, window=WINDOW, alpha=ALPHA)
            shifts = {
                "brightness": np.clip(x_test[rng.integers(0, len(x_test), WINDOW)] + 0.2, 0.0, 1.0),
                "noise": np.clip(
                    x_test[rng.integers(0, len(x_test), WINDOW)] + rng.normal(0.0, 0.2, (WINDOW, 1, 8, 8)),
                    0.0,
                    1.0,
                ),
                "letters": digits_ood(n_per_set=WINDOW, seed=0)["letters"],
            }
            for name, items in shifts.items():
                await _send(client, items.astype(np.float32))
                logged += WINDOW
                await asyncio.to_thread(_wait_logged, log, version, logged)
                shifted[name] = watch(
                    log, reference, model=MODEL, version=version, window=WINDOW, alpha=ALPHA
                )
    return Simulation(home, version, clean, shifted)


@pytest.fixture(scope="module")
def simulation(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    home = tmp_path_factory.mktemp("monitor-simulation")
    result = run_pipeline(
        digits.baseline,
        digits.dataset,
        model_name=MODEL,
        model_source="digits demo",
        recipes=[],  # the demo's own PyTorch model (its built-in factory is recorded as trusted)
        policy=Policy(),
        settings=Settings(home=home),
        options=FAST,
    )
    ds = digits.dataset
    logs = tmp_path_factory.mktemp("monitor-simulation-server")
    return asyncio.run(_simulate(home, result.versions["baseline"], ds.x_test, ds.y_test, logs))


def test_the_version_is_registered_with_a_reference_from_fit_items_only(
    simulation: Simulation, digits: Any
) -> None:
    registry = Registry(simulation.home)
    ds = digits.dataset
    stored = {f["path"]: f for f in registry.get_version(MODEL, simulation.version)["files"]}
    assert FILE_NAME in stored and stored[FILE_NAME]["size_bytes"] < 400_000
    ref = reference_for(registry, MODEL, simulation.version)
    assert ref.inputs is not None and ref.inputs.kind == "projection" and ref.inputs.projection is not None
    assert ref.inputs.feature_names == (*(f"pc{i}" for i in range(1, 9)), "residual")
    # the fit part only: the components fitted on a third of train + calibration, the reference rows the rest
    n_fit = len(ds.x_train) + len(ds.x_cal)
    assert ref.inputs.rows.shape == (n_fit - n_fit // 3, 9)
    assert ref.predictions is not None and ref.predictions.labels is not None
    assert sorted(ref.predictions.labels.tolist()) == sorted(ds.y_cal.tolist())  # the calibration split
    # the calibration items' input features, as logged, for the estimate's density-ratio weights
    assert ref.predictions.features is not None and ref.predictions.features.shape == (len(ds.y_cal), 9)
    assert ref.ood is not None and ref.ood.n_offline == len(ds.x_test)  # the evidence's rate, with its n
    assert ref.accuracy is not None and ref.accuracy.n == len(ds.x_test) and ref.accuracy.interval
    path = registry.artifacts.path_for(stored[FILE_NAME]["sha256"])
    assert load_reference(path).digest == ref.digest


def test_clean_windows_alarm_at_most_at_the_configured_rate(simulation: Simulation) -> None:
    clean = simulation.clean
    assert len(clean) == CLEAN_WINDOWS and all(s.requests == WINDOW for s in clean)
    for status in clean:
        checks = {s.name: s for s in status.signals}
        # four checks may alarm on a clean window, each at a quarter of the window's false-alarm rate
        for name in ("drift.inputs", "drift.ood_rate", "accuracy.estimated", "accuracy.realised"):
            assert checks[name].alarm is not None and checks[name].level == pytest.approx(ALPHA / 4)
        # the calibration split (216 items) is too small to alarm on the outputs of 100 rows: shown only
        assert checks["drift.outputs"].alarm is None
        assert checks["drift.inputs"].measurement.unit == "sd"
        assert checks["accuracy.realised"].measurement.details["rows"] == WINDOW
        assert "density ratio" in checks["accuracy.estimated"].measurement.details["method"]
    alarms = sum(s.alarm for s in clean)
    assert alarms <= MAX_CLEAN_ALARMS, [s.summary() for s in clean if s.alarm]
    realised = np.mean([s.signal("accuracy.realised").measurement.value for s in clean])  # type: ignore[union-attr]
    assert realised > 0.95  # the offline accuracy is 97.5 %


@pytest.mark.parametrize("shift", ["brightness", "noise", "letters"])
def test_a_shift_alarms_within_one_window_and_names_what_moved(simulation: Simulation, shift: str) -> None:
    status = simulation.shifted[shift]
    assert status.requests == WINDOW and status.alarm, status.summary()
    inputs = next(a for a in status.alarms if a.check == "drift.inputs")
    moved = {f.name: f for f in inputs.moved}
    assert "residual" in moved and moved["residual"].mean_shift > 0  # in the data's own units
    assert "residual" in inputs.message and "mean" in inputs.message
    if shift == "letters":
        ood = next(a for a in status.alarms if a.check == "drift.ood_rate")
        assert "OOD flag rate" in ood.message
        rate = status.signal("drift.ood_rate")
        assert rate is not None and rate.measurement.value is not None
        assert rate.measurement.value > 3 * rate.measurement.details["offline_rate"]


def test_the_cli_shows_the_status_and_refuses_an_unknown_model(
    simulation: Simulation, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(simulation.home)
    assert main(["monitor", "status", MODEL, "--home", home, "--window", str(WINDOW)]) == 0
    out = capsys.readouterr().out
    assert f"{MODEL}:{simulation.version}" in out and "drift.inputs" in out and "ALARM" in out
    assert "1 with alarms" in out and "residual" in out
    assert main(["monitor", "status", "no-such-model", "--home", home]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "digits-cnn" in err and "Traceback" not in err
