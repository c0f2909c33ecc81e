"""The "blobs" registry that the in-process, real-process and schemathesis server tests serve, and the
server settings for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelyard.config import Policy, Settings
from modelyard.pipeline import EvalOptions, run_pipeline
from modelyard.registry import Registry
from modelyard.serve.settings import ServeSettings

QUICK = EvalOptions(batch_sizes=(1, 8), latency_calls=10, min_time_s=0.05, measure_rss=False, n_resamples=200)
MODEL = "blobs"
DEADLINE_S = 60.0


def build_blobs_registry(home: Path, onnx_classifier: tuple[Path, Path]) -> Registry:
    """A registry with model "blobs": v1 the user's ONNX classifier, v2 its re-exported copy, both with serving
    rules (temperature, an OOD rule fitted on a far-away set, the input contract); champion v1."""
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    model, data = onnx_classifier
    ds = load_dataset(data)
    base = load_baseline(model, ds)
    far = 40.0 + np.random.default_rng(7).normal(size=(60, 6))
    run_pipeline(
        base,
        ds,
        model_name=MODEL,
        model_source="test",
        recipes=["onnx"],
        policy=Policy(),
        settings=Settings(home=home),
        options=QUICK,
        ood_data={"far": far.astype(np.float32)},
    )
    registry = Registry(home)
    aliases = registry.list_models()[0]["aliases"]
    if aliases.get("champion") != 1:
        registry.promote(MODEL, 1, reason="test: serve version 1 first")
    return registry


def settings_for(registry: Registry, **overrides: Any) -> ServeSettings:
    values: dict[str, Any] = {
        "home": registry.home,
        "models": (f"{MODEL}:1",),
        "threads": 1,
        "warmup_calls": 1,
    }
    values.update(overrides)
    return ServeSettings.from_env({}, **values)
