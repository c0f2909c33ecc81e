"""The defaults the CLI takes from the library: the recipes `optimize` tries and the `--quick` preset."""

from __future__ import annotations

from pathlib import Path

from modelyard.candidate import Candidate
from modelyard.evaluate.run import EvalOptions
from modelyard.optimize.recipes import default_recipes


def _baseline(fmt: str, tokenizer_dir: Path | None = None) -> Candidate:
    return Candidate("baseline", fmt, Path("model"), None, tokenizer_dir=tokenizer_dir)  # type: ignore[arg-type]


def test_default_recipes_by_kind_of_baseline() -> None:
    assert default_recipes(_baseline("onnx")) == ["onnx", "onnx > int8-auto"]
    assert default_recipes(_baseline("torch")) == ["onnx", "onnx > int8-auto", "prune(0.5) > onnx"]
    assert default_recipes(_baseline("hf", Path("tok"))) == ["onnx", "onnx > int8-auto"]


def test_quick_preset() -> None:
    quick = EvalOptions.quick()
    assert (quick.batch_sizes, quick.latency_calls, quick.min_time_s, quick.n_resamples) == (
        (1, 32),
        50,
        0.15,
        1000,
    )
    assert (quick.measure_rss, quick.backdoor_scan) == (True, True)
    assert EvalOptions.quick() != EvalOptions()
