"""The null distribution of the max-over-features drift statistic, drawn by splitting the reference.

A null window must be as far from the reference as a fresh window of unshifted traffic would be. Drawing it
from the reference and comparing it with the whole reference would not do: the window's rows would be part of
what it is compared with, which pulls the statistic down and the threshold with it (too many alarms).
Each null draw therefore splits a pool of reference rows in two disjoint parts, a pseudo-window of
``n_sub`` rows drawn without replacement and the ``M - n_sub`` rows left, and scores the first against the
second, all features on the same rows (so correlated features stay correlated and the max is the max of the
real joint). Every draw uses a new split, so the null also carries the reference's own sampling noise.

Both effect sizes are, to first order, fixed functionals of the empirical processes, so they scale as
``sqrt(1/n + 1/N)`` for a window of n rows against a reference of N rows, whatever the split between the two
terms. A draw made at sizes ``(n_sub, M - n_sub)`` is rescaled by
``sqrt((1/n + 1/N) / (1/n_sub + 1/(M - n_sub)))``. Up to ``MAX_SUB_ROWS`` rows the pseudo-window has the
window's size and the factor only corrects for the rest being ``M - n`` rows instead of N (1-3 %); larger
windows are calibrated at ``MAX_SUB_ROWS`` rows (or half the pool) and rescaled, which bounds the cost.

The threshold controls the false-alarm rate on average over reference samples; a given reference's own
deviation from the population is unknowable from it and shifts its rate. That spread is negligible when the
reference is many times the window and grows as the window approaches it (measured at alpha = 5 %, 30
features: per-reference rates within about a point at N = 5n, from 0 % to 35 % at N = n), so the result's
``note`` warns when the reference has fewer than 4 windows' worth of rows.

The computation is vectorised over draws and each numeric column is sorted once: a draw's W1 comes from its
sorted ranks in the pool and the pool's quantile function, O(n log n) per draw and column; categorical counts
are one matrix product of the draws' membership masks with the columns' one-hot codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import rel_entr

__all__ = ["MAX_SUB_ROWS", "NullPlan", "Pool", "js_distance", "null_effects", "plan_null"]

# Pseudo-windows have at most this many rows; larger windows use the sqrt(1/n + 1/N) law from there.
MAX_SUB_ROWS = 2_000
# The pool of reference rows a draw splits: the whole reference, or at least _MIN_POOL_ROWS rows and
# _POOL_PER_WINDOW times the pseudo-window, at most _MAX_POOL_ROWS.
_MIN_POOL_ROWS = 4_000
_POOL_PER_WINDOW = 8
_MAX_POOL_ROWS = 20_000
# A reference smaller than this many windows gets a note: its own sampling noise is then a large part of
# the statistic's, and the false-alarm rate of one reference strays from alpha (by ~1 point at 5x).
_SAFE_REFERENCE_PER_WINDOW = 4
# Entries of one (draws x pool rows) block of random keys, to bound memory (16 MB).
_BLOCK_ENTRIES = 2_000_000


@dataclass(frozen=True)
class NullPlan:
    """How the null is drawn for windows of ``n_window`` rows against a reference of ``n_reference`` rows."""

    n_window: int
    n_reference: int
    pool_rows: int
    n_sub: int
    scale: float
    note: str

    def describe(self) -> str:
        text = f"each {self.n_sub} reference rows drawn without replacement, scored against {self.pool_rows - self.n_sub} others"
        if self.n_sub != self.n_window:
            text += f", rescaled to n={self.n_window} by the sqrt(1/n + 1/N) law (x{self.scale:.3f})"
        return text


def plan_null(n_window: int, n_reference: int) -> NullPlan:
    """The pool size, pseudo-window size and rescaling factor for windows of ``n_window`` rows."""
    wanted = min(n_window, MAX_SUB_ROWS)
    pool = min(n_reference, max(_MIN_POOL_ROWS, _POOL_PER_WINDOW * wanted), _MAX_POOL_ROWS)
    n_sub = min(wanted, pool // 2)
    scale = math.sqrt((1.0 / n_window + 1.0 / n_reference) / (1.0 / n_sub + 1.0 / (pool - n_sub)))
    note = ""
    if n_reference < _SAFE_REFERENCE_PER_WINDOW * n_window:
        note = (
            f"the reference ({n_reference} rows) is less than {_SAFE_REFERENCE_PER_WINDOW}x the window ({n_window} "
            "rows): the false-alarm rate is alpha on average over reference samples, but for this one it can be "
            "several points off (measured at alpha = 5 % with a window as large as the reference: 0-35 % per "
            f"reference); use a reference of at least {_SAFE_REFERENCE_PER_WINDOW * n_window} rows"
        )
    return NullPlan(n_window, n_reference, pool, n_sub, scale, note)


def js_distance(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Jensen–Shannon distance (base 2, in [0, 1]) between distributions along the last axis."""
    m = 0.5 * (p + q)
    div = 0.5 * (rel_entr(p, m).sum(axis=-1) + rel_entr(q, m).sum(axis=-1)) / math.log(2.0)
    return np.asarray(np.sqrt(np.clip(div, 0.0, 1.0)), dtype=np.float64)


@dataclass(frozen=True)
class Pool:
    """Reference rows prepared for null draws: numeric columns standardised and sorted, categorical one-hot."""

    rows: int
    order: NDArray[np.intp]  # (d_num, rows): the row indices sorting each numeric column
    rank: NDArray[np.intp]  # (d_num, rows): each row's position in its column's sort
    values: NDArray[np.float64]  # (d_num, rows): each column sorted, as (x - mean) / sd
    prefix: NDArray[np.float64]  # (d_num, rows + 1): cumulative sums of ``values`` / rows
    onehot: NDArray[np.float32]  # (rows, total categories)
    counts: NDArray[np.float64]  # (total categories,): pool counts
    bounds: tuple[tuple[int, int], ...]  # each categorical column's slice of the one-hot columns

    @classmethod
    def build(
        cls,
        numeric: NDArray[np.float64],
        mean: NDArray[np.float64],
        sd: NDArray[np.float64],
        codes: NDArray[np.intp],
        n_categories: tuple[int, ...],
    ) -> Pool:
        """``numeric`` (rows, d_num), standardised with the reference's ``mean`` and ``sd``; ``codes``
        (rows, d_cat) in [0, K_j). Both have the pool's rows, even when one has no columns."""
        rows = numeric.shape[0]
        order = np.argsort(numeric, axis=0, kind="stable").T.copy()
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(rows), axis=1)
        values = (np.take_along_axis(numeric.T, order, axis=1) - mean[:, None]) / sd[:, None]
        prefix = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(values, axis=1) / rows], axis=1)
        offsets = np.concatenate([[0], np.cumsum(n_categories, dtype=np.intp)])
        onehot = np.zeros((rows, int(offsets[-1])), dtype=np.float32)
        for j in range(codes.shape[1]):
            onehot[np.arange(rows), offsets[j] + codes[:, j]] = 1.0
        bounds = tuple((int(offsets[j]), int(offsets[j + 1])) for j in range(len(n_categories)))
        return cls(rows, order, rank, values, prefix, onehot, onehot.sum(axis=0, dtype=np.float64), bounds)

    def integral(self, j: int, u: NDArray[np.float64]) -> NDArray[np.float64]:
        """G(u): the integral from 0 to u of column ``j``'s quantile function."""
        i = np.minimum(np.floor(u * self.rows).astype(np.intp), self.rows - 1)
        return np.asarray(self.prefix[j, i] + (u * self.rows - i) * self.values[j, i] / self.rows)


def _w1_by_ranks(pool: Pool, chosen: NDArray[np.intp]) -> NDArray[np.float64]:
    """W1 (draws, d_num) of each draw's rows against the whole pool, from the quantile functions.

    The draw's k-th smallest value a = s[r] (r its rank in the pool) holds on u in [k/n, (k+1)/n); the pool's
    quantile function crosses a at u = r/M; with G the integral of the pool's quantile function, that piece
    of the integral of |Q_draw - Q_pool| is a (2c - u0 - u1) + G(u0) + G(u1) - 2 G(c), c = r/M clipped to
    [u0, u1] (so G(c) is G(u0), G(u1) or prefix[r]). O(n log n) per draw: one sort of the draw's ranks.
    """
    n_sub = chosen.shape[1]
    rows = pool.rows
    k = np.arange(n_sub)
    u0, u1 = k / n_sub, (k + 1) / n_sub
    out = np.empty((chosen.shape[0], pool.order.shape[0]), dtype=np.float64)
    for j in range(pool.order.shape[0]):
        g0, g1 = pool.integral(j, u0), pool.integral(j, u1)
        r = pool.rank[j][chosen]
        r.sort(axis=1)
        a = pool.values[j][r]
        piece = r * (2.0 / rows)
        piece -= u0 + u1
        piece *= a
        piece += g0 + g1
        piece -= 2.0 * pool.prefix[j][r]
        before = a * (-1.0 / n_sub)  # c below u0: the whole piece lies where the pool's quantile is >= a
        before += g1 - g0
        scaled = r * n_sub
        np.copyto(piece, before, where=scaled < k * rows)
        np.copyto(piece, -before, where=scaled > (k + 1) * rows)
        out[:, j] = piece.sum(axis=1)
    return out


def null_effects(pool: Pool, n_sub: int, n_draws: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Effect sizes (n_draws, d_num + d_cat) of ``n_draws`` pseudo-windows of ``n_sub`` pool rows drawn
    without replacement, each scored against the pool rows left out: numeric columns first (standardised
    W1), then categorical (JS distance)."""
    rows = pool.rows
    d_num = pool.order.shape[0]
    out = np.empty((n_draws, d_num + len(pool.bounds)), dtype=np.float64)
    # F_window - F_rest = rows / (rows - n_sub) * (F_window - F_pool) everywhere, so W1 scales by that.
    grow = rows / (rows - n_sub)
    block = max(1, _BLOCK_ENTRIES // rows)
    for start in range(0, n_draws, block):
        stop = min(n_draws, start + block)
        keys = rng.random((stop - start, rows))
        chosen = np.argpartition(keys, n_sub - 1, axis=1)[:, :n_sub]
        if d_num:
            out[start:stop, :d_num] = grow * _w1_by_ranks(pool, chosen)
        if pool.bounds:
            mask = np.zeros(keys.shape, dtype=np.float32)
            np.put_along_axis(mask, chosen, 1.0, axis=1)
            in_window = mask @ pool.onehot
            for j, (lo, hi) in enumerate(pool.bounds):
                win = in_window[:, lo:hi].astype(np.float64)
                rest = pool.counts[lo:hi] - win
                out[start:stop, d_num + j] = js_distance(win / n_sub, rest / (rows - n_sub))
    return out
