"""A regressor for scikit-learn's diabetes data set (10 scaled features)."""

from __future__ import annotations

import torch
from torch import nn


class DiabetesRegressor(nn.Module):
    """An MLP predicting disease progression one year on, in the data set's own units.

    The target's mean and spread are buffers, so they travel in the state dict and the
    output needs no un-scaling by the client.
    """

    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(10, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scaled: torch.Tensor = self.layers(features)
        return scaled * self.target_std + self.target_mean
