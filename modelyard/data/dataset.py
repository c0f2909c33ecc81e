"""The in-memory dataset every step works on: a fit part (train, and a calibration split) and a held-out
test part (the evaluation items).

Fit and measure never share items: whatever a pass or a check fits (calibration ranges, smoothing, the
sensitivity search, temperature, OOD thresholds) draws from the fit part, through ``fit_sample`` /
``fit_part``, which never fall back to test items; the evidence is measured on the test part."""

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
    the data (source, licence, collection, ...). ``split`` says how the test part was separated from the fit
    part (for the report).
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
    split: str | None = None

    def __post_init__(self) -> None:
        if self.x_train is self.x_test or (self.x_cal is not None and self.x_cal is self.x_test):
            raise DataError(
                f"dataset {self.name!r}: the train (or calibration) split is the test split; passes and checks "
                "would fit on the items they are judged on. Hold out a test split (see "
                "modelyard.data.splits.split_indices) or give separate train and test items"
            )
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

    def fit_part(self) -> FitData:
        """The fit part alone (train and calibration splits): what passes may see. It holds no test item."""
        return FitData(
            self.name, self.modality, self.x_train, self.y_train, self.x_cal, self.y_cal, self.classes
        )

    def fit_inputs(self) -> Any:
        """The inputs fitted quantities come from (see ``FitData.fit_inputs``); raises when there are none."""
        return self.fit_part().fit_inputs()

    def fit_sample(self, n: int = 128, seed: int = 0) -> Any:
        """A fixed random sample of fit items (see ``FitData.fit_sample``); raises when there are none."""
        return self.fit_part().fit_sample(n, seed)

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
            "split": self.split or "as given (separate train and test items)",
            "slice_columns": sorted(self.slices),
            "datasheet": self.datasheet,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "paraphrase_pairs": len(self.pairs),
            "fingerprint_sha256": self.fingerprint(),
            "source": self.source,
            "license": self.license,
        }


@dataclass(frozen=True)
class FitData:
    """The fit part of a Dataset: train inputs and labels and the optional calibration split. Passes get
    this, never the Dataset, so no pass can fit on (or even see) a test item."""

    name: str
    modality: Modality
    x_train: Any
    y_train: np.ndarray | None
    x_cal: Any = None
    y_cal: np.ndarray | None = None
    classes: list[str] | None = None

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def num_classes(self) -> int | None:
        if self.classes:
            return len(self.classes)
        ys = [y for y in (self.y_train, self.y_cal) if y is not None and len(y)]
        return int(max(int(np.max(y)) for y in ys) + 1) if ys else None

    def fit_inputs(self) -> Any:
        """The inputs passes and checks fit on: the train split, or the calibration split when the train split
        is empty. Raises when both are empty: fitted quantities are never drawn from the test split."""
        for part in (self.x_train, self.x_cal):
            if part is not None and len(part):
                return part
        raise DataError(
            f"dataset {self.name!r} has no fit items (its train and calibration splits are empty), and "
            "fitted quantities are never drawn from the test split; give training inputs"
        )

    def fit_sample(self, n: int = 128, seed: int = 0) -> Any:
        """A fixed random sample of at most ``n`` of ``fit_inputs()`` (in their order); raises when there are
        none. Quantization calibration, smoothing and the fidelity checks of a pass draw from here."""
        pool = self.fit_inputs()
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
        if isinstance(pool, np.ndarray):
            return pool[idx]
        return [pool[i] for i in idx]
