"""The input contract (metrics.md 5.7, input validation): built from a Runner spec, enforced on feeds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from modelyard.errors import ConfigError
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.security.contract import check_inputs, input_contract
from tests.helpers.models import tiny_bert_candidate

PIXELS = RunnerSpec(
    inputs=(TensorSpec("pixels", "float32", (None, 1, 8, 8)),),
    outputs=(TensorSpec("logits", "float32", (None, 10)),),
    task="classification",
    num_classes=10,
    value_range=(0.0, 1.0),
)
TOKENS = RunnerSpec(
    inputs=(
        TensorSpec("input_ids", "int64", (None, None)),
        TensorSpec("attention_mask", "int64", (None, None)),
    ),
    outputs=(TensorSpec("embedding", "float32", (None, 32)),),
    task="embedding",
    extra={"vocab_size": 22, "max_length": 32},
)


def pixels(n: int = 2, value: float = 0.5) -> dict[str, np.ndarray]:
    return {"pixels": np.full((n, 1, 8, 8), value, dtype=np.float32)}


def test_image_contract_from_the_spec() -> None:
    contract = input_contract(PIXELS)
    assert contract == {
        "inputs": [
            {
                "name": "pixels",
                "dtype": "float32",
                "shape": [None, 1, 8, 8],
                "value_range": [0.0, 1.0],
                "finite": True,
            }
        ],
        "text": False,
    }
    assert json.loads(json.dumps(contract)) == contract


def test_value_range_override_and_observed_range() -> None:
    seen = np.array([[0.1, 0.7], [np.nan, 0.3]])
    contract = input_contract(PIXELS, value_range=(-1, 2), observed={"pixels": seen})
    entry = contract["inputs"][0]
    assert entry["value_range"] == [-1.0, 2.0]
    assert entry["observed_range"] == [pytest.approx(0.1), pytest.approx(0.7)]


def test_float_input_without_a_known_range() -> None:
    spec = RunnerSpec(
        inputs=(TensorSpec("features", "float32", (None, 30)),),
        outputs=(TensorSpec("logits", "float32", (None, 2)),),
        task="classification",
        num_classes=2,
    )
    entry = input_contract(spec)["inputs"][0]
    assert (entry["value_range"], entry["finite"]) == (None, True)
    assert check_inputs(input_contract(spec), {"features": np.full((3, 30), 1e9, dtype=np.float32)}) == []


def test_token_contract_is_a_text_contract() -> None:
    contract = input_contract(TOKENS)
    assert contract["text"] is True
    assert contract["max_length"] == 32
    ids, mask = contract["inputs"]
    assert ids == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": [None, None],
        "value_range": [0.0, 21.0],
        "finite": False,
    }
    assert mask["value_range"] == [0.0, 1.0]
    assert input_contract(TOKENS, max_length=64)["max_length"] == 64


def test_contract_of_a_hugging_face_candidate(tmp_path: Any) -> None:
    cand = tiny_bert_candidate(tmp_path / "bert", "classification")
    contract = input_contract(cand.spec, max_length=cand.meta["max_length"])
    assert contract["text"] is True and contract["max_length"] == 32
    assert [e["name"] for e in contract["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert contract["inputs"][0]["value_range"] is None  # hf_spec records no vocab_size
    feeds = cand.preprocessor()(["good movie", "the film was not very bad"])
    assert check_inputs(contract, feeds) == []


def test_a_valid_feed_has_no_violations() -> None:
    contract = input_contract(PIXELS)
    assert check_inputs(contract, pixels(5)) == []
    assert check_inputs(contract, pixels(1, 1.0)) == []  # the bounds are inclusive
    ids = np.array([[2, 5, 21, 3]], dtype=np.int64)
    assert check_inputs(input_contract(TOKENS), {"input_ids": ids, "attention_mask": np.ones_like(ids)}) == []


@pytest.mark.parametrize(
    ("feeds", "expected"),
    [
        (
            {"pixels": np.zeros((2, 3, 8, 8), dtype=np.float32)},
            ["input 'pixels': expected shape (N, 1, 8, 8), got (2, 3, 8, 8)"],
        ),
        (
            {"pixels": np.zeros((1, 8, 8), dtype=np.float32)},
            ["input 'pixels': expected shape (N, 1, 8, 8), got (1, 8, 8)"],
        ),
        (
            {"pixels": np.zeros((2, 1, 8, 8), dtype=np.float64)},
            ["input 'pixels': expected dtype float32, got float64"],
        ),
        ({"x": np.zeros(3)}, ["missing input 'pixels'", "unexpected input 'x'"]),
        ({**pixels(), "y": np.zeros(1)}, ["unexpected input 'y'"]),
        ({"pixels": np.zeros((0, 1, 8, 8), dtype=np.float32)}, ["input 'pixels': empty batch (0 items)"]),
        (
            {"pixels": np.array([["a"] * 8] * 8)[None, None]},
            [
                "input 'pixels': expected dtype float32, got <U1",
                "input 'pixels': values are <U1, not real numbers",
            ],
        ),
        (
            {"pixels": [[1.0], [1.0, 2.0]]},
            ["input 'pixels': not an array of numbers (ragged or not numeric)"],
        ),
    ],
)
def test_each_violation_is_named(feeds: dict[str, Any], expected: list[str]) -> None:
    assert check_inputs(input_contract(PIXELS), feeds) == expected


def test_values_outside_the_range_and_non_finite_values() -> None:
    x = pixels(2)["pixels"]
    x[0, 0, 0, :3] = [1.5, -0.1, 7.0]
    x[1, 0, 0, 0] = np.nan
    x[1, 0, 0, 1] = np.inf
    problems = check_inputs(input_contract(PIXELS), {"pixels": x})
    assert problems == [
        "input 'pixels': NaN or infinite values (2 of 128)",
        "input 'pixels': 3 values outside [0, 1]",
    ]


def test_token_ids_outside_the_vocabulary_and_ragged_batches() -> None:
    contract = input_contract(TOKENS)
    ids = np.array([[2, 22, 3], [2, -1, 3]], dtype=np.int64)
    mask = np.array([[1, 1, 2]], dtype=np.int64)
    assert check_inputs(contract, {"input_ids": ids, "attention_mask": mask}) == [
        "input 'input_ids': 2 values outside [0, 21]",
        "input 'attention_mask': 1 values outside [0, 1]",
        "inputs disagree on the batch size: 'input_ids' has 2, 'attention_mask' has 1",
    ]
    assert check_inputs(contract, {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids)})[
        0
    ] == ("input 'input_ids': expected dtype int64, got int32")


def test_every_violation_is_reported_at_once() -> None:
    x = np.full((2, 1, 8, 4), 9.0)
    problems = check_inputs(input_contract(PIXELS), {"pixels": x, "extra": x})
    assert problems == [
        "unexpected input 'extra'",
        "input 'pixels': expected dtype float32, got float64",
        "input 'pixels': expected shape (N, 1, 8, 8), got (2, 1, 8, 4)",
        "input 'pixels': 64 values outside [0, 1]",
    ]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: input_contract(PIXELS, value_range=(1.0, 0.0)), r"lo <= hi, got \[1, 0\]"),
        (
            lambda: input_contract(PIXELS, value_range=("a", "b")),  # type: ignore[arg-type]
            "pair \\[lo, hi\\] of numbers",
        ),
        (
            lambda: input_contract(PIXELS, observed={"x": [1.0]}),
            "observed data names inputs the spec does not declare",
        ),
        (
            lambda: check_inputs({"inputs": "pixels"}, pixels()),
            "contract must be a dict with an 'inputs' list",
        ),
        (lambda: check_inputs({"inputs": [{"name": "p"}]}, pixels()), "lacks a name or dtype"),
        (
            lambda: check_inputs(input_contract(PIXELS), [1, 2]),  # type: ignore[arg-type]
            "feeds must be a dict",
        ),
    ],
)
def test_bad_arguments_raise_config_errors(call: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


def test_a_contract_survives_a_json_round_trip_and_still_enforces() -> None:
    contract = json.loads(json.dumps(input_contract(TOKENS)))
    bad = np.array([[0, 99]], dtype=np.int64)
    assert check_inputs(contract, {"input_ids": bad, "attention_mask": np.ones_like(bad)}) == [
        "input 'input_ids': 1 values outside [0, 21]"
    ]
