"""Small layers shared by several networks (names match the originals' keys)."""
import torch
from torch import nn


class Mlp(nn.Module):
    """timm-style transformer MLP: fc1 -> GELU -> fc2 (keys fc1.*, fc2.*)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
