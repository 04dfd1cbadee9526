"""A plain MLP factory: Linear layers of the given widths with ReLU between them."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class MLP(nn.Module):
    """``MLP(widths=[64, 128, 10])``: what ``make bench`` serves as ``tiny`` and ``medium``."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out))
            if index < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
