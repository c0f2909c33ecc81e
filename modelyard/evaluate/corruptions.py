"""Label-preserving perturbations of inputs: image corruptions, text typos, tabular noise.

Generators only (inputs in, perturbed copies out), deterministic given ``seed``; the scores computed from
a model's predictions on them live in ``robustness``. Conventions: ``/work/shared/reference/metrics.md``
5.3 (corruption robustness, perturbation consistency).

Image corruptions follow Hendrycks & Dietterich (2019) with severities 1-5, scaled so that on the built-in
8x8 digits severity 1 keeps the baseline's accuracy near clean and severity 5 clearly hurts it without
destroying the images (measured on its 360 test images: clean 97.5%, severity 1 between 95.8% and
97.5% for every corruption, severity 5 between 70% and 88%). Intensities are fractions of the value range, so they do not depend on
the input scaling.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import _check_seed

__all__ = ["CORRUPTIONS", "TEXT_PERTURBATIONS", "image_corruptions", "tabular_noise", "text_perturbations"]

# Severity 1..5 parameters. Units: noise std, brightness shift: fractions of (hi - lo); blur: Gaussian
# sigma in pixels for images up to 32 px a side, times sqrt(side / 32) above (224 px: 1.1-3.4, the low
# half of Hendrycks & Dietterich's ImageNet 1-6); contrast: factor on the deviation from the image mean;
# pixelate: side of the box-downsampled image as a fraction of the original; jpeg: Pillow quality.
SEVERITY_TABLE: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.08, 0.15, 0.22, 0.30, 0.40),
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.3),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.15),
    "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
    "jpeg": (25, 18, 12, 8, 5),
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_TABLE)
TEXT_PERTURBATIONS: tuple[str, ...] = (
    "char_swap",
    "char_drop",
    "char_insert",
    "case",
    "whitespace",
    "homoglyph",
)
# Latin letter -> a Cyrillic or Greek letter drawn the same in common fonts.
HOMOGLYPHS: dict[str, str] = {
    "a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "j": "\u0458", "o": "\u043e",
    "p": "\u0440", "s": "\u0455", "x": "\u0445", "y": "\u0443", "A": "\u0410", "B": "\u0412",
    "C": "\u0421", "E": "\u0415", "H": "\u041d", "I": "\u0406", "K": "\u041a", "M": "\u041c",
    "N": "\u039d", "O": "\u041e", "P": "\u0420", "T": "\u0422", "X": "\u0425", "Y": "\u03a5",
    "Z": "\u0396",
}  # fmt: skip
# Fraction of chosen word gaps where the whitespace perturbation removes the space instead of doubling it.
_SPACE_REMOVE_SHARE = 0.25
_BLUR_REFERENCE_SIDE = 32
_WORD = re.compile(r"[^\W\d_]+")


# ---------------------------------------------------------------------------------------------------
# images


def _check_range(value_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ConfigError(
            f"value_range must be a pair of numbers (lo, hi), got {value_range!r}; e.g. (0.0, 1.0)."
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"value_range must be finite with lo < hi, got ({lo}, {hi}).")
    return lo, hi


def _check_severities(severities: Any) -> tuple[int, ...]:
    try:
        sevs = tuple(severities)
    except TypeError:
        raise ConfigError(f"severities must be a sequence of integers in 1..5, got {severities!r}.") from None
    bad = [s for s in sevs if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= 5]
    if not sevs or bad or len(set(sevs)) != len(sevs):
        raise ConfigError(
            f"severities must be distinct integers in 1..5, got {severities!r}; the default is (1, 2, 3, 4, 5)."
        )
    return tuple(sorted(int(s) for s in sevs))


def _as_images(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"x must be a float array of images (N, C, H, W), got dtype {arr.dtype} and shape {arr.shape}."
        )
    if arr.size == 0:
        raise DataError(f"x is empty (shape {arr.shape}); pass at least one image.")
    if not np.isfinite(arr).all():
        raise DataError("x contains NaN or inf; pass finite pixel values.")
    return arr


def _blur(u: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    side = min(u.shape[2], u.shape[3])
    s = sigma * math.sqrt(max(1.0, side / _BLUR_REFERENCE_SIDE))
    return np.asarray(gaussian_filter(u, sigma=(0.0, 0.0, s, s), mode="nearest"))


def _noise(u: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return u + rng.normal(0.0, std, size=u.shape)


def _brightness(u: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    return u + shift


def _contrast(u: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = u.mean(axis=(1, 2, 3), keepdims=True)
    return np.asarray((u - mean) * factor + mean)


def _pixelate(u: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = u.shape[2:]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    out = np.empty_like(u)
    for i in range(u.shape[0]):
        for c in range(u.shape[1]):
            im = Image.fromarray(u[i, c].astype(np.float32))
            down = im.resize(small, Image.Resampling.BOX)
            out[i, c] = np.asarray(down.resize((w, h), Image.Resampling.BOX), dtype=np.float64)
    return out


def _jpeg(u: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    def roundtrip(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im, dtype=np.float64) / 255.0

    q = np.clip(np.rint(u * 255.0), 0, 255).astype(np.uint8)
    out = np.empty_like(u)
    for i in range(u.shape[0]):
        if u.shape[1] == 3:
            out[i] = roundtrip(np.ascontiguousarray(q[i].transpose(1, 2, 0))).transpose(2, 0, 1)
        else:
            for c in range(u.shape[1]):
                out[i, c] = roundtrip(q[i, c])
    return out


_APPLY: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _noise,
    "gaussian_blur": _blur,
    "brightness": _brightness,
    "contrast": _contrast,
    "pixelate": _pixelate,
    "jpeg": _jpeg,
}


def image_corruptions(
    x: Any,
    *,
    value_range: tuple[float, float],
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
) -> dict[str, dict[int, np.ndarray]]:
    """Corrupted copies of images ``x`` (N, C, H, W): ``{corruption: {severity: array}}``.

    Corruptions (``CORRUPTIONS``): gaussian_noise, gaussian_blur, brightness, contrast, pixelate, jpeg,
    with the parameters of ``SEVERITY_TABLE`` (metrics.md 5.3, Hendrycks & Dietterich 2019). Pixels are
    mapped to [0, 1] through ``value_range`` = (lo, hi), corrupted in float64, mapped back and clipped to
    [lo, hi]; each output has the dtype and shape of ``x``. JPEG encodes 1- and 3-channel images as
    grey/RGB, other channel counts one channel at a time. Noise for (corruption, severity) is drawn from
    its own stream of ``seed``, so the result does not depend on which severities are requested.
    """
    images = _as_images(x)
    lo, hi = _check_range(value_range)
    sevs = _check_severities(severities)
    rng_seed = _check_seed(seed)
    unit = (images.astype(np.float64) - lo) / (hi - lo)
    out: dict[str, dict[int, np.ndarray]] = {}
    for ci, name in enumerate(CORRUPTIONS):
        out[name] = {}
        for s in sevs:
            rng = np.random.default_rng([rng_seed, ci, s])
            corrupted = np.clip(_APPLY[name](unit, float(SEVERITY_TABLE[name][s - 1]), rng), 0.0, 1.0)
            out[name][s] = np.clip(corrupted * (hi - lo) + lo, lo, hi).astype(images.dtype)
    return out


# ---------------------------------------------------------------------------------------------------
# text


def _n_edits(n_sites: int, rate: float) -> int:
    return min(n_sites, max(1, round(rate * n_sites)))


def _letter_sites(text: str, *, interior: bool) -> list[int]:
    """Indices of letters; with ``interior``, only letters strictly inside words of 4+ letters."""
    sites: list[int] = []
    for m in _WORD.finditer(text):
        if interior:
            if m.end() - m.start() >= 4:
                sites.extend(range(m.start() + 1, m.end() - 1))
        else:
            sites.extend(range(m.start(), m.end()))
    return sites


def _edit(sites: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    if not sites:
        return []
    k = _n_edits(len(sites), rate)
    return sorted(int(i) for i in rng.choice(sites, size=k, replace=False))


def _char_swap(text: str, rate: float, rng: np.random.Generator) -> str:
    # swap an interior letter with the next one, both inside the word and different (so the text changes)
    interior = set(_letter_sites(text, interior=True))
    sites = sorted(i for i in interior if i + 1 in interior and text[i] != text[i + 1])
    chars = list(text)
    taken: set[int] = set()
    for i in _edit(sites, rate, rng):
        if i in taken or i + 1 in taken:
            continue
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        taken.update((i, i + 1))
    return "".join(chars)


def _char_drop(text: str, rate: float, rng: np.random.Generator) -> str:
    drop = set(_edit(_letter_sites(text, interior=True), rate, rng))
    return "".join(ch for i, ch in enumerate(text) if i not in drop)


def _char_insert(text: str, rate: float, rng: np.random.Generator) -> str:
    double = set(_edit(_letter_sites(text, interior=True), rate, rng))
    return "".join(ch * 2 if i in double else ch for i, ch in enumerate(text))


def _case(text: str, rate: float, rng: np.random.Generator) -> str:
    sites = [i for i in _letter_sites(text, interior=False) if text[i].swapcase() != text[i]]
    flip = set(_edit(sites, rate, rng))
    return "".join(ch.swapcase() if i in flip else ch for i, ch in enumerate(text))


def _whitespace(text: str, rate: float, rng: np.random.Generator) -> str:
    gaps = [m.start() for m in re.finditer(r"(?<=\S) (?=\S)", text)]
    chosen = set(_edit(gaps, rate, rng))
    out: list[str] = []
    for i, ch in enumerate(text):
        if i in chosen:
            out.append("" if rng.random() < _SPACE_REMOVE_SHARE else "  ")
        else:
            out.append(ch)
    return "".join(out)


def _homoglyph(text: str, rate: float, rng: np.random.Generator) -> str:
    sites = [i for i, ch in enumerate(text) if ch in HOMOGLYPHS]
    swap = set(_edit(sites, rate, rng))
    return "".join(HOMOGLYPHS[ch] if i in swap else ch for i, ch in enumerate(text))


_TEXT_APPLY: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "char_swap": _char_swap,
    "char_drop": _char_drop,
    "char_insert": _char_insert,
    "case": _case,
    "whitespace": _whitespace,
    "homoglyph": _homoglyph,
}


def text_perturbations(texts: Sequence[str], *, seed: int = 0, rate: float = 0.05) -> dict[str, list[str]]:
    """Typo-style copies of ``texts``: ``{perturbation: list of texts}``, one per input, same order.

    Perturbations (``TEXT_PERTURBATIONS``), each applied at ``rate`` of its eligible sites and at least
    once where a site exists:

    - char_swap: two adjacent different letters swapped, inside words of 4+ letters (first and last kept);
    - char_drop: an interior letter of a 4+ letter word dropped; char_insert: one doubled ("goood");
    - case: letters' case flipped;
    - whitespace: spaces between words doubled, or one in four removed (joining two words);
    - homoglyph: Latin letters replaced by look-alike Cyrillic/Greek ones (``HOMOGLYPHS``).

    The draw for a text depends only on ``seed``, the perturbation and the text itself, so a text is
    perturbed the same way in any list. A text without an eligible site is returned unchanged.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DataError(f"texts must be a list of strings, got {type(texts).__name__}.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(
            f"texts must hold only strings; item {bad[0]} is {type(texts[bad[0]]).__name__} "
            f"({len(bad)} non-string items)."
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) <= 1.0:
        raise ConfigError(f"rate must be a fraction in (0, 1], got {rate!r}; the default is 0.05.")
    rng_seed = _check_seed(seed)
    out: dict[str, list[str]] = {}
    for pi, name in enumerate(TEXT_PERTURBATIONS):
        apply = _TEXT_APPLY[name]
        out[name] = [
            apply(t, float(rate), np.random.default_rng([rng_seed, pi, zlib.crc32(t.encode("utf-8"))]))
            for t in texts
        ]
    return out


# ---------------------------------------------------------------------------------------------------
# tabular


def tabular_noise(
    x: Any, *, reference: Any, scales: Sequence[float] = (0.05, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Copies of features ``x`` (N, F) with Gaussian noise scaled to each feature's spread.

    For each ``scale``: ``{"noise_{scale}_std": x + N(0, (scale·std_f)²)}``, std_f the population standard
    deviation of feature f in ``reference`` (the training features). Features with std 0 (constant in
    training) are left untouched. Outputs keep the dtype of ``x`` (float; integer input gives float64).
    """
    arr = np.asarray(x)
    ref = np.asarray(reference)
    for name, a in (("x", arr), ("reference", ref)):
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"{name} must be a non-empty (N, F) array of features, got shape {a.shape}.")
        if not (np.issubdtype(a.dtype, np.number) and np.isfinite(a).all()):
            raise DataError(
                f"{name} must hold finite numbers (dtype {a.dtype}); impute missing values first."
            )
    if arr.shape[1] != ref.shape[1]:
        raise DataError(
            f"x has {arr.shape[1]} features but reference has {ref.shape[1]}; pass the training features."
        )
    try:
        scale_list = [float(s) for s in scales]
    except (TypeError, ValueError):
        raise ConfigError(f"scales must be a sequence of positive numbers, got {scales!r}.") from None
    if not scale_list or any(not (math.isfinite(s) and s > 0.0) for s in scale_list):
        raise ConfigError(f"scales must be positive numbers, got {scales!r}; the default is (0.05, 0.1).")
    rng_seed = _check_seed(seed)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    std = ref.astype(np.float64).std(axis=0)
    out: dict[str, np.ndarray] = {}
    for si, s in enumerate(scale_list):
        rng = np.random.default_rng([rng_seed, si])
        noise = rng.normal(size=arr.shape) * (s * std)
        out[f"noise_{s:g}_std"] = (arr.astype(np.float64) + noise).astype(dtype)
    return out
