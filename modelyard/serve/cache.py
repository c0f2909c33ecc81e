"""Prediction cache: a bounded LRU map from a request's content (model, version, inputs, outputs) to its result.

The key is a SHA-256 over the model name, version, the requested outputs and every input's name, dtype,
shape and bytes, so equal requests hit whatever the order of their inputs, and any change of value, dtype or
shape misses. Cached values are shared between hits: callers must not modify them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError


def _object_bytes(arr: np.ndarray) -> bytes:
    """A BYTES (object) array's elements, each as a 4-byte length and its bytes (text as UTF-8)."""
    parts: list[bytes] = []
    for x in arr.ravel(order="C").tolist():
        if isinstance(x, bytes | bytearray | memoryview):
            b = b"b" + bytes(x)  # each element tagged by its type, so that "a" and b"a" differ
        elif isinstance(x, str):
            b = b"s" + x.encode("utf-8")
        else:
            b = b"r" + repr(x).encode("utf-8")
        parts.append(len(b).to_bytes(4, "little") + b)
    return b"".join(parts)


def _array_bytes(arr: np.ndarray) -> tuple[str, bytes]:
    """(dtype tag, raw bytes) of an array in a canonical byte order and layout."""
    if arr.dtype.kind == "O":
        return "object", _object_bytes(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.dtype.str, np.ascontiguousarray(arr).tobytes()


class PredictionCache:
    """LRU cache of at most ``max_items`` results; ``max_items = 0`` turns it off (nothing stored, nothing
    counted). ``hits`` and ``misses`` count :meth:`get` calls. Safe to use from several threads."""

    def __init__(self, max_items: int) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
            raise ConfigError(f"max_items must be an integer >= 0 (0 turns the cache off), got {max_items!r}")
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_items > 0

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def key(model: str, version: str, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> str:
        """SHA-256 hex digest of the request's content; ``outputs`` None (all outputs) differs from any list,
        and a list counts as a set (order and repeats do not matter)."""
        h = hashlib.sha256()
        names = sorted(feeds)
        blobs: list[bytes] = []
        inputs = []
        for name in names:
            arr = np.asarray(feeds[name])
            tag, blob = _array_bytes(arr)
            inputs.append([name, tag, list(arr.shape), len(blob)])
            blobs.append(blob)
        header = {
            "model": model,
            "version": str(version),
            "outputs": None if outputs is None else sorted(set(outputs)),
            "inputs": inputs,
        }
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        for blob in blobs:
            h.update(blob)
        return h.hexdigest()

    def get(self, key: str) -> Any | None:
        """The cached value (now the most recently used), or None; counts a hit or a miss."""
        if not self.enabled:
            return None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (None is not cached), evicting the least recently used item when full."""
        if not self.enabled or value is None:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every item (e.g. when the served version changes); the counters stay."""
        with self._lock:
            self._items.clear()
