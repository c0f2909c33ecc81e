"""Deterministic supervised training loop shared by the demos and the fine-tune/distill passes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Adam + cross-entropy, fixed seed and batch order; ``after_step`` runs after every optimizer step
    (pruning uses it to keep pruned weights at zero)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            xb = xt[idx]
            if augment is not None:
                xb = augment(xb, gen)
            opt.zero_grad()
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
    return model.eval()
