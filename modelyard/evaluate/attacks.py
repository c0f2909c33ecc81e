"""White-box L∞ attacks (FGSM, PGD) crafted on a differentiable PyTorch module, and their default budget.

Conventions: ``/work/shared/reference/metrics.md`` 5.3. Attacks work in the model's input space, inside
the valid range [lo, hi]; the loss is cross-entropy on the true label; gradients are taken with respect to
the input only (no parameter gradient is stored) with the module in eval mode (its mode is restored
afterwards). The adversarials are meant to be crafted once on the baseline and replayed on every candidate
(transfer robustness); the scores are in ``robustness``.

A clean value outside [lo, hi] widens the range to include it, so the clean input is always feasible and
every adversarial stays within ε of it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import _as_labels_1d, _check_positive_int, _check_seed

__all__ = ["default_epsilon", "fgsm", "perturbation_stats", "pgd"]

# Images with a side below this get the small-image budget (``SMALL_IMAGE_EPSILON``), larger ones 8/255.
SMALL_IMAGE_SIDE = 32
# On the built-in 8x8 digits (17 grey levels) the baseline's PGD-10 accuracy is 97.5% clean, 92.5% at
# 8/255, 80% at 1/16 (one grey level) and 51% at 0.1: 0.1 of the range is an attack that bites without
# erasing the digit.
SMALL_IMAGE_EPSILON = 0.1
IMAGE_EPSILON = 8.0 / 255.0
TABULAR_EPSILON_STD = 0.1


def _bounds(name: str, value: Any, feature_shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
        out = np.array(np.broadcast_to(arr, feature_shape))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a number or an array broadcastable to one input's shape {feature_shape}, "
            f"got {np.shape(value)}."
        ) from None
    if not np.isfinite(out).all():
        raise ConfigError(f"{name} must be finite, got non-finite values.")
    return out


def _prepare(
    x: Any, y: Any, epsilon: Any, value_range: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated inputs, labels, and per-item feasible box [lower, upper] = [x − ε, x + ε] ∩ [lo, hi]."""
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"x must be a non-empty float array with one input per row, got dtype {arr.dtype} and shape "
            f"{arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise DataError("x contains NaN or inf; pass finite inputs.")
    labels = _as_labels_1d(y, "y")
    if len(labels) != len(arr):
        raise DataError(f"x has {len(arr)} rows but y has {len(labels)} labels; pass one label per input.")
    shape = tuple(arr.shape[1:])
    eps = _bounds("epsilon", epsilon, shape)
    if (eps < 0).any():
        raise ConfigError(f"epsilon must be >= 0, got a minimum of {float(eps.min()):g}.")
    try:
        lo_raw, hi_raw = value_range
    except (TypeError, ValueError):
        raise ConfigError(
            f"value_range must be a pair (lo, hi) of numbers or per-feature arrays, got {value_range!r}."
        ) from None
    lo, hi = _bounds("value_range lo", lo_raw, shape), _bounds("value_range hi", hi_raw, shape)
    if (lo > hi).any():
        raise ConfigError(
            f"value_range must have lo <= hi everywhere, got lo > hi at {int((lo > hi).sum())} positions."
        )
    x64 = arr.astype(np.float64)
    lower = np.maximum(np.minimum(lo, x64), x64 - eps)
    upper = np.minimum(np.maximum(hi, x64), x64 + eps)
    return arr, labels, eps, lower, upper


def _logits(out: Any) -> Any:
    import torch

    z = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise DataError(
            "the module must map a batch of inputs to (batch, classes) logits, got "
            f"{type(z).__name__} with shape {tuple(getattr(z, 'shape', ()))}."
        )
    return z


def _ascend(
    module: Any,
    x: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    alpha: np.ndarray,
    steps: int,
    batch_size: int,
) -> np.ndarray:
    """``steps`` signed-gradient ascent steps of cross-entropy from ``start``, projected onto the box."""
    import torch
    import torch.nn.functional as F

    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    step = torch.as_tensor(alpha, dtype=dtype, device=device)
    out = np.empty_like(x)
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            for b in range(0, len(x), batch_size):
                e = min(len(x), b + batch_size)
                lo_t = torch.as_tensor(lower[b:e], dtype=dtype, device=device)
                hi_t = torch.as_tensor(upper[b:e], dtype=dtype, device=device)
                yb = torch.as_tensor(y[b:e], device=device)
                xa = torch.as_tensor(start[b:e], dtype=dtype, device=device)
                for _ in range(steps):
                    xa = xa.detach().requires_grad_(True)
                    z = _logits(module(xa))
                    if int(y[b:e].max()) >= z.shape[1]:
                        raise DataError(
                            f"y holds label {int(y[b:e].max())} but the module outputs {z.shape[1]} classes."
                        )
                    loss = F.cross_entropy(z, yb, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, xa)
                    xa = torch.minimum(torch.maximum(xa.detach() + step * grad.sign(), lo_t), hi_t)
                out[b:e] = xa.detach().cpu().numpy().astype(x.dtype)
    finally:
        module.train(was_training)
    return out


def fgsm(module: Any, x: Any, y: Any, *, epsilon: Any, value_range: Any, batch_size: int = 256) -> np.ndarray:
    """Fast gradient sign method: x' = clip(x + ε·sign(∇_x CE(f(x), y)), lo, hi) (metrics.md 5.3).

    ``module`` maps a float tensor batch to (batch, classes) logits; ``x`` is (N, ...) float; ``y`` the N
    true labels; ``epsilon`` a number or per-feature array in input units; ``value_range`` = (lo, hi),
    numbers or per-feature arrays. Returns the adversarials, same shape and dtype as ``x``.
    """
    arr, labels, eps, lower, upper = _prepare(x, y, epsilon, value_range)
    bs = _check_positive_int(batch_size, "batch_size")
    return _ascend(module, arr, labels, arr, lower, upper, alpha=eps, steps=1, batch_size=bs)


def pgd(
    module: Any,
    x: Any,
    y: Any,
    *,
    epsilon: Any,
    value_range: Any,
    steps: int = 10,
    alpha: Any = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """Projected gradient descent, L∞ (Madry et al. 2018; metrics.md 5.3).

    x⁰ = x + U(−ε, ε) (with ``random_start``, else x), then ``steps`` times
    x^{t+1} = Π_{B∞(x, ε) ∩ [lo, hi]}(x^t + α·sign(∇_x CE(f(x^t), y))), α = 2.5·ε/steps by default.
    Arguments as ``fgsm``; ``alpha`` a number or per-feature array. The random start is drawn from
    ``seed`` for the whole of ``x`` at once, so the result does not depend on ``batch_size``.
    Returns the adversarials, same shape and dtype as ``x``.
    """
    arr, labels, eps, lower, upper = _prepare(x, y, epsilon, value_range)
    n_steps = _check_positive_int(steps, "steps")
    bs = _check_positive_int(batch_size, "batch_size")
    rng_seed = _check_seed(seed)
    step = 2.5 * eps / n_steps if alpha is None else _bounds("alpha", alpha, eps.shape)
    if (step < 0).any():
        raise ConfigError(f"alpha must be >= 0, got a minimum of {float(np.min(step)):g}.")
    if not isinstance(random_start, bool):
        raise ConfigError(f"random_start must be True or False, got {random_start!r}.")
    start: np.ndarray = arr
    if random_start:
        noise = np.random.default_rng(rng_seed).uniform(-1.0, 1.0, size=arr.shape) * eps
        start = np.clip(arr.astype(np.float64) + noise, lower, upper).astype(arr.dtype)
    return _ascend(module, arr, labels, start, lower, upper, alpha=step, steps=n_steps, batch_size=bs)


def default_epsilon(modality: str, value_range: Any, reference: Any = None) -> tuple[float | np.ndarray, str]:
    """The attack budget used when the policy sets none, with a sentence saying what it is.

    - image: 8/255 of the value range (the CIFAR convention), or ``SMALL_IMAGE_EPSILON`` = 0.1 of the range
      when ``reference`` images (N, C, H, W) have a side under 32 px, where 8/255 is well under one grey
      level of a low-bit-depth image and barely moves the baseline. The range is ``value_range``, else the
      reference's min and max.
    - tabular: 0.1 × each feature's population standard deviation in ``reference`` (the training
      features), an (F,) array; constant features get 0.
    Text has no gradient attack (``ConfigError``).
    """
    if modality == "image":
        if value_range is not None:
            try:
                lo, hi = (float(v) for v in value_range)
            except (TypeError, ValueError):
                raise ConfigError(f"value_range must be a pair of numbers, got {value_range!r}.") from None
        elif reference is not None:
            ref = np.asarray(reference, dtype=np.float64)
            lo, hi = float(ref.min()), float(ref.max())
        else:
            raise ConfigError("an image budget needs value_range or reference images; pass one of them.")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"value_range must be finite with lo < hi, got ({lo}, {hi}).")
        shape: tuple[int, ...] = np.shape(reference) if reference is not None else ()
        small = len(shape) == 4 and min(shape[2], shape[3]) < SMALL_IMAGE_SIDE
        frac, why = (
            (SMALL_IMAGE_EPSILON, f"0.1 of the value range, images under {SMALL_IMAGE_SIDE} px a side")
            if small
            else (IMAGE_EPSILON, "8/255 of the value range")
        )
        eps = frac * (hi - lo)
        return eps, f"{eps:.4g} in input units ({why}, range [{lo:g}, {hi:g}])"
    if modality == "tabular":
        if reference is None:
            raise ConfigError(
                "a tabular budget needs reference (the training features) for per-feature stds."
            )
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or ref.shape[0] == 0 or not np.isfinite(ref).all():
            raise DataError(f"reference must be a finite non-empty (N, F) array, got shape {ref.shape}.")
        eps_f = TABULAR_EPSILON_STD * ref.std(axis=0)
        return eps_f, (
            f"{TABULAR_EPSILON_STD:g} × each feature's training standard deviation "
            f"(mean {float(eps_f.mean()):.4g} in input units over {ref.shape[1]} features)"
        )
    raise ConfigError(
        f"no gradient attack for modality {modality!r}; adversarial budgets exist for 'image' and 'tabular' "
        "(text robustness is measured with perturbations)."
    )


def perturbation_stats(x: Any, x_adv: Any, *, success: Any = None) -> dict[str, Any]:
    """Size of the perturbations x' − x, over the items where ``success`` is True (all when None).

    Returns ``{"n", "linf_max", "linf_mean", "l2_mean", "l2_median"}`` (input units); the sizes are None
    when no item is selected.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(x_adv, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1 or a.shape[0] == 0:
        raise DataError(f"x and x_adv must have the same non-empty shape, got {a.shape} and {b.shape}.")
    d = (b - a).reshape(len(a), -1)
    if success is not None:
        mask = np.asarray(success, dtype=bool)
        if mask.shape != (len(a),):
            raise DataError(f"success must have one boolean per item ({len(a)}), got shape {mask.shape}.")
        d = d[mask]
    if len(d) == 0:
        return {"n": 0, "linf_max": None, "linf_mean": None, "l2_mean": None, "l2_median": None}
    linf = np.abs(d).max(axis=1)
    l2 = np.linalg.norm(d, axis=1)
    return {
        "n": len(d),
        "linf_max": float(linf.max()),
        "linf_mean": float(linf.mean()),
        "l2_mean": float(l2.mean()),
        "l2_median": float(np.median(l2)),
    }
