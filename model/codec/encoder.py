"""Log-mel (100 Hz) -> latents at 12.5 Hz, causally: three stride-2 downsamplings and ConvNeXt blocks."""

from __future__ import annotations

import torch
from torch import nn

from model.codec.layers import CausalConv1d, ConvNeXtBlock


class Encoder(nn.Module):
    """``[B, n_mels, 8F]`` -> ``[B, F, out_dim]``; frame ``f`` sees mel frames up to ``8f + 7`` only."""

    def __init__(self, n_mels: int, dim: int, blocks: int, out_dim: int):
        super().__init__()
        widths = [dim // 4, dim // 2, dim]
        self.stem = CausalConv1d(n_mels, widths[0], 3)
        layers: list[nn.Module] = []
        cin = widths[0]
        for w in widths:
            # stride-2 conv with kernel 2 over the last two frames: causal and aligned to frame ends
            layers += [ConvNeXtBlock(cin, cin * 3, kernel=5), nn.Conv1d(cin, w, 2, stride=2)]
            cin = w
        self.down = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, dim * 3) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Encode normalised log-mel frames."""
        x = self.blocks(self.down(self.stem(mel)))
        return self.out(self.norm(x.transpose(1, 2)))
