"""Load a user's dataset: .npz (x, y), .csv (features plus a label column) or .jsonl (text, label)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.data.dataset import Dataset
from modelyard.errors import DataError

FORMATS = (".npz", ".csv", ".jsonl")


def _split(x: Any, y: np.ndarray | None, *, test_size: float, seed: int) -> tuple[Any, Any, Any, Any]:
    from sklearn.model_selection import train_test_split

    n = len(x)
    if n < 4:
        raise DataError(f"dataset has {n} examples; at least 4 are needed to hold out a test split")
    idx = np.arange(n)
    n_test = int(np.ceil(n * test_size))
    k = len(np.unique(y)) if y is not None else 0
    stratify = y is not None and np.min(np.bincount(y)[np.unique(y)]) >= 2 and n_test >= k and n - n_test >= k
    strat = y if stratify else None
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=strat)
    take = (lambda a, i: a[i]) if isinstance(x, np.ndarray) else (lambda a, i: [a[j] for j in i])
    return (
        take(x, tr),
        take(x, te),
        None if y is None else y[tr],
        None if y is None else y[te],
    )


def _labels(raw: Any, where: str) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{where}: labels must be whole class indices 0..K-1, found non-integer values")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integer class indices 0..K-1, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(arr.min())}")
    return arr.astype(np.int64)


def _features(raw: Any, where: str) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{where}: inputs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: inputs contain NaN or infinity; clean or impute them first")
    return arr


def load_npz(path: Path, *, test_size: float, seed: int) -> Dataset:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    keys = set(data.files)
    if {"x", "y"} <= keys:
        x, y = _features(data["x"], str(path)), _labels(data["y"], str(path))
        if len(x) != len(y):
            raise DataError(f"{path}: x has {len(x)} rows but y has {len(y)}; give one label per example")
        if len(x) == 0:
            raise DataError(f"{path} is empty: x has no rows")
        if {"x_test", "y_test"} <= keys:
            xtr, ytr = x, y
            xte, yte = _features(data["x_test"], str(path)), _labels(data["y_test"], str(path))
        else:
            xtr, xte, ytr, yte = _split(x, y, test_size=test_size, seed=seed)
    else:
        raise DataError(
            f"{path} must hold arrays 'x' and 'y' (optionally 'x_test', 'y_test'); it has: {sorted(keys)}"
        )
    return Dataset(path.stem, "image" if xtr.ndim >= 3 else "tabular", xtr, ytr, xte, yte)


def load_csv(path: Path, *, label_column: str, test_size: float, seed: int) -> Dataset:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DataError(f"{path} is empty: it needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if label_column not in header:
        raise DataError(
            f"{path} has no label column {label_column!r}; columns: {', '.join(header)}; pass --label-column"
        )
    li = header.index(label_column)
    try:
        x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], dtype=np.float32)
    except ValueError as exc:
        raise DataError(f"{path}: every feature column must be numeric ({exc})") from None
    raw = [r[li] for r in body]
    try:
        y = _labels(np.array([float(v) for v in raw]), str(path))
        classes = None
    except ValueError:
        classes = sorted(set(raw))
        y = np.array([classes.index(v) for v in raw], dtype=np.int64)
    x = _features(x, str(path))
    xtr, xte, ytr, yte = _split(x, y, test_size=test_size, seed=seed)
    return Dataset(path.stem, "tabular", xtr, ytr, xte, yte, classes=classes)


def load_jsonl(path: Path, *, test_size: float, seed: int) -> Dataset:
    texts: list[str] = []
    labels: list[Any] = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {i} is not valid JSON: {exc.msg}") from None
        if not isinstance(rec, dict) or "text" not in rec:
            raise DataError(f"{path} line {i}: each line must be an object with a 'text' field (and 'label')")
        texts.append(str(rec["text"]))
        labels.append(rec.get("label"))
    if not texts:
        raise DataError(f"{path} is empty: it needs at least one line with a 'text' field")
    y: np.ndarray | None
    classes = None
    if all(lab is None for lab in labels):
        y = None
    elif any(lab is None for lab in labels):
        raise DataError(f"{path}: some lines have a 'label' and some do not; label every line or none")
    elif all(isinstance(lab, int) for lab in labels):
        y = _labels(np.array(labels), str(path))
    else:
        classes = sorted({str(lab) for lab in labels})
        y = np.array([classes.index(str(lab)) for lab in labels], dtype=np.int64)
    xtr, xte, ytr, yte = _split(texts, y, test_size=test_size, seed=seed)
    return Dataset(path.stem, "text", xtr, ytr, xte, yte, classes=classes)


def load_dataset(
    path: str | Path,
    *,
    label_column: str = "label",
    test_size: float = 0.2,
    seed: int = 0,
    source: str | None = None,
    license: str | None = None,
) -> Dataset:
    """Load a dataset file; without an explicit test split, hold out ``test_size`` (stratified, fixed seed)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ds = load_npz(path, test_size=test_size, seed=seed)
    elif suffix == ".csv":
        ds = load_csv(path, label_column=label_column, test_size=test_size, seed=seed)
    elif suffix == ".jsonl":
        ds = load_jsonl(path, test_size=test_size, seed=seed)
    else:
        raise DataError(
            f"unknown data format {path.suffix or '(none)'!r} for {path}; use one of {', '.join(FORMATS)}"
        )
    ds.source, ds.license = source, license
    return ds
