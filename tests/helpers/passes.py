"""Running a pass in a test: a pass context in its own work folder, and a candidate's accuracy."""

from __future__ import annotations

from pathlib import Path


def pass_context(tmp_path: Path, dataset, name: str = "step"):  # type: ignore[no-untyped-def]
    from modelyard.optimize.registry import PassContext

    workdir = tmp_path / name
    workdir.mkdir()
    return PassContext(workdir=workdir, dataset=dataset, seed=0)


def accuracy_of(cand, ds) -> float:  # type: ignore[no-untyped-def]
    from modelyard.runtime.preprocess import predict

    logits = predict(cand.load(), cand.preprocessor(), ds.x_test)
    return float((logits.argmax(1) == ds.y_test).mean())
