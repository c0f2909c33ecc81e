"""The in-memory dataset every step works on: a train split and a held-out test split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelyard.errors import DataError

Modality = Literal["image", "tabular", "text"]


@dataclass
class Dataset:
    """Train and test splits of one dataset.

    ``x_*`` is a float array (images: N,C,H,W; tabular: N,F) or a list of texts. ``y_*`` holds integer
    class indices, or is None for unlabeled embedding data. ``pairs`` (embedding data only) lists
    index pairs (i, j) of paraphrases within the test split, used for retrieval quality.
    """

    name: str
    modality: Modality
    x_train: Any
    y_train: np.ndarray | None
    x_test: Any
    y_test: np.ndarray | None
    classes: list[str] | None = None
    pairs: list[tuple[int, int]] = field(default_factory=list)
    source: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        if len(self.x_test) == 0:
            raise DataError(f"dataset {self.name!r} has an empty test split; it needs at least one example")
        if self.y_test is not None and len(self.y_test) != len(self.x_test):
            raise DataError(
                f"dataset {self.name!r}: {len(self.x_test)} test inputs but {len(self.y_test)} labels; "
                "give one label per example"
            )
        if self.y_train is not None and len(self.y_train) != len(self.x_train):
            raise DataError(
                f"dataset {self.name!r}: {len(self.x_train)} train inputs but {len(self.y_train)} labels; "
                "give one label per example"
            )

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_test(self) -> int:
        return len(self.x_test)

    @property
    def num_classes(self) -> int | None:
        if self.classes:
            return len(self.classes)
        ys = [y for y in (self.y_train, self.y_test) if y is not None and len(y)]
        return int(max(int(np.max(y)) for y in ys) + 1) if ys else None

    def calibration_sample(self, n: int = 128, seed: int = 0) -> Any:
        """A fixed random sample of training inputs, for static quantization calibration."""
        pool = self.x_train if len(self.x_train) else self.x_test
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
        if isinstance(pool, np.ndarray):
            return pool[idx]
        return [pool[i] for i in idx]

    def fingerprint(self) -> str:
        """SHA-256 over the canonical bytes of both splits (inputs as float32 or UTF-8 text, labels as int64)."""
        h = hashlib.sha256()
        for part in (self.x_train, self.y_train, self.x_test, self.y_test):
            if part is None:
                h.update(b"none")
            elif isinstance(part, np.ndarray):
                arr = np.ascontiguousarray(part, dtype=np.int64 if part.dtype.kind in "iub" else np.float32)
                h.update(json.dumps(list(arr.shape)).encode())
                h.update(arr.tobytes())
            else:
                for t in part:
                    h.update(str(t).encode("utf-8") + b"\0")
            h.update(b"|")
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modality": self.modality,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "paraphrase_pairs": len(self.pairs),
            "fingerprint_sha256": self.fingerprint(),
            "source": self.source,
            "license": self.license,
        }
