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

    def step(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming forward: ``cache`` holds the last inputs (None at stream start = zero padding).

        Returns the outputs that ``x`` completes (``lookahead`` fewer on the first call) and the
        new cache. At the end of a stream, push ``lookahead`` zero frames to match :meth:`forward`.
        """
        if cache is None:
            cache = x.new_zeros(x.shape[0], x.shape[1], self.left)
        full = torch.cat([cache, x], -1)
        k = self.kernel_size[0]
        if full.shape[-1] < k:  # not enough input yet for one output (lookahead at stream start)
            return x.new_zeros(x.shape[0], self.out_channels, 0), full
        return F.conv1d(full, self.weight, self.bias, groups=self.groups), full[..., full.shape[-1] - (k - 1) :]


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
        return self._rest(x, self.dw(x))

    def _rest(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self.down(F.gelu(self.up(self.norm(y.transpose(1, 2)))))
        return x + (self.scale * y).transpose(1, 2)

    def step(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming forward (causal blocks only): see :meth:`CausalConv1d.step`."""
        y, cache = self.dw.step(x, cache)
        return self._rest(x, y), cache
