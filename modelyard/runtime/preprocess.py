"""Turn raw inputs (arrays or texts) into the named feeds a Runner takes, and batch predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import DataError
from modelyard.runtime.base import Runner

Preprocessor = Callable[[Any], dict[str, np.ndarray]]


class ArrayPreprocessor:
    """Feeds a numeric array to the runner's single input, cast to its dtype."""

    def __init__(self, input_name: str, dtype: str = "float32") -> None:
        self.input_name = input_name
        self.dtype = dtype

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        return {self.input_name: np.ascontiguousarray(np.asarray(x, dtype=self.dtype))}


class TokenizerPreprocessor:
    """Tokenizes texts with a Hugging Face fast tokenizer from a local folder.

    ``pad_to`` = None pads each batch to its longest text (natural length); an int pads to that length.
    Only the feeds the runner declares are returned.
    """

    def __init__(
        self,
        tokenizer_dir: str | Path,
        input_names: Sequence[str],
        max_length: int = 128,
        pad_to: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_dir) / "tokenizer.json"
        if not path.is_file():
            raise DataError(
                f"no tokenizer.json in {tokenizer_dir}; a text model needs its fast tokenizer saved beside it"
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.input_names = tuple(input_names)
        self.max_length = max_length
        self.pad_to = pad_to
        self.tokenizer_dir = Path(tokenizer_dir)

    def __call__(self, texts: Any) -> dict[str, np.ndarray]:
        texts = [str(t) for t in texts]
        if self.pad_to:
            self.tokenizer.enable_padding(length=self.pad_to)
        else:
            self.tokenizer.enable_padding()
        enc = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        return {k: v for k, v in feeds.items() if k in self.input_names}


def predict(
    runner: Runner,
    preprocess: Preprocessor,
    x: Any,
    *,
    batch_size: int = 64,
    output: str | None = None,
) -> np.ndarray:
    """Run ``x`` through ``preprocess`` and ``runner`` in batches; return the main output stacked."""
    name = output or runner.spec.output_name
    n = len(x)
    if n == 0:
        raise DataError("cannot predict on an empty dataset; pass at least one example")
    parts = []
    for start in range(0, n, batch_size):
        batch = x[start : start + batch_size]
        parts.append(np.asarray(runner.run(preprocess(batch))[name]))
    return np.concatenate(parts, axis=0)
