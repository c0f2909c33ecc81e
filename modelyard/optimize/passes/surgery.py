"""Module surgery shared by the prune and distill passes.

- ``structured_prune``: removes whole Conv output channels / Linear output neurons (L1 norm) and fixes the
  layer that reads them (its input channels, a Flatten→Linear block, a BatchNorm in between), found by
  tracing the module with ``torch.fx``.
- ``rebuild``: a factory that rebuilds a user's module with the pruned shapes, so that a pruned
  safetensors state dict loads from its manifest alone (``factory`` + ``factory_kwargs`` + ``shapes``).
- ``width_knobs``: the width keyword arguments (c1, c2, hidden, hidden2) of a demo-style factory.
- ``prune_hf_ffn`` / ``hf_student``: FFN-neuron pruning and fewer-layer students of BERT-like models.
- ``save_torch_candidate`` / ``save_hf_candidate``: write the result as a new Candidate.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, PassSkipped
from modelyard.runtime.torch import resolve_factory

REBUILD_REF = "modelyard.optimize.passes.surgery:rebuild"
WIDTH_KNOBS = ("c1", "c2", "hidden", "hidden2")

_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Mish,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_F = nn.functional
_ELEMENTWISE_FUNCTIONS: set[Any] = {
    _F.relu,
    torch.relu,
    _F.relu6,
    _F.gelu,
    _F.silu,
    _F.elu,
    _F.leaky_relu,
    _F.hardswish,
    _F.dropout,
    torch.sigmoid,
    torch.tanh,
}
_POOL_FUNCTIONS: set[Any] = {
    _F.max_pool1d,
    _F.max_pool2d,
    _F.avg_pool1d,
    _F.avg_pool2d,
    _F.adaptive_avg_pool1d,
    _F.adaptive_avg_pool2d,
    _F.adaptive_max_pool1d,
    _F.adaptive_max_pool2d,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


def keep_count(n: int, amount: float) -> int:
    """How many of ``n`` channels/neurons survive pruning a fraction ``amount`` (at least one)."""
    return max(1, n - math.floor(n * amount + 0.5))


def scaled_width(n: int, width: float) -> int:
    """A width ``n`` times a multiplier, rounded half up, at least one."""
    return max(1, math.floor(n * width + 0.5))


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def is_prunable_layer(m: nn.Module) -> bool:
    """Plain (not subclassed) Conv1d/Conv2d without groups, or Linear."""
    return (type(m) in _CONVS and getattr(m, "groups", 1) == 1) or type(m) is nn.Linear


# ---------------------------------------------------------------------------------------------------
# Building layers of a new size
# ---------------------------------------------------------------------------------------------------

_SIZE_KEYS: dict[type, tuple[str, ...]] = {
    nn.Conv1d: ("in_channels", "out_channels"),
    nn.Conv2d: ("in_channels", "out_channels"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
}


def resized_layer(old: nn.Module, dims: dict[str, int]) -> nn.Module:
    """A fresh layer of the same kind and settings as ``old`` with the sizes in ``dims`` changed."""
    keys = _SIZE_KEYS.get(type(old))
    if keys is None:
        raise ArtifactError(
            f"cannot resize a {type(old).__name__}; only Conv1d, Conv2d, Linear and BatchNorm1d/2d layers are resized"
        )
    unknown = sorted(set(dims) - set(keys))
    if unknown:
        raise ArtifactError(
            f"unknown size {unknown} for a {type(old).__name__}; expected some of {list(keys)}"
        )
    size = {k: int(dims.get(k, getattr(old, k))) for k in keys}
    if any(v < 1 for v in size.values()):
        raise ArtifactError(f"sizes must be positive integers, got {size} for a {type(old).__name__}")
    if isinstance(old, _CONVS):
        return type(old)(
            size["in_channels"],
            size["out_channels"],
            old.kernel_size,  # type: ignore[arg-type]
            stride=old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            dilation=old.dilation,  # type: ignore[arg-type]
            groups=old.groups,
            bias=old.bias is not None,
            padding_mode=old.padding_mode,
        )
    if isinstance(old, nn.Linear):
        return nn.Linear(size["in_features"], size["out_features"], bias=old.bias is not None)
    norm = typing.cast(nn.modules.batchnorm._BatchNorm, old)
    return type(norm)(
        size["num_features"],
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def sliced_layer(layer: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    """A copy of a Conv/Linear/BatchNorm layer keeping only the given output and input indices."""
    old: Any = layer
    new: Any
    if isinstance(old, _NORMS):
        if out_idx is None:
            return old
        new = resized_layer(old, {"num_features": len(out_idx)})
        with torch.no_grad():
            for attr in ("weight", "bias", "running_mean", "running_var"):
                src = getattr(old, attr)
                if src is not None:
                    getattr(new, attr).copy_(src[out_idx])
            if old.num_batches_tracked is not None and new.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(old.num_batches_tracked)
        return cast(nn.Module, new.train(old.training))
    in_key, out_key = _SIZE_KEYS[type(old)]
    weight = old.weight.detach()
    bias = old.bias.detach() if old.bias is not None else None
    dims = {}
    if out_idx is not None:
        weight = weight[out_idx]
        bias = bias[out_idx] if bias is not None else None
        dims[out_key] = len(out_idx)
    if in_idx is not None:
        weight = weight[:, in_idx]
        dims[in_key] = len(in_idx)
    new = resized_layer(old, dims)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return cast(nn.Module, new.train(old.training))


def layer_shape(m: nn.Module) -> dict[str, int]:
    return {k: int(getattr(m, k)) for k in _SIZE_KEYS[type(m)]}


# ---------------------------------------------------------------------------------------------------
# Structured pruning of plain PyTorch modules
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A prunable layer (``producer``) whose output reaches exactly one Conv/Linear (``consumer``), through
    element-wise ops, pooling, BatchNorm layers (``norms``) and at most one Flatten. ``block`` is how many
    consumer inputs each producer channel becomes (H*W after a Flatten, else 1)."""

    producer: str
    consumer: str
    norms: tuple[str, ...] = ()
    block: int = 1


@dataclass
class StructuredResult:
    module: nn.Module
    shapes: dict[str, dict[str, int]]
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # producer -> (kept, before)


def _other_nodes(node: torch.fx.Node, cur: torch.fx.Node) -> bool:
    """True if ``node`` reads any graph value other than ``cur``."""
    found: list[torch.fx.Node] = []

    def visit(n: torch.fx.Node) -> torch.fx.Node:
        found.append(n)
        return n

    torch.fx.node.map_arg((node.args, node.kwargs), visit)
    return any(n is not cur for n in found)


def _flatten_start_end(node: torch.fx.Node, m: nn.Module | None) -> tuple[int, int] | None:
    if isinstance(m, nn.Flatten):
        return m.start_dim, m.end_dim
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        args = list(node.args[1:])
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        if isinstance(start, int) and isinstance(end, int):
            return start, end
    return None


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _follow(
    node: torch.fx.Node, modules: dict[str, nn.Module], calls: Counter[Any], n_out: int
) -> Link | None:
    """Walk from a producer to the single layer that reads its channels, or None if the path is not simple."""
    producer = modules[str(node.target)]
    # "channels": dim 1 of an N-D tensor (conv output); "features": the last dim; "flat": after Flatten.
    state = "channels" if isinstance(producer, _CONVS) else "features"
    norms: list[str] = []
    block = 1
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        user = users[0]
        shape = _shape(cur)
        if shape is None or _other_nodes(user, cur):
            return None
        two_d = len(shape) == 2
        mod = modules.get(str(user.target)) if user.op == "call_module" else None
        if user.op == "call_module" and calls[user.target] != 1:
            return None
        if mod is not None and is_prunable_layer(mod):
            if isinstance(mod, _CONVS) and state == "channels" and type(mod) is type(producer):
                return (
                    Link(str(node.target), str(user.target), tuple(norms), 1)
                    if mod.in_channels == n_out
                    else None
                )
            if isinstance(mod, nn.Linear) and (state == "flat" or state == "features" or two_d):
                ok = mod.in_features == n_out * block
                return Link(str(node.target), str(user.target), tuple(norms), block) if ok else None
            return None
        if isinstance(mod, _NORMS):
            if state == "flat" or not (state == "channels" or two_d) or mod.num_features != n_out:
                return None
            norms.append(str(user.target))
        elif (
            isinstance(mod, _ELEMENTWISE_MODULES)
            or (user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS)
            or (user.op == "call_method" and user.target in _ELEMENTWISE_METHODS)
        ):
            pass
        elif isinstance(mod, _POOL_MODULES) or (
            user.op == "call_function" and user.target in _POOL_FUNCTIONS
        ):
            if state != "channels":
                return None
        elif (se := _flatten_start_end(user, mod)) is not None:
            start, end = se
            ndim = len(shape)
            if start % ndim != 1 or end % ndim != ndim - 1 or state == "flat":
                return None
            if state == "channels":
                block = math.prod(shape[2:])
                state = "flat"
            elif not two_d:
                return None
        else:
            return None
        cur = user


def find_links(module: nn.Module, example: torch.Tensor) -> list[Link]:
    """Trace ``module`` and return every producer→consumer pair that structured pruning can cut."""
    from torch.fx.passes.shape_prop import ShapeProp

    module.eval()
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise PassSkipped(
            f"structured pruning needs a module torch.fx can trace; tracing {type(module).__name__} failed with "
            f"{type(exc).__name__}: {first}; use prune(structured=False) for unstructured pruning"
        ) from None
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    calls: Counter[Any] = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    links = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        m = modules[str(node.target)]
        if not is_prunable_layer(m):
            continue
        n_out = int(m.out_channels if isinstance(m, _CONVS) else m.out_features)
        link = _follow(node, modules, calls, n_out)
        if link is not None:
            links.append(link)
    return links


def l1_keep(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` output rows/filters with the largest L1 norm; ties keep the lower index."""
    scores = weight.detach().abs().flatten(1).sum(1)
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return torch.sort(order).values


def structured_prune(module: nn.Module, amount: float, example: torch.Tensor) -> StructuredResult:
    """Remove ``amount`` of the output channels/neurons of every cuttable Conv/Linear (per layer, by L1 norm)
    and shrink the layers that read them. The layer that feeds the model's output is never cut.
    Modifies ``module`` in place and returns it with the map of changed layer sizes."""
    links = find_links(module, example)
    if not links:
        raise PassSkipped(
            f"structured pruning found no Conv/Linear layer in {type(module).__name__} whose output feeds exactly one "
            "Conv/Linear layer through simple ops; use prune(structured=False) for unstructured pruning"
        )
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    kept: dict[str, tuple[int, int]] = {}
    for link in links:
        layer: Any = module.get_submodule(link.producer)
        n = int(layer.weight.shape[0])
        idx = l1_keep(layer.weight, keep_count(n, amount))
        out_keep[link.producer] = idx
        kept[link.producer] = (len(idx), n)
        for norm in link.norms:
            out_keep[norm] = idx
        if link.block > 1:
            idx = (idx[:, None] * link.block + torch.arange(link.block)[None, :]).flatten()
        in_keep[link.consumer] = idx
    shapes: dict[str, dict[str, int]] = {}
    for name in sorted(set(out_keep) | set(in_keep)):
        new = sliced_layer(module.get_submodule(name), out_keep.get(name), in_keep.get(name))
        _set_submodule(module, name, new)
        shapes[name] = layer_shape(new)
    return StructuredResult(module, shapes, kept)


# ---------------------------------------------------------------------------------------------------
# Unstructured (global magnitude) masks
# ---------------------------------------------------------------------------------------------------


def unstructured_targets(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv/Linear layers to sparsify: all but the last one registered (the classifier/output layer)."""
    layers = [(n, m) for n, m in module.named_modules() if type(m) in (*_CONVS, nn.Linear)]
    return layers[:-1]


def global_magnitude_masks(weights: list[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """Boolean keep-masks that zero exactly ``round(amount * total)`` of the smallest-magnitude weights,
    counted over all tensors together (ties broken by position)."""
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    n_zero = math.floor(amount * flat.numel() + 0.5)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:n_zero]] = False
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start : start + w.numel()].view_as(w))
        start += w.numel()
    return masks


# ---------------------------------------------------------------------------------------------------
# Factories: width knobs and the generic rebuild
# ---------------------------------------------------------------------------------------------------


def _int_defaults(fn: Callable[..., Any]) -> tuple[dict[str, int], bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}, False
    out = {
        name: int(p.default)
        for name, p in sig.parameters.items()
        if isinstance(p.default, int) and not isinstance(p.default, bool)
    }
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return out, var_kw


def width_knobs(factory: str, factory_kwargs: dict[str, Any]) -> dict[str, int]:
    """The width arguments (c1, c2, hidden, hidden2) a factory takes, with their current values.

    Looks at the factory's signature; a factory that only takes ``**kwargs`` is followed to the class in its
    return annotation (as ``modelyard.zoo.nets.digits_cnn`` -> ``DigitsCNN``). Empty if it has none."""
    fn = resolve_factory(factory)
    defaults, var_kw = _int_defaults(fn)
    if var_kw and not any(k in defaults for k in WIDTH_KNOBS):
        try:
            ret = typing.get_type_hints(fn).get("return")
        except Exception:
            ret = None
        if inspect.isclass(ret):
            defaults.update(_int_defaults(ret.__init__)[0])
    knobs = {}
    for k in WIDTH_KNOBS:
        value = factory_kwargs.get(k, defaults.get(k))
        if isinstance(value, int) and not isinstance(value, bool):
            knobs[k] = int(value)
    return knobs


def rebuild(
    factory: str, factory_kwargs: dict[str, Any] | None = None, shapes: dict[str, Any] | None = None
) -> nn.Module:
    """Build ``factory(**factory_kwargs)`` and replace each layer named in ``shapes`` by a fresh layer of the
    stored size. Used as the factory of pruned user modules (their weights are loaded afterwards)."""
    module = resolve_factory(factory)(**dict(factory_kwargs or {}))
    if not isinstance(module, nn.Module):
        raise ArtifactError(f"factory {factory!r} returned a {type(module).__name__}, not a torch.nn.Module")
    for name, dims in sorted((shapes or {}).items()):
        try:
            old = module.get_submodule(name)
        except AttributeError:
            raise ArtifactError(
                f"the module built by {factory!r} has no layer {name!r} to resize; the factory changed since the "
                "model was pruned, use the factory it was pruned from"
            ) from None
        if not isinstance(dims, dict):
            raise ArtifactError(f"shape of layer {name!r} must be a mapping of sizes, got {dims!r}")
        _set_submodule(module, name, resized_layer(old, {str(k): int(v) for k, v in dims.items()}))
    return module


def _shapes_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def torch_factory_meta(
    module: nn.Module,
    parent_meta: dict[str, Any],
    shapes: dict[str, dict[str, int]],
    width_kwargs: dict[str, int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The (factory, factory_kwargs) that rebuild ``module``'s shapes: the parent's factory with new width
    kwargs when that reproduces every shape, else the generic ``rebuild`` with a map of changed layers."""
    factory = str(parent_meta.get("factory", ""))
    kwargs = dict(parent_meta.get("factory_kwargs") or {})
    if factory == REBUILD_REF:
        base, base_kwargs, base_shapes = (
            str(kwargs["factory"]),
            dict(kwargs.get("factory_kwargs") or {}),
            dict(kwargs.get("shapes") or {}),
        )
    else:
        base, base_kwargs, base_shapes = factory, kwargs, {}
    want = _shapes_of(module)
    if width_kwargs and not base_shapes:
        trial = {**base_kwargs, **width_kwargs}
        try:
            built = resolve_factory(base)(**trial)
        except Exception:
            built = None
        if isinstance(built, nn.Module) and _shapes_of(built) == want:
            return base, trial
    out: dict[str, Any] = {
        "factory": base,
        "factory_kwargs": base_kwargs,
        "shapes": {**base_shapes, **shapes},
    }
    if _shapes_of(rebuild(**out)) != want:
        raise ArtifactError(
            f"cannot rebuild the pruned module from factory {base!r}: its layers do not match the stored shapes"
        )
    return REBUILD_REF, out


# ---------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------


def save_torch_candidate(
    module: nn.Module,
    parent: Candidate,
    workdir: Path,
    *,
    factory: str,
    factory_kwargs: dict[str, Any],
    notes: list[str],
) -> Candidate:
    """Write ``module``'s state dict to ``workdir/model.safetensors`` and describe how to rebuild it."""
    from safetensors.torch import save_file

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, str(path))
    meta = {**parent.meta, "torch_kind": "safetensors", "factory": factory, "factory_kwargs": factory_kwargs}
    return Candidate(
        name=parent.name,
        format="torch",
        path=path,
        spec=parent.spec,
        parent=None,
        passes=[],
        tokenizer_dir=parent.tokenizer_dir,
        meta=meta,
        notes=list(notes),
    )
