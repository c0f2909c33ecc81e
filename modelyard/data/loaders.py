"""Load a user's dataset: .npz (x, y), .csv (features plus a label column) or .jsonl (text, label)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.data.dataset import Dataset, Modality
from modelyard.data.splits import split_indices, take
from modelyard.errors import DataError

FORMATS = (".npz", ".csv", ".jsonl")


def _split(x: Any, y: np.ndarray | None, *, test_size: float, seed: int) -> tuple[Any, Any, Any, Any, str]:
    tr, te, how = split_indices(len(x), y, test_size=test_size, seed=seed)
    return take(x, tr), take(x, te), None if y is None else y[tr], None if y is None else y[te], how


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
            how = "the file's own test split (x_test, y_test)"
        else:
            xtr, xte, ytr, yte, how = _split(x, y, test_size=test_size, seed=seed)
    else:
        raise DataError(
            f"{path} must hold arrays 'x' and 'y' (optionally 'x_test', 'y_test', 'x_cal', 'y_cal'); "
            f"it has: {sorted(keys)}"
        )
    xcal = ycal = None
    if {"x_cal", "y_cal"} <= keys:
        xcal, ycal = _features(data["x_cal"], str(path)), _labels(data["y_cal"], str(path))
    elif "x_cal" in keys or "y_cal" in keys:
        raise DataError(f"{path}: a calibration split needs both 'x_cal' and 'y_cal'")
    modality: Modality = "image" if xtr.ndim >= 3 else "tabular"
    return Dataset(path.stem, modality, xtr, ytr, xte, yte, x_cal=xcal, y_cal=ycal, split=how)


def load_csv(
    path: Path, *, label_column: str, test_size: float, seed: int, slice_columns: tuple[str, ...] = ()
) -> Dataset:
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
    missing = [c for c in slice_columns if c not in header]
    if missing:
        raise DataError(
            f"{path} has no slice column(s) {', '.join(map(repr, missing))}; columns: {', '.join(header)}"
        )
    skip = {li, *(header.index(c) for c in slice_columns)}
    try:
        x = np.array([[float(v) for j, v in enumerate(r) if j not in skip] for r in body], dtype=np.float32)
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
    tr, te, how = split_indices(len(x), y, test_size=test_size, seed=seed)
    slices = {c: np.array([body[i][header.index(c)] for i in te]) for c in slice_columns}
    return Dataset(
        path.stem, "tabular", x[tr], y[tr], x[te], y[te], classes=classes, slices=slices, split=how
    )


def _text_records(path: Path, *, what: str) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, each checked to have a 'text' field; blank lines skipped."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {i} is not valid JSON: {exc.msg}") from None
        if not isinstance(rec, dict) or "text" not in rec:
            raise DataError(f"{path} line {i}: each line must be an object with {what}")
        out.append(rec)
    return out


def load_jsonl(path: Path, *, test_size: float, seed: int) -> Dataset:
    texts: list[str] = []
    labels: list[Any] = []
    for rec in _text_records(path, what="a 'text' field (and 'label')"):
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
    xtr, xte, ytr, yte, how = _split(texts, y, test_size=test_size, seed=seed)
    return Dataset(path.stem, "text", xtr, ytr, xte, yte, classes=classes, split=how)


def load_dataset(
    path: str | Path,
    *,
    label_column: str = "label",
    test_size: float = 0.2,
    seed: int = 0,
    source: str | None = None,
    license: str | None = None,
    slice_columns: tuple[str, ...] = (),
    datasheet: str | Path | None = None,
) -> Dataset:
    """Load a dataset file; without an explicit test split, hold out ``test_size`` (stratified, fixed seed).
    ``slice_columns`` (CSV only) are kept out of the features and used for per-slice accuracy. A
    ``datasheet`` (TOML or JSON) is kept with the dataset and gives source and licence when not passed."""
    from modelyard.data.audit import read_datasheet

    sheet = read_datasheet(datasheet) if datasheet is not None else None
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ds = load_npz(path, test_size=test_size, seed=seed)
    elif suffix == ".csv":
        ds = load_csv(
            path, label_column=label_column, test_size=test_size, seed=seed, slice_columns=slice_columns
        )
    elif suffix == ".jsonl":
        ds = load_jsonl(path, test_size=test_size, seed=seed)
    else:
        raise DataError(
            f"unknown data format {path.suffix or '(none)'!r} for {path}; use one of {', '.join(FORMATS)}"
        )
    if slice_columns and suffix != ".csv":
        raise DataError(f"slice columns need a .csv dataset; {path.name} is {suffix}")
    ds.source = source or (sheet or {}).get("source")
    ds.license = license or (sheet or {}).get("license")
    ds.datasheet = sheet
    return ds


def load_ood_set(path: str | Path) -> dict[str, Any]:
    """A user's out-of-distribution set: .npz (array 'x', or every array as a named set), .jsonl ('text'
    per line) or .txt (one text per line). Returns set name -> inputs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"OOD data file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"cannot read {path} as .npz: {exc}") from None
        if not data.files:
            raise DataError(f"{path} holds no arrays; put the OOD inputs in an array named 'x'")
        names = ["x"] if "x" in data.files else list(data.files)
        return {(path.stem if n == "x" else n): _features(data[n], str(path)) for n in names}
    if suffix == ".txt":
        return {path.stem: [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]}
    if suffix == ".jsonl":
        return {path.stem: [str(r["text"]) for r in _text_records(path, what="a 'text' field")]}
    raise DataError(
        f"unknown OOD data format {path.suffix or '(none)'!r} for {path}; use .npz, .jsonl or .txt"
    )
