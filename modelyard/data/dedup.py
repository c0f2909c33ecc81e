"""Similarity search for the data audit (metrics.md 5.6): canonical bytes and SHA-256 per item, the
input-space representation, exact cosine kNN in bounded-memory chunks, a 64-bit difference hash (dHash) for
images, and the audit sections built on them: near duplicates, train/test leakage and kNN outliers."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import defaultdict
from typing import Any

import numpy as np

from modelyard.errors import DataError

IMAGE_SIDE = 32  # images larger than this are area-downsampled to it before cosine search
DHASH_MIN_SIDE = 32  # dHash is used only for images at least this large (on 8x8 digits it is too coarse)
DHASH_MAX_DISTANCE = 4  # Hamming distance (of 64 bits) at or below which two images are near duplicates
TEXT_NGRAM = 3
CHUNK_ENTRIES = 1 << 22  # similarity entries per chunk (about 16 MiB of float32)
OUTLIER_K = 10
OUTLIER_QUANTILE = 0.99
MAX_EXAMPLES = 50
MIN_NEAR_DIMS = 8  # fewer dimensions: cosine finds chance neighbours, near duplicates are not searched


def canonical_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, trimmed, lower-cased (metrics.md 5.6)."""
    return " ".join(unicodedata.normalize("NFC", str(text)).split()).lower()


def item_hashes(x: Any, modality: str) -> list[str]:
    """SHA-256 of each item's canonical bytes (metrics.md 5.6).

    Arrays: the item as float32, C-contiguous, with -0.0 read as 0.0 and one NaN pattern, prefixed by its
    shape. Texts: ``canonical_text`` encoded as UTF-8."""
    if modality == "text":
        return [hashlib.sha256(canonical_text(t).encode("utf-8")).hexdigest() for t in x]
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if len(arr) == 0:
        return []
    arr = np.where(np.isnan(arr), np.float32(np.nan), arr + np.float32(0.0))
    prefix = json.dumps(list(arr.shape[1:])).encode()
    return [hashlib.sha256(prefix + row.tobytes()).hexdigest() for row in arr]


def duplicate_groups(hashes: list[str]) -> list[list[int]]:
    """Groups (two or more indices, ascending) of items with the same hash, ordered by first index."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        where[h].append(i)
    return sorted((g for g in where.values() if len(g) > 1), key=lambda g: g[0])


def _images(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(
            f"image inputs must be (N, C, H, W) or (N, H, W) arrays, got shape {arr.shape}; "
            "reshape them or declare the modality as tabular"
        )
    return arr


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (N, C, H, W) float images per channel with Pillow (BOX when shrinking: an area average)."""
    from PIL import Image

    out = np.empty((*arr.shape[:2], height, width), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(arr[i, c], dtype=np.float32), mode="F")
            out[i, c] = np.asarray(img.resize((width, height), Image.Resampling.BOX), dtype=np.float32)
    return out


def _finite(a: np.ndarray, fill: Any) -> np.ndarray:
    bad = ~np.isfinite(a)
    return np.where(bad, fill, a) if bad.any() else a


def input_space(x_train: Any, x_test: Any, modality: str) -> tuple[Any, Any, str]:
    """Both splits in the space the audit compares inputs in, fitted on the training split (the test split
    when training is empty), and a sentence saying how.

    Images: flattened (downsampled to at most ``IMAGE_SIDE`` per side), centred per pixel and divided by one
    global standard deviation (pixels share a unit; per-pixel scaling would amplify noise in near-constant
    border pixels). Tabular: per-feature z-scores (constant features stay 0). Non-finite values read as the
    feature's mean. Texts: character 3-gram TF-IDF of the canonical text, a sparse matrix with unit rows."""
    if modality == "text":
        return _tfidf(list(x_train), list(x_test))
    if modality == "image":
        tr, te = _images(x_train), _images(x_test)
        h, w = tr.shape[2:] if len(tr) else te.shape[2:]
        how = "raw pixels, centred per pixel and scaled by one global standard deviation"
        if max(h, w) > IMAGE_SIDE:
            nh, nw = min(h, IMAGE_SIDE), min(w, IMAGE_SIDE)
            tr, te = _resize(tr, nw, nh), _resize(te, nw, nh)
            how = f"raw pixels area-downsampled to {nh}x{nw}, centred per pixel and scaled by one global standard deviation"
        a, b = tr.reshape(len(tr), -1), te.reshape(len(te), -1)
    else:
        a, b = np.asarray(x_train, dtype=np.float32), np.asarray(x_test, dtype=np.float32)
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        how = "raw features as per-feature z-scores"
    fit = a if len(a) >= 2 else b
    with np.errstate(all="ignore"):
        mean64 = np.nanmean(np.where(np.isfinite(fit), fit, np.nan), axis=0, dtype=np.float64)
    mean = np.nan_to_num(mean64).astype(np.float32)
    a, b = (_finite(z, mean) - mean for z in (a, b))
    centred = a if len(a) >= 2 else b
    if modality == "image":
        sd = float(np.std(centred, dtype=np.float64))
        scale: Any = np.float32(sd if sd > 0 else 1.0)
    else:
        sd_f = np.std(centred, axis=0, dtype=np.float64)
        scale = np.where(sd_f > 0, sd_f, 1.0).astype(np.float32)
    return (a / scale).astype(np.float32), (b / scale).astype(np.float32), how


def _tfidf(train: list[Any], test: list[Any]) -> tuple[Any, Any, str]:
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [canonical_text(t) for t in train + test]
    how = f"character {TEXT_NGRAM}-gram TF-IDF of the canonical text (NFC, whitespace collapsed, lower-cased)"
    try:
        m = TfidfVectorizer(analyzer="char", ngram_range=(TEXT_NGRAM, TEXT_NGRAM), lowercase=False)
        mat = m.fit_transform(texts).tocsr().astype(np.float32)
    except ValueError:  # no text has a 3-gram: nothing can be near
        mat = sparse.csr_matrix((len(texts), 1), dtype=np.float32)
    return mat[: len(train)], mat[len(train) :], how


def unit_rows(a: Any) -> Any:
    """Rows scaled to unit L2 norm (zero rows stay zero); sparse matrices are returned as they are
    (TF-IDF rows are unit already)."""
    from scipy import sparse

    if sparse.issparse(a):
        return a
    a = np.asarray(a, dtype=np.float32)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def _block(query: Any, ref: Any, start: int, stop: int) -> np.ndarray:
    from scipy import sparse

    out = query[start:stop] @ ref.T
    return np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float32)


def _rows_per_chunk(n_ref: int) -> int:
    return max(1, CHUNK_ENTRIES // max(1, n_ref))


def topk_cosine(query: Any, ref: Any, k: int, *, same: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query row among ``ref`` rows by dot product (cosine for unit
    rows), computed in chunks. ``same`` means query is ref: an item is never its own neighbour.
    Returns (indices, similarities), each (n_query, k'), k' = min(k, available), most similar first."""
    n_q, n_r = query.shape[0], ref.shape[0]
    k = max(0, min(k, n_r - (1 if same else 0)))
    idx = np.zeros((n_q, k), dtype=np.int64)
    sims = np.zeros((n_q, k), dtype=np.float32)
    if k == 0 or n_q == 0:
        return idx, sims
    step = _rows_per_chunk(n_r)
    for s in range(0, n_q, step):
        e = min(n_q, s + step)
        blk = _block(query, ref, s, e)
        if same:
            blk[np.arange(e - s), np.arange(s, e)] = -np.inf
        part = np.argpartition(-blk, k - 1, axis=1)[:, :k] if k < n_r else np.tile(np.arange(n_r), (e - s, 1))
        vals = np.take_along_axis(blk, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[s:e] = np.take_along_axis(part, order, axis=1)
        sims[s:e] = np.take_along_axis(vals, order, axis=1)
    return idx, sims


def near_pairs_within(
    x: Any, threshold: float, hashes: list[str], *, max_examples: int = 50
) -> tuple[int, list[tuple[int, int, float]]]:
    """Pairs (i < j) of rows with dot product ≥ ``threshold`` that are not exact duplicates (equal hashes).

    Returns the number of such pairs and up to ``max_examples`` of them, most similar first."""
    n = x.shape[0]
    count = 0
    kept: list[tuple[int, int, float]] = []
    step = _rows_per_chunk(n)
    for s in range(0, n, step):
        e = min(n, s + step)
        blk = _block(x, x, s, e)[:, s:]
        rows, cols = np.nonzero(np.triu(blk >= threshold, k=1))
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i, j = s + r, s + c
            if hashes[i] != hashes[j]:
                count += 1
                kept.append((i, j, float(blk[r, c])))
        if len(kept) > 20 * max_examples:
            kept = sorted(kept, key=lambda p: -p[2])[:max_examples]
    return count, sorted(kept, key=lambda p: -p[2])[:max_examples]


def dhash64(x: Any) -> np.ndarray:
    """64-bit difference hash per image: grey (channel mean), resized with Pillow to 9x8, one bit per
    horizontally adjacent pair (left brighter than right). Returns uint64 (N,)."""
    arr = _images(x)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    grey = arr.mean(axis=1, keepdims=True)
    small = _resize(grey, 9, 8)[:, 0]
    bits = small[:, :, :-1] > small[:, :, 1:]
    packed = np.packbits(bits.reshape(len(arr), 64), axis=1)
    return packed.view(">u8").astype(np.uint64).ravel()


def hamming_nearest(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the index of the ref hash at the smallest Hamming distance, and that distance."""
    idx = np.zeros(len(query), dtype=np.int64)
    dist = np.full(len(query), 65, dtype=np.int64)
    if len(ref) == 0:
        return idx, dist
    step = _rows_per_chunk(len(ref))
    for s in range(0, len(query), step):
        d = np.bitwise_count(query[s : s + step, None] ^ ref[None, :]).astype(np.int64)
        idx[s : s + step] = d.argmin(axis=1)
        dist[s : s + step] = d.min(axis=1)
    return idx, dist


def hamming_pairs_within(
    h: np.ndarray,
    max_distance: int,
    hashes: list[str],
    *,
    x: Any = None,
    threshold: float = 1.0,
    max_examples: int = 50,
) -> tuple[int, list[tuple[int, int, int]]]:
    """Pairs (i < j) of images whose dHashes differ in at most ``max_distance`` bits and that are not exact
    duplicates, nor (when ``x`` is given) already near by dot product ≥ ``threshold`` of their ``x`` rows.
    Returns the count and up to ``max_examples`` pairs, closest first."""
    n = len(h)
    count = 0
    kept: list[tuple[int, int, int]] = []
    step = _rows_per_chunk(n)
    for s in range(0, n, step):
        d = np.bitwise_count(h[s : s + step, None] ^ h[None, s:])
        rows, cols = np.nonzero(np.triu(d <= max_distance, k=1))
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i, j = s + r, s + c
            if hashes[i] == hashes[j] or (x is not None and float(x[i] @ x[j]) >= threshold):
                continue
            count += 1
            kept.append((i, j, int(d[r, c])))
        if len(kept) > 20 * max_examples:
            kept = sorted(kept, key=lambda p: p[2])[:max_examples]
    return count, sorted(kept, key=lambda p: p[2])[:max_examples]


def near_duplicates_and_leakage(
    x_train: Any,
    x_test: Any,
    modality: str,
    h_tr: list[str],
    h_te: list[str],
    space: tuple[Any, Any, str],
    threshold: float,
    *,
    raw: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Near-duplicate pairs within each split and train/test leakage (metrics.md 5.6).

    ``h_*`` are ``item_hashes``; ``space`` is (train rows, test rows, description); ``raw`` says the rows are
    the inputs, so images may also be compared by dHash. With fewer than ``MIN_NEAR_DIMS`` dimensions near
    duplicates are not searched (counts None): there cosine similarity finds chance neighbours (4-feature
    Gaussian blobs: 42% of clean test items reach 0.995). Returns the "near_duplicates" and "leakage"
    sections of the audit."""
    tr, te, how = unit_rows(space[0]), unit_rows(space[1]), space[2]
    dims = int(tr.shape[1])
    searched = dims >= MIN_NEAR_DIMS
    use_dhash = searched and modality == "image" and raw
    if use_dhash:
        use_dhash = min(np.asarray(x_test).shape[-2:]) >= DHASH_MIN_SIDE
    if not searched:
        method = (
            f"not searched: {how} has {dims} dimensions, too few for cosine similarity to tell duplicates "
            f"from neighbours (at least {MIN_NEAR_DIMS} needed)"
        )
    else:
        method = f"cosine ≥ {threshold:g} between L2-normalised rows of {how}, exact search"
        if modality == "image" and raw:
            method += (
                f"; or a 64-bit dHash within Hamming distance {DHASH_MAX_DISTANCE}"
                if use_dhash
                else f"; no dHash (images below {DHASH_MIN_SIDE} px per side are too small for it)"
            )
    near: dict[str, Any] = {
        "status": "ok" if searched else "skipped",
        "threshold": threshold,
        "method": method,
        "pairs": None,
        "train_pairs": None,
        "test_pairs": None,
        "examples": [],
    }
    d_tr = dhash64(x_train) if use_dhash else None
    d_te = dhash64(x_test) if use_dhash else None
    for split, x, hashes, dh in (("train", tr, h_tr, d_tr), ("test", te, h_te, d_te)):
        if not searched:
            break
        count, pairs = near_pairs_within(x, threshold, hashes, max_examples=MAX_EXAMPLES)
        examples = [{"split": split, "i": i, "j": j, "similarity": round(s, 6)} for i, j, s in pairs]
        if dh is not None:
            n_h, hp = hamming_pairs_within(
                dh, DHASH_MAX_DISTANCE, hashes, x=x, threshold=threshold, max_examples=MAX_EXAMPLES
            )
            count += n_h
            examples += [{"split": split, "i": i, "j": j, "hamming": d} for i, j, d in hp]
        near[f"{split}_pairs"] = count
        near["examples"] += examples[: MAX_EXAMPLES - len(near["examples"])]
    if searched:
        near["pairs"] = near["train_pairs"] + near["test_pairs"]

    first_in_train: dict[str, int] = {}
    for i, h in enumerate(h_tr):
        first_in_train.setdefault(h, i)
    nn_idx, nn_sim = topk_cosine(te, tr, 1 if searched else 0)
    if d_te is not None and d_tr is not None:
        h_idx, h_dist = hamming_nearest(d_te, d_tr)
    exact_pairs: list[dict[str, Any]] = []
    near_pairs: list[dict[str, Any]] = []
    for t, h in enumerate(h_te):
        if h in first_in_train:
            exact_pairs.append({"test": t, "train": first_in_train[h], "kind": "exact", "similarity": 1.0})
        elif nn_idx.shape[1] and nn_sim[t, 0] >= threshold:
            sim = round(float(nn_sim[t, 0]), 6)
            near_pairs.append({"test": t, "train": int(nn_idx[t, 0]), "kind": "near", "similarity": sim})
        elif d_te is not None and h_dist[t] <= DHASH_MAX_DISTANCE:
            near_pairs.append({"test": t, "train": int(h_idx[t]), "kind": "near", "hamming": int(h_dist[t])})
    near_pairs.sort(key=lambda p: -p.get("similarity", 0.0))
    n_te = len(h_te)
    leaked = sorted(p["test"] for p in exact_pairs + near_pairs)
    leakage = {
        "n_test": n_te,
        "exact_count": len(exact_pairs),
        "near_count": len(leaked) if searched else None,
        "exact_fraction": len(exact_pairs) / n_te,
        "near_fraction": len(leaked) / n_te if searched else None,
        "pairs": (exact_pairs + near_pairs)[:MAX_EXAMPLES],
        "test_indices": leaked,
        "method": f"exact: equal SHA-256 of canonical bytes; near: {method}",
    }
    return near, leakage


def outlier_scores(space: tuple[Any, Any, str]) -> dict[str, Any]:
    """kNN outliers (metrics.md 5.6): each test item's mean cosine distance to its ``OUTLIER_K`` nearest
    training items, flagged above the ``OUTLIER_QUANTILE`` of the same score for training items (each
    leaving itself out). Returns the audit's "outliers" section."""
    tr, te = unit_rows(space[0]), unit_rows(space[1])
    if tr.shape[0] < 2:
        return {"status": "skipped", "reason": "outlier scores need at least 2 training items", "count": None}
    k = min(OUTLIER_K, tr.shape[0] - 1)
    s_tr = np.mean(1.0 - topk_cosine(tr, tr, k, same=True)[1].astype(np.float64), axis=1)
    s_te = np.mean(1.0 - topk_cosine(te, tr, k)[1].astype(np.float64), axis=1)
    threshold = float(np.quantile(s_tr, OUTLIER_QUANTILE))
    flagged = np.flatnonzero(s_te > threshold)
    order = flagged[np.argsort(-s_te[flagged], kind="stable")]
    edges = np.linspace(0.0, max(float(s_tr.max()), float(s_te.max()), 1e-9), 21)
    return {
        "status": "ok",
        "method": (
            f"mean cosine distance to the {k} nearest training items in {space[2]} (training items leave "
            f"themselves out); flagged above the training {OUTLIER_QUANTILE:.0%} quantile"
        ),
        "k": k,
        "threshold": threshold,
        "count": len(flagged),
        "fraction": len(flagged) / len(s_te),
        "top": [{"index": int(i), "score": round(float(s_te[i]), 6)} for i in order[:MAX_EXAMPLES]],
        "histogram": {
            "edges": [round(float(e), 6) for e in edges],
            "train_counts": np.histogram(np.clip(s_tr, 0, edges[-1]), edges)[0].tolist(),
            "test_counts": np.histogram(np.clip(s_te, 0, edges[-1]), edges)[0].tolist(),
        },
    }
