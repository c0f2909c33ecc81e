"""Out-of-distribution input sets: the demos' built-in ones, and the check of a user's own.

The built-in sets are deterministic, built in code and never downloaded.

The digits sets look like the digits demo's inputs: (N, 1, 8, 8) float32 in [0, 1], on the same 1/16
grid of grey levels as scikit-learn's ``load_digits().images / 16``, so a detector cannot tell them
apart by the value lattice alone. The text set is the off-topic list of the built-in sentence set.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError

__all__ = ["builtin_ood", "check_ood_inputs", "digits_ood", "text_ood"]

SIDE = 8  # digits are 8x8
LEVELS = 16  # digits pixels are integers 0..16, divided by 16
# Capital letters that do not look like a digit (no O/D/Q ~ 0, I/L/T ~ 1/7, Z ~ 2, S ~ 5, G ~ 6, B ~ 8).
LETTERS = "ACEFHJKMNPRUVWXY"
_CANVAS = 32  # letters are drawn on a 32x32 canvas, then area-averaged 4x4 down to 8x8
_SETS = ("noise", "inverted", "shifted", "letters")


def _check_options(n_per_set: Any, seed: Any) -> tuple[int, int]:
    if isinstance(n_per_set, bool) or not isinstance(n_per_set, (int, np.integer)) or n_per_set < 1:
        raise ConfigError(f"n_per_set must be a positive integer, got {n_per_set!r}; the default is 100.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(n_per_set), int(seed)


def _on_grid(x: np.ndarray) -> np.ndarray:
    """Round to the digits' grey levels k/16, clip to [0, 1], shape (N, 1, 8, 8) float32."""
    grid = np.clip(np.rint(x * LEVELS), 0, LEVELS) / LEVELS
    return np.asarray(grid.reshape(-1, 1, SIDE, SIDE), dtype=np.float32)


def _digit_images(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images / float(LEVELS)
    return np.asarray(images[rng.choice(len(images), size=n, replace=n > len(images))], dtype=np.float64)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """First half uniform noise, second half 1-3 Gaussian blobs scaled to a peak of 1."""
    n_uniform = n // 2
    uniform = rng.uniform(0.0, 1.0, size=(n_uniform, SIDE, SIDE))
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    blobs = np.zeros((n - n_uniform, SIDE, SIDE))
    for img in blobs:
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.0, SIDE - 1, size=2)
            sigma = rng.uniform(0.8, 2.0)
            img += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))
        img /= img.max()
    return np.concatenate([uniform, blobs])


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels; what leaves the frame is lost, the rest is filled with 0."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _shifted(rng: np.random.Generator, n: int) -> np.ndarray:
    """Digits moved 3 or 4 pixels in one of the 8 compass directions, so part of them leaves the frame."""
    directions = [(uy, ux) for uy in (-1, 0, 1) for ux in (-1, 0, 1) if (uy, ux) != (0, 0)]
    out = []
    for img in _digit_images(rng, n):
        uy, ux = directions[int(rng.integers(len(directions)))]
        step = int(rng.integers(3, 5))
        out.append(_shift(img, uy * step, ux * step))
    return np.stack(out)


def _letters(rng: np.random.Generator, n: int) -> np.ndarray:
    """Capital letters in Pillow's built-in font, filling most of the frame at a slightly varying
    size and position, area-averaged down to 8x8 and scaled to a peak of 1."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=40)
    glyphs = {}
    for ch in LETTERS:
        big = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(big).text((8, 0), ch, fill=255, font=font, stroke_width=2, stroke_fill=255)
        glyphs[ch] = big.crop(big.getbbox())
    out = np.empty((n, SIDE, SIDE))
    for i in range(n):
        glyph = glyphs[LETTERS[int(rng.integers(len(LETTERS)))]]
        side = int(rng.integers(24, 31))  # the longer side of the letter, in canvas pixels
        scale = side / max(glyph.size)
        w, h = max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))
        canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
        left = (_CANVAS - w) // 2 + int(rng.integers(-2, 3))
        top = (_CANVAS - h) // 2 + int(rng.integers(-2, 3))
        canvas.paste(glyph.resize((w, h), Image.Resampling.LANCZOS), (left, top))
        small = np.asarray(canvas.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float64)
        out[i] = small / max(float(small.max()), 1.0)
    return out


def digits_ood(n_per_set: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """OOD sets for the digits demo: {"noise", "inverted", "shifted", "letters"}, each (n_per_set, 1, 8, 8)
    float32 in [0, 1] on the 1/16 grey grid.

    "noise" is half uniform noise, half Gaussian blobs; "inverted" is 1 − digit; "shifted" moves
    digits 3-4 px so they leave the frame; "letters" are capital letters that do not resemble digits.
    Digits are drawn from all of ``load_digits`` (the copies are OOD by construction, whatever the
    split). The result depends only on ``n_per_set`` and ``seed``.
    """
    n, s = _check_options(n_per_set, seed)
    makers = {"noise": _noise, "inverted": None, "shifted": _shifted, "letters": _letters}
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(_SETS):
        rng = np.random.default_rng([s, i])
        maker = makers[name]
        out[name] = _on_grid(1.0 - _digit_images(rng, n) if maker is None else maker(rng, n))
    return out


def text_ood() -> list[str]:
    """The off-topic sentences of the built-in sentence set (``modelyard/zoo/minilm_sentences.json``)."""
    text = resources.files("modelyard.zoo").joinpath("minilm_sentences.json").read_text(encoding="utf-8")
    return [str(t) for t in json.loads(text)["ood"]]


def builtin_ood(dataset_name: str) -> dict[str, Any] | None:
    """The built-in OOD sets for a built-in dataset, by its name; None for any other dataset."""
    if dataset_name == "sklearn-digits":
        return dict(digits_ood())
    if dataset_name == "modelyard-sentences":
        return {"off_topic": text_ood()}
    return None


# ---------------------------------------------------------------------------------------------------
# user OOD sets


def _is_text(x: Any) -> bool:
    if isinstance(x, str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "US" or (x.dtype == object and x.size > 0 and isinstance(x.flat[0], str))
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], str)


def check_ood_inputs(x_ood: Any, x_test_example: Any, *, name: str = "OOD set") -> np.ndarray | list[str]:
    """Check that a user's OOD set fits the model input; return it as an array (or a list of texts).

    ``x_test_example`` is a batch of test items, e.g. ``x_test[:1]``: its first axis counts items and
    the OOD items must have the shape of the rest (a string or a list of strings for text models).
    Raises ``DataError`` with a one-line message when they do not fit.
    """
    if _is_text(x_test_example):
        if isinstance(x_ood, (str, bytes)) or not hasattr(x_ood, "__len__"):
            raise DataError(
                f"{name} must be a list of texts, got {type(x_ood).__name__}; give one string per item."
            )
        items = list(x_ood)
        if not items:
            raise DataError(f"{name} is empty; give at least one text.")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise DataError(
                    f"{name} item {i} is {type(item).__name__}, not text, but the model takes strings; "
                    "give a list of strings."
                )
        return items
    example = np.asarray(x_test_example)
    if example.ndim == 0:
        raise DataError(
            f"x_test_example must be a batch of test items such as x_test[:1], got a scalar {example!r}."
        )
    shape = tuple(example.shape[1:])
    if _is_text(x_ood) or isinstance(x_ood, bytes):
        raise DataError(
            f"{name} holds text but the model takes arrays of shape {shape}; "
            "give an OOD set of the same input shape."
        )
    try:
        arr = np.asarray(x_ood, dtype=example.dtype if example.dtype.kind in "fiub" else np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{name} could not be read as an array of numbers ({exc}); give an array of shape "
            f"(N, {', '.join(map(str, shape))})."
        ) from exc
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); give at least one item.")
    if tuple(arr.shape[1:]) != shape:
        raise DataError(
            f"{name} has items of shape {tuple(arr.shape[1:])} but the model takes {shape}; "
            "give an OOD set of the same input shape."
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).sum())
        raise DataError(f"{name} contains NaN or inf in {bad} items; remove or replace them.")
    return arr
