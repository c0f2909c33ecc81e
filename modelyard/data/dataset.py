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
    ``x_cal``/``y_cal`` is an optional calibration split the model did not train on (temperature scaling and
    the OOD threshold are fitted there, never on the test split). ``slices`` maps a user-declared column
    name to one value per test item, for per-slice accuracy. ``datasheet`` is what the user declared about
    the data (source, licence, collection, ...).
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
    x_cal: Any = None
    y_cal: np.ndarray | None = None
    slices: dict[str, np.ndarray] = field(default_factory=dict)
    datasheet: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.x_cal is not None and self.y_cal is not None and len(self.x_cal) != len(self.y_cal):
            raise DataError(
                f"dataset {self.name!r}: {len(self.x_cal)} calibration inputs but {len(self.y_cal)} labels; "
                "give one label per example"
            )
        for col, values in self.slices.items():
            if len(values) != len(self.x_test):
                raise DataError(
                    f"dataset {self.name!r}: slice column {col!r} has {len(values)} values for "
                    f"{len(self.x_test)} test items; give one value per test item"
                )
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

    def calibration_split(self, *, fraction: float = 0.2, seed: int = 0) -> tuple[Any, Any, str] | None:
        """Inputs and labels to fit temperature and OOD thresholds on, and where they came from.

        The declared calibration split when there is one; otherwise a fixed stratified ``fraction`` of the
        train split (said so, since the model may have trained on it). Never the test split."""
        if self.x_cal is not None and len(self.x_cal):
            return self.x_cal, self.y_cal, "the declared calibration split"
        if self.y_train is None or len(self.x_train) < 20:
            return None
        rng = np.random.default_rng(seed)
        idx: list[int] = []
        for k in np.unique(self.y_train):
            members = np.flatnonzero(self.y_train == k)
            take = max(1, round(len(members) * fraction))
            idx.extend(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
        sel = np.sort(np.array(idx))
        x = self.x_train[sel] if isinstance(self.x_train, np.ndarray) else [self.x_train[i] for i in sel]
        how = (
            f"a fixed stratified {fraction:.0%} of the train split ({len(sel)} items); if the model trained on "
            "them the fitted temperature is too close to 1: declare a calibration split (x_cal, y_cal) to be sure"
        )
        return x, self.y_train[sel], how

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
        parts = [self.x_train, self.y_train, self.x_test, self.y_test]
        if self.x_cal is not None:
            parts += [self.x_cal, self.y_cal]
        for part in parts:
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
            "n_cal": 0 if self.x_cal is None else len(self.x_cal),
            "slice_columns": sorted(self.slices),
            "datasheet": self.datasheet,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "paraphrase_pairs": len(self.pairs),
            "fingerprint_sha256": self.fingerprint(),
            "source": self.source,
            "license": self.license,
        }
