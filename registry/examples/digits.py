"""Classifiers for scikit-learn's 8x8 handwritten digits (pixel values 0..16)."""

from __future__ import annotations

import torch
from torch import nn

# NOTE: pixels are scaled by their maximum (16) inside forward, as a literal because
# TorchScript cannot close over module globals.


class DigitsLinear(nn.Module):
    """Softmax regression on the 64 pixels: the small first version."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(pixels / 16.0), dim=-1)


class DigitsMLP(nn.Module):
    """A two-hidden-layer MLP on the flat 64 pixels; returns class probabilities."""

    def __init__(self, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layers(pixels / 16.0), dim=-1)


class DigitsCNN(nn.Module):
    """A small CNN on ``[1, 8, 8]`` images; returns class probabilities."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 16, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(images / 16.0)), dim=-1)
