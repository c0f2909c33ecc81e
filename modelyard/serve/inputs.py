"""A request's inputs as the served model takes them: :class:`PreparedInput` and the checks that build it.

Every problem is a ProtocolError 400 that says what was wrong and what the model takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.runtime.base import TensorSpec
from modelyard.serve.protocol import InferInput, ProtocolError

TEXT_INPUT = "text"  # the one input of a text model: BYTES, shape [-1]


@dataclass
class PreparedInput:
    """One request's validated inputs: named arrays (array models) or texts (text models), with its row count."""

    rows: int
    feeds: dict[str, np.ndarray] | None = None
    texts: list[str] | None = None

    def cache_feeds(self) -> dict[str, np.ndarray]:
        """The inputs as arrays for the prediction cache key."""
        if self.texts is not None:
            return {TEXT_INPUT: np.array(self.texts, dtype=object)}
        return dict(self.feeds or {})


def bad_request(message: str) -> ProtocolError:
    """A 400 answer saying ``message``."""
    return ProtocolError(message, 400)


def owned(value: Any) -> np.ndarray:
    """A C-contiguous, writable array (request buffers are read-only views; PyTorch warns on those)."""
    arr = np.asarray(value)
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, copy=True, order="C")
    return arr


def _describe(expected: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{n} ({m['datatype']}, shape {m['shape']})" for n, m in expected.items())


def texts_of(inp: InferInput) -> list[str]:
    """The texts of a text model's BYTES input (shape ``[N]`` or ``[N, 1]``, UTF-8)."""
    shape = list(inp.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise bad_request(f"input {TEXT_INPUT!r} must have shape [N] (or [N, 1]), got {shape}")
    out = []
    for i, v in enumerate(np.asarray(inp.data, dtype=object).ravel()):
        if isinstance(v, bytes | bytearray | memoryview):
            try:
                out.append(bytes(v).decode("utf-8"))
            except UnicodeDecodeError:
                raise bad_request(f"text {i} of input {TEXT_INPUT!r} is not valid UTF-8") from None
        elif isinstance(v, str):
            out.append(v)
        else:
            raise bad_request(f"text {i} of input {TEXT_INPUT!r} is {type(v).__name__}, not a string")
    return out


def json_array(spec: TensorSpec, rows: list[Any]) -> np.ndarray:
    """JSON rows as an array of the input's dtype; refuses ragged rows and values the dtype cannot hold."""
    try:
        raw = np.asarray(rows)
    except (ValueError, OverflowError):
        raise bad_request(f"input {spec.name!r}: rows must all have one shape and hold numbers") from None
    if raw.dtype.kind not in "biuf":
        raise bad_request(f"input {spec.name!r}: rows must all have one shape and hold numbers")
    with np.errstate(all="ignore"):
        arr = raw.astype(spec.dtype)
        exact = np.isinf(arr) <= np.isinf(raw) if arr.dtype.kind == "f" else arr.astype(raw.dtype) == raw
    if not np.all(exact):
        raise bad_request(f"input {spec.name!r} takes {spec.dtype} values; some values do not fit")
    return arr


def match_inputs(
    model: str, inputs: Sequence[InferInput], expected: Mapping[str, Mapping[str, Any]]
) -> dict[str, InferInput]:
    """The request's inputs by name, checked against the model's input metadata ``expected`` (name,
    datatype, shape); ProtocolError(400) lists every problem."""
    by_name: dict[str, InferInput] = {}
    for inp in inputs:
        if inp.name in by_name:
            raise bad_request(f"input {inp.name!r} is given twice; send each input once")
        by_name[inp.name] = inp
    problems = [
        f"missing input {n!r} ({m['datatype']}, shape {m['shape']})"
        for n, m in expected.items()
        if n not in by_name
    ]
    problems += [f"unexpected input {n!r}" for n in by_name if n not in expected]
    for n, inp in by_name.items():
        if n in expected and inp.datatype != expected[n]["datatype"]:
            problems.append(f"input {n!r} must have datatype {expected[n]['datatype']}, got {inp.datatype}")
    if problems:
        raise bad_request(f"model {model!r} takes {_describe(expected)}: " + "; ".join(problems))
    return by_name


def json_columns(model: str, specs: Sequence[TensorSpec], items: Sequence[Any]) -> dict[str, list[Any]]:
    """The simple JSON API's items, as one list of rows per input: records ``{input name: row}``, or rows of
    the single input."""
    if all(isinstance(it, Mapping) for it in items):
        names = [t.name for t in specs]
        bad = sorted({k for it in items for k in it if k not in names})
        missing = sorted({n for it in items for n in names if n not in it})
        if bad or missing:
            raise bad_request(
                f"records must have exactly the keys {names}; unexpected {bad}, missing {missing}"
            )
        return {t.name: [it[t.name] for it in items] for t in specs}
    if len(specs) == 1 and not any(isinstance(it, Mapping) for it in items):
        return {specs[0].name: list(items)}
    raise bad_request(
        f"model {model!r} has inputs {[t.name for t in specs]}: send records {{input name: row}}"
    )
