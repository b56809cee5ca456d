"""Building blocks shared by the encoder, decoder and vocoder: causal convs and ConvNeXt blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Conv1d):
    """A Conv1d padded on the left only (``lookahead`` frames may come from the right).

    Output frame ``t`` sees inputs ``t - (k - 1 - lookahead) .. t + lookahead``: with lookahead 0,
    no future input, which is what makes chunked decoding equal whole decoding.
    """

    def __init__(self, cin: int, cout: int, kernel: int, lookahead: int = 0, groups: int = 1):
        super().__init__(cin, cout, kernel, groups=groups)
        self.left = kernel - 1 - lookahead
        self.lookahead = lookahead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C', T]``."""
        return super().forward(F.pad(x, (self.left, self.lookahead)))


class ConvNeXtBlock(nn.Module):
    """Vocos' ConvNeXt block, causal: depthwise conv -> LayerNorm -> MLP, residual with layer scale."""

    def __init__(self, dim: int, hidden: int, kernel: int = 7, lookahead: int = 0):
        super().__init__()
        self.dw = CausalConv1d(dim, dim, kernel, lookahead=lookahead, groups=dim)
        self.norm = nn.LayerNorm(dim)  # over channels only: no statistic crosses time
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``."""
        y = self.dw(x).transpose(1, 2)
        y = self.down(F.gelu(self.up(self.norm(y))))
        return x + (self.scale * y).transpose(1, 2)
