"""The champion watch: alpha spent over epochs keeps a healthy champion's false alarms within ``watch_alpha`` over
a long life; a drop in realised or estimated accuracy, more errors or more OOD flags are caught; the state
round-trips; and in a served app a champion whose labels go wrong is rolled back to the earlier one (the audit
log says why, with the statistics), a healthy one is left alone and its watch resumes after a restart, and one
with no earlier champion only alarms."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.config import RolloutPolicy
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.rollout.watch import ChampionWatch, WatchBaseline, epoch_alpha
from modelyard.serve import champion_watch
from tests.helpers.models import make_blobs
from tests.helpers.serving import MODEL, app_client, build_blobs_registry, infer_body, settings_for

DEADLINE_S = 60.0
BASE = WatchBaseline(offline_accuracy=0.9, reference_confidence=0.9, offline_ood_rate=0.02)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------------------------------------------
# the watch, offline


def test_epoch_levels_sum_to_alpha() -> None:
    assert sum(epoch_alpha(0.01, j) for j in range(1, 100_000)) == pytest.approx(0.01, rel=1e-4)
    assert epoch_alpha(0.01, 1) == pytest.approx(0.005)
    with pytest.raises(ConfigError, match="epochs count from 1"):
        epoch_alpha(0.01, 0)


def _healthy_run(rng: np.random.Generator, policy: RolloutPolicy, ticks: int) -> bool:
    """A champion whose error rate and accuracy sit exactly at their thresholds (the hardest healthy case), fed
    in ticks of 250 requests and 50 labels; True when the watch alarmed."""
    watch = ChampionWatch(policy, WatchBaseline(offline_accuracy=0.9))
    wrong = 1.0 - 0.9 + policy.watch_max_accuracy_drop_points / 100.0
    for _ in range(ticks):
        failed = int(rng.binomial(250, policy.watch_max_error_rate))
        watch.requests(answered=250 - failed, failed=failed)
        bad = int(rng.binomial(50, wrong))
        watch.labels(right=50 - bad, wrong=bad)
        if watch.alarm() is not None:
            return True
    return False


def test_a_healthy_champion_stays_within_alpha_over_its_whole_life() -> None:
    """At alpha 0.1 and epochs of 500 observations, 100 champions of 100,000 requests each (200 error epochs,
    40 accuracy epochs) with both signals exactly at their thresholds: at most 10 alarms (the level). A fresh
    alpha per epoch instead of a spent one alarms on 24 of them."""
    policy = RolloutPolicy(watch_alpha=0.1, watch_epoch=500)
    rng = np.random.default_rng(0)
    alarms = sum(_healthy_run(rng, policy, ticks=400) for _ in range(100))
    assert alarms <= 10


def test_each_signal_is_caught_when_it_crosses() -> None:
    policy = RolloutPolicy()
    rng = np.random.default_rng(1)

    worse = ChampionWatch(policy, BASE)  # accuracy 0.9 offline, 0.7 live (margin 5 points)
    n = 0
    while worse.alarm() is None and n < 2_000:
        right = bool(rng.random() < 0.7)
        worse.labels(right=int(right), wrong=int(not right))
        n += 1
    alarm = worse.alarm()
    assert alarm is not None and alarm.signals == ("accuracy",) and n < 400
    assert "accuracy" in alarm.reason and "epoch 1" in alarm.reason

    errors = ChampionWatch(policy, BASE)
    errors.requests(answered=950, failed=50)  # 5% failed, limit 1%
    assert errors.alarm() is not None and errors.alarm().signals == ("errors",)  # type: ignore[union-attr]

    ood = ChampionWatch(policy, BASE)
    for _ in range(100):
        ood.ood(flagged=int(rng.binomial(10, 0.3)), rows=10)
    assert ood.alarm() is not None and "ood_rate" in ood.alarm().signals  # type: ignore[union-attr]

    estimated = ChampionWatch(policy, BASE)
    n = 0
    while estimated.alarm() is None and n < 5_000:
        estimated.confidence(float(np.clip(0.7 + rng.normal(0, 0.1), 0, 1)))  # 20 points below
        n += 1
    assert estimated.alarm() is not None and n < 1_000


def test_signals_without_a_baseline_are_left_out() -> None:
    watch = ChampionWatch(RolloutPolicy(), WatchBaseline())
    assert list(watch.signals) == ["errors"]
    assert watch.signals["errors"].alpha == pytest.approx(RolloutPolicy().watch_alpha)
    watch.labels(right=0, wrong=1)  # no accuracy baseline: ignored
    watch.ood(flagged=1, rows=1)
    assert watch.alarm() is None


def test_state_round_trips_and_epochs_move_on() -> None:
    policy = RolloutPolicy(watch_epoch=100)
    watch = ChampionWatch(policy, BASE)
    watch.requests(answered=250, failed=0)
    for i in range(30):
        watch.labels(right=int(i % 10 != 0), wrong=int(i % 10 == 0))
        watch.confidence(0.88)
    assert watch.signals["errors"].epoch == 3 and watch.signals["errors"].test.n == 50
    saved = json.loads(json.dumps(watch.state()))
    again = ChampionWatch(policy, BASE)
    again.restore(saved)
    assert again.statistics() == watch.statistics()
    again.restore({"schema": 999})  # an unknown schema is ignored
    assert again.statistics() == watch.statistics()
    fresh = ChampionWatch(policy, BASE)
    fresh.restore({"schema": 1, "signals": {"errors": {"epoch": "x", "test": {}}}})
    assert fresh.signals["errors"].epoch == 1 and fresh.signals["errors"].test.n == 0


# ---------------------------------------------------------------------------------------------------
# the watch in a served app


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Path:
    home = tmp_path_factory.mktemp("watch-home") / "home"
    build_blobs_registry(home, onnx_classifier)  # v1 champion, v2 an identical copy
    return home


@pytest.fixture
def registry(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setattr(champion_watch, "WATCH_TICK_S", 3600.0)  # the test ticks the watch itself
    home = tmp_path / "home"
    shutil.copytree(built, home)
    return Registry(home)


async def _traffic(client: httpx.AsyncClient, n: int, *, wrong: bool) -> None:
    """``n`` one-row requests, each labelled with its own class (``wrong``: a class it did not predict)."""
    x, _ = make_blobs(n=n, seed=0)
    for k in range(n):
        r = await client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x[k : k + 1]))
        assert r.status_code == 200, r.text
        logits = np.asarray(r.json()["outputs"][0]["data"]).reshape(-1)
        predicted = int(np.argmax(logits))
        label = (predicted + 1) % 3 if wrong else predicted
        fb = await client.post(
            f"/v2/models/{MODEL}/feedback", json={"id": r.headers["x-request-id"], "label": label}
        )
        assert fb.status_code == 200, fb.text


async def _tick_until(watcher: champion_watch.ChampionWatcher, done: object, ticks: int = 50) -> None:
    for _ in range(ticks):
        await watcher.tick()
        if callable(done) and done():
            return


@pytest.mark.anyio
async def test_a_champion_whose_labels_go_wrong_is_rolled_back(registry: Registry) -> None:
    registry.promote(MODEL, 2, reason="test: version 2 serves, version 1 before it")
    settings = settings_for(registry, models=(f"{MODEL}@champion",))
    async with app_client(settings, registry) as (app, client):
        state = app.state.serve
        watcher = state.watcher
        await watcher.tick()  # the watch starts: traffic from here on is judged
        await _traffic(client, 40, wrong=True)
        await _tick_until(watcher, lambda: state.slots[MODEL].current.model.version == 1)
        assert state.slots[MODEL].current.model.version == 1  # swapped in without following aliases
        assert registry.resolve(f"{MODEL}@champion") == (MODEL, 1)
        last = registry.audit_log(MODEL)[-1]
        assert last["action"] == "rollback" and last["to_version"] == 1
        assert "champion watch" in last["reason"] and "accuracy" in last["reason"]
        assert '"method": "beta-binomial mixture SPRT"' in last["reason"]  # the statistics
        metrics = (await client.get("/metrics")).text
        assert f'modelyard_champion_watch_alarm{{model="{MODEL}",version="2"}} 1.0' in metrics
        r = await client.post(f"/v2/models/{MODEL}/infer", json=infer_body(make_blobs(n=1, seed=3)[0]))
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        await watcher.tick()  # the new champion gets a fresh watch
        assert [(w["version"], w["alarm"]) for w in watcher.status()] == [(1, None)]


@pytest.mark.anyio
async def test_a_healthy_champion_is_kept_and_its_watch_resumes_after_a_restart(registry: Registry) -> None:
    settings = settings_for(registry, models=(MODEL,))
    async with app_client(settings, registry) as (app, client):
        watcher = app.state.serve.watcher
        await watcher.tick()
        await _traffic(client, 30, wrong=False)
        await asyncio.to_thread(app.state.serve.monitor.flush, 10.0)
        await watcher.tick()
        before = {s["name"]: s for s in watcher.status()[0]["statistics"]}
    assert before["accuracy"]["n"] == 30 and before["accuracy"]["k"] == 0
    assert before["estimated_accuracy"]["n"] == 30 and before["errors"]["n"] == 30
    assert registry.resolve(f"{MODEL}@champion") == (MODEL, 1)
    async with app_client(settings, registry) as (app, client):
        watcher = app.state.serve.watcher
        await watcher.tick()
        after = {s["name"]: s for s in watcher.status()[0]["statistics"]}
        assert after == before  # resumed, not restarted, and nothing counted twice
        await _traffic(client, 5, wrong=False)
        await asyncio.to_thread(app.state.serve.monitor.flush, 10.0)
        await watcher.tick()
        assert {s["name"]: s for s in watcher.status()[0]["statistics"]}["accuracy"]["n"] == 35


@pytest.mark.anyio
async def test_with_no_earlier_champion_it_only_alarms(registry: Registry) -> None:
    audit_before = registry.audit_log(MODEL)
    settings = settings_for(registry, models=(f"{MODEL}@champion",))
    async with app_client(settings, registry) as (app, client):
        watcher = app.state.serve.watcher
        await watcher.tick()
        await _traffic(client, 40, wrong=True)
        await _tick_until(watcher, lambda: watcher.status()[0]["alarm"] is not None)
        alarm = watcher.status()[0]["alarm"]
        assert alarm is not None and alarm["signals"] == ["accuracy"]
        assert alarm["outcome"].startswith("alarm only: the champion could not be rolled back")
        assert app.state.serve.slots[MODEL].current.model.version == 1
    assert registry.audit_log(MODEL) == audit_before
    stored = champion_watch.load_stored(settings.monitor_path, MODEL)
    assert stored is not None and stored["version"] == "1" and stored["alarm"]["signals"] == ["accuracy"]


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"watch_alpha": 0}, "watch_alpha must be in (0, 1)"),
        ({"watch_alpha": 1.5}, "[rollout] watch_alpha is a fraction"),
        ({"watch_epoch": 2.5}, "[rollout] watch_epoch must be a whole number"),
        ({"on_champion_alarm": "page"}, "[rollout] on_champion_alarm must be one of rollback, alarm"),
    ],
)
def test_a_malformed_watch_table_is_one_line(table: dict[str, object], says: str) -> None:
    from modelyard.config import policy_from_dict

    with pytest.raises(ConfigError) as err:
        policy_from_dict({"rollout": table})
    assert says in str(err.value) and "\n" not in str(err.value)
