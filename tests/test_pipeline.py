"""The pipeline's own guarantees: produced candidates are checked before they count, skips carry reasons."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from modelyard.config import Policy
from modelyard.data.loaders import load_dataset
from modelyard.errors import PassSkipped
from modelyard.optimize import registry as pass_registry
from modelyard.optimize.baseline import load_baseline
from modelyard.optimize.recipes import available_passes
from modelyard.pipeline import build_candidates


@dataclass(frozen=True)
class BrokenConfig:
    mode: str = "corrupt"


def broken_pass(candidate, config, ctx):  # type: ignore[no-untyped-def]
    if config.mode == "skip":
        raise PassSkipped("cannot apply to this model, on purpose")
    if config.mode == "crash":
        raise RuntimeError("a bug in a pass")
    out = ctx.workdir / "model.onnx"
    out.write_bytes(candidate.path.read_bytes()[:100])  # saves fine, fails to load
    return replace(candidate, path=out)


@pytest.fixture
def with_broken_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    available_passes()  # the real passes first, so they do not overwrite the test's entry
    info = pass_registry.PassInfo("broken", BrokenConfig, broken_pass, "test-only pass")
    monkeypatch.setitem(pass_registry._PASSES, "broken", info)


def test_candidates_that_fail_to_load_are_skipped_with_the_reason(
    with_broken_pass: None, tmp_path: Path, onnx_classifier: tuple[Path, Path]
) -> None:
    model, data = onnx_classifier
    ds = load_dataset(data)
    base = load_baseline(model, ds)
    recipes = ["broken", "broken(mode='skip')", "broken(mode='crash')", "int8-static", "broken > int8-static"]
    cands, skipped = build_candidates(base, ds, recipes, tmp_path, policy=Policy(), threads=1)
    assert [c.name for c in cands] == ["int8-static"]
    reasons = {s["pass"]: s["reason"] for s in skipped}
    assert "fails to load or run" in reasons["broken"]
    assert reasons["broken(mode='skip')"] == "cannot apply to this model, on purpose"
    assert "RuntimeError: a bug in a pass" in reasons["broken(mode='crash')"]
    assert len(skipped) == 3  # the chain after a broken step is not retried
    good = cands[0]
    assert good.parent == "baseline" and good.passes[0]["pass"] == "int8-static"
    assert any("checked against its parent" in n for n in good.notes)


def test_shared_prefixes_are_built_once(tmp_path: Path, onnx_classifier: tuple[Path, Path]) -> None:
    model, data = onnx_classifier
    ds = load_dataset(data)
    base = load_baseline(model, ds)
    cands, _ = build_candidates(
        base, ds, ["int8-static", "int8-static > onnx(optimize=True)"], tmp_path, policy=Policy(), threads=1
    )
    names = [c.name for c in cands]
    assert names.count("int8-static") == 1
