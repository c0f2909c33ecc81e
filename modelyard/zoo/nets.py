"""Small PyTorch architectures used by the built-in demos. Widths are arguments so that pruning and
distillation can rebuild narrower variants from a factory reference plus keyword arguments."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Conv(1→c1)-ReLU-Conv(c1→c2)-ReLU-MaxPool2-FC(c2·16→hidden)-ReLU-FC(hidden→10), 8x8 inputs in [0, 1]."""

    def __init__(self, c1: int = 16, c2: int = 32, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.classifier(self.features(x)))


class TabularMLP(nn.Module):
    """Standardize (stored mean/std) then an MLP; takes raw feature values."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, n_features: int = 30, hidden: int = 64, hidden2: int = 32, num_classes: int = 2
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden2),
            nn.ReLU(),
            nn.Linear(hidden2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.net((x - self.mean) / self.std))


def digits_cnn(**kwargs: Any) -> DigitsCNN:
    return DigitsCNN(**kwargs)


def tabular_mlp(**kwargs: Any) -> TabularMLP:
    return TabularMLP(**kwargs)
