"""Deterministic splits of a single-split dataset into a fit part and an evaluation (test) part.

Everything a pass or a check fits draws from the fit part; the evidence is measured on the test part. When
a dataset comes as one set of items (a file without an explicit test split, the built-in sentence set), it
is split here: seeded, stratified where there are labels, and with linked items (paraphrase pairs) kept on
one side, so that no link crosses the split. The returned note says how, for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import DataError


def _components(n: int, links: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Groups of items joined by links (union-find), each sorted, in order of their first item."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        if not (0 <= a < n and 0 <= b < n):
            raise DataError(f"link ({a}, {b}) names an item outside 0..{n - 1}; fix the pair indices")
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def split_indices(
    n: int,
    y: np.ndarray | None = None,
    *,
    test_size: float,
    seed: int,
    links: Sequence[tuple[int, int]] = (),
) -> tuple[np.ndarray, np.ndarray, str]:
    """Fit and test indices and a sentence saying how they were drawn.

    Stratified by ``y`` when every class has at least two items; with ``links``, whole linked groups are
    assigned to one side (groups shuffled with ``seed``, the test side filled up to ``test_size``)."""
    if not 0.0 < test_size < 1.0:
        raise DataError(f"test_size must be between 0 and 1 (exclusive), got {test_size!r}")
    if n < 4:
        raise DataError(f"dataset has {n} examples; at least 4 are needed to hold out a test split")
    n_test = int(np.ceil(n * test_size))
    if links:
        groups = _components(n, links)
        order = np.random.default_rng(seed).permutation(len(groups))
        test: list[int] = []
        for g in order:
            if len(test) >= n_test:
                break
            test.extend(groups[int(g)])
        te = np.array(sorted(test), dtype=np.int64)
        tr = np.setdiff1d(np.arange(n), te)
        how = (
            f"{len(te)} of {n} items held out for evaluation ({test_size:.0%}, seed {seed}), "
            f"linked items (paraphrase pairs) kept on one side"
        )
        return tr, te, how
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    k = len(np.unique(y)) if y is not None else 0
    stratify = y is not None and np.min(np.bincount(y)[np.unique(y)]) >= 2 and n_test >= k and n - n_test >= k
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y if stratify else None)
    how = (
        f"{len(te)} of {n} items held out for evaluation ({test_size:.0%}, seed {seed}"
        f"{', stratified by label' if stratify else ''})"
    )
    return tr, te, how


def take(x: Any, idx: np.ndarray) -> Any:
    """Items ``idx`` of an array (axis 0) or a list."""
    return x[idx] if isinstance(x, np.ndarray) else [x[int(i)] for i in idx]


def remap_links(links: Sequence[tuple[int, int]], kept: np.ndarray) -> list[tuple[int, int]]:
    """The links whose both ends are in ``kept``, renumbered to positions within ``kept``."""
    pos = {int(i): p for p, i in enumerate(kept)}
    return [(pos[a], pos[b]) for a, b in links if a in pos and b in pos]
