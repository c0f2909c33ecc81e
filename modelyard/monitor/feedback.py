"""Labels that arrive after the prediction: parsing them (an HTTP body, a CSV or JSONL file), checking them,
and storing them in the prediction log's ``feedback`` table, all or nothing.

A label names a request by the id the server answered with (the ``x-request-id`` header, the OIP ``id``).
For a classifier whose classes the log knows, a label is a class index (``0 .. k-1``) or a class name (a
string, the index as a string also works) and is stored as the class index; otherwise any JSON scalar is kept
as given. A request with several rows takes one label per row as a list. A request labelled twice keeps both
labels; readers use the latest (see :class:`modelyard.monitor.log.PredictionLog`).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import DataError, ModelyardError
from modelyard.monitor.db import connect

MAX_SHOWN = 5
_CHUNK = 500  # ids per IN (...) query


class UnknownRequests(DataError):
    """Some ids are not in the prediction log (never logged, not sampled, or past retention)."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


@dataclass(frozen=True)
class FeedbackItem:
    """One label for one request id, as given."""

    request_id: str
    label: Any
    where: str = ""  # where it came from, for error messages ("line 3 of labels.csv")


@dataclass(frozen=True)
class FeedbackStored:
    """What :func:`store_feedback` stored: ``labels`` rows for ``requests`` distinct request ids in ``path``."""

    labels: int
    requests: int
    path: Path

    def summary(self) -> str:
        return f"stored {self.labels} labels for {self.requests} requests in {self.path}"


def _shown(values: Sequence[str]) -> str:
    head = ", ".join(repr(v) for v in values[:MAX_SHOWN])
    return head + (f" and {len(values) - MAX_SHOWN} more" if len(values) > MAX_SHOWN else "")


# ---------------------------------------------------------------------------------------------------
# parsing


def _item(doc: Any, where: str) -> FeedbackItem:
    if not isinstance(doc, Mapping):
        raise DataError(f'{where} must be an object {{"id": ..., "label": ...}}, got {type(doc).__name__}')
    extra = sorted(set(doc) - {"id", "label"})
    missing = [k for k in ("id", "label") if k not in doc]
    if missing or extra:
        raise DataError(
            f'{where} must have exactly the keys "id" and "label"'
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    rid = doc["id"]
    if not isinstance(rid, str) or not rid.strip():
        raise DataError(f"{where}: 'id' must be a non-empty string (a request id), got {rid!r}")
    return FeedbackItem(rid.strip(), doc["label"], where)


def parse_feedback_body(doc: Any) -> list[FeedbackItem]:
    """The items of a feedback request body: ``{"id", "label"}`` or ``{"feedback": [{"id", "label"}, ...]}``.
    DataError (one line) when it is neither."""
    if isinstance(doc, Mapping) and "feedback" in doc:
        if set(doc) != {"feedback"}:
            raise DataError(
                'a batch body must be {"feedback": [{"id": ..., "label": ...}, ...]} and nothing else'
            )
        items = doc["feedback"]
        if not isinstance(items, list) or not items:
            raise DataError('"feedback" must be a non-empty list of {"id": ..., "label": ...} objects')
        return [_item(d, f"feedback[{i}]") for i, d in enumerate(items)]
    if not isinstance(doc, Mapping):
        raise DataError(
            'the body must be a JSON object {"id": ..., "label": ...} or {"feedback": [...]}, got '
            f"{type(doc).__name__}"
        )
    return [_item(doc, "the body")]


def read_feedback_file(path: Path) -> list[FeedbackItem]:
    """The items of a ``.csv`` (header with ``id`` and ``label`` columns) or ``.jsonl`` (one object
    ``{"id", "label"}`` per line) file; DataError naming the line at the first problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feedback file {path} does not exist; give a .csv (id,label) or .jsonl file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read feedback file {path}: {e}") from None
    if suffix == ".csv":
        items = _read_csv(path, text)
    elif suffix in (".jsonl", ".ndjson"):
        items = _read_jsonl(path, text)
    else:
        raise DataError(
            f"feedback file {path} has suffix {suffix or '(none)'!r}; use .csv (header id,label) or .jsonl"
        )
    if not items:
        raise DataError(f"feedback file {path} holds no labels")
    return items


def _read_csv(path: Path, text: str) -> list[FeedbackItem]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise DataError(f"feedback file {path} is empty; it needs a header line 'id,label' and rows")
    cols = [h.strip() for h in header]
    if "id" not in cols or "label" not in cols:
        raise DataError(f"line 1 of {path} must be a header with columns 'id' and 'label', got {header!r}")
    i_id, i_label = cols.index("id"), cols.index("label")
    items = []
    for n, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"line {n} of {path.name}"
        if len(row) != len(cols):
            raise DataError(f"{where} has {len(row)} fields, the header {len(cols)}")
        rid, label = row[i_id].strip(), row[i_label].strip()
        if not rid or not label:
            raise DataError(f"{where}: both 'id' and 'label' must be given")
        items.append(FeedbackItem(rid, label, where))
    return items


def _read_jsonl(path: Path, text: str) -> list[FeedbackItem]:
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {n} of {path.name}"
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where} is not valid JSON ({e})") from None
        items.append(_item(doc, where))
    return items


# ---------------------------------------------------------------------------------------------------
# checking and storing


def normalize_label(
    label: Any, *, classes: Sequence[str] | None, rows: int, where: str, version: str = ""
) -> Any:
    """``label`` as stored: a class index for a known classifier, else the scalar given; a list of them for a
    request of several rows. DataError when it does not fit."""
    if isinstance(label, list):
        if len(label) != rows:
            raise DataError(
                f"{where}: a list label needs one label per row of the request ({rows}), got {len(label)}"
            )
        return [_one_label(v, classes, where, version) for v in label]
    return _one_label(label, classes, where, version)


def _one_label(label: Any, classes: Sequence[str] | None, where: str, version: str) -> Any:
    if classes is None:
        if label is None or isinstance(label, dict | list):
            raise DataError(f"{where}: the label must be a string, number or boolean, got {label!r}")
        return label
    k = len(classes)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < k:
        return label
    if isinstance(label, str):
        name = label.strip()
        if name in classes:
            return list(classes).index(name)
        if name.lstrip("-").isdigit() and 0 <= int(name) < k:
            return int(name)
    names = ", ".join(classes[:10]) + (", ..." if k > 10 else "")
    raise DataError(
        f"{where}: label {label!r} is not a class of {version or 'the model'}; give a class index 0..{k - 1} "
        f"or a class name ({names})"
    )


def store_feedback(
    path: Path,
    items: Iterable[FeedbackItem],
    *,
    model: str | None = None,
    source: str,
    now_unix_s: float | None = None,
) -> FeedbackStored:
    """Check every item and store them all in one transaction, or none: UnknownRequests when an id is not a
    logged request (of ``model``, when given), DataError when a label does not fit the classes of the version
    that answered. Predictions already logged are never touched."""
    items = list(items)
    if not items:
        raise DataError("no labels given; send at least one {id, label}")
    path = Path(path)
    if not path.exists():
        raise UnknownRequests(
            f"no prediction log at {path}, so no request id is known ({_shown([i.request_id for i in items])}); "
            "is the server logging (not --no-monitor), and is this the right --home?",
            sorted({i.request_id for i in items}),
        )
    at = time.time() if now_unix_s is None else now_unix_s
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            known = _requests(conn, sorted({i.request_id for i in items}), model)
            unknown = sorted({i.request_id for i in items} - set(known))
            if unknown:
                whose = f" of model {model!r}" if model else ""
                raise UnknownRequests(
                    f"unknown request id(s){whose}: {_shown(unknown)} (never logged, not sampled, or past "
                    "retention); nothing was stored",
                    unknown,
                )
            classes = _classes(conn)
            rows = []
            for it in items:
                version_key, n_rows = known[it.request_id]
                label = normalize_label(
                    it.label,
                    classes=classes.get(version_key),
                    rows=n_rows,
                    where=it.where or f"request {it.request_id!r}",
                    version=f"{version_key[0]} v{version_key[1]}",
                )
                rows.append((it.request_id, json.dumps(label), at, source))
            conn.executemany(
                "INSERT INTO feedback (request_id, label, at_unix_s, source) VALUES (?, ?, ?, ?)", rows
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        raise ModelyardError(f"cannot store feedback in {path}: {e}; retry when it is free") from e
    finally:
        conn.close()
    return FeedbackStored(len(items), len({i.request_id for i in items}), path)


def _requests(
    conn: sqlite3.Connection, ids: Sequence[str], model: str | None
) -> dict[str, tuple[tuple[str, str], int]]:
    """``{request id: ((model, version), rows)}`` for the ids logged (for ``model`` when given)."""
    out: dict[str, tuple[tuple[str, str], int]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT request_id, model, version, rows FROM predictions WHERE request_id IN ({marks})"
        args: list[Any] = chunk
        if model is not None:
            sql += " AND model = ?"
            args = [*chunk, model]
        for rid, m, v, n in conn.execute(sql, args):
            out[str(rid)] = ((str(m), str(v)), int(n))
    return out


def _classes(conn: sqlite3.Connection) -> dict[tuple[str, str], list[str] | None]:
    return {
        (str(m), str(v)): (None if c is None else [str(x) for x in json.loads(c)])
        for m, v, c in conn.execute("SELECT model, version, classes FROM served_versions")
    }
