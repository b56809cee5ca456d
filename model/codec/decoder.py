"""Codes (quantised values) at 12.5 Hz -> log-mel at 100 Hz, causal except one frame of lookahead."""

from __future__ import annotations

import torch
from torch import nn

from model.codec.layers import CausalConv1d, ConvNeXtBlock

MEL_PER_FRAME = 8  # 80 ms codec frame / 10 ms mel hop


class MelDecoder(nn.Module):
    """``[B, F, in_dim]`` -> ``[B, n_mels, 8F]``; mel of frame ``f`` depends on frames ``<= f + 1``."""

    LOOKAHEAD = 1  # codec frames of future context (80 ms): coarticulation needs a little

    def __init__(self, in_dim: int, dim: int, blocks: int, mel_dim: int, mel_blocks: int, n_mels: int):
        super().__init__()
        self.inp = CausalConv1d(in_dim, dim, 3, lookahead=self.LOOKAHEAD)
        # kernel 3 at 12.5 Hz: a short receptive field keeps streaming re-computation cheap
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, dim * 3, kernel=3) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, mel_dim * MEL_PER_FRAME)  # one frame -> 8 mel-rate vectors
        self.mel_blocks = nn.Sequential(*[ConvNeXtBlock(mel_dim, mel_dim * 3) for _ in range(mel_blocks)])
        self.mel_norm = nn.LayerNorm(mel_dim)
        self.out = nn.Linear(mel_dim, n_mels)
        self.mel_dim = mel_dim

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """Decode quantised frames ``[B, F, D]`` to normalised log-mel ``[B, n_mels, 8F]``."""
        return self._mel(self.mel_blocks(self._upsample(self.blocks(self.inp(q.transpose(1, 2))))))

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.norm(x.transpose(1, 2)))  # [B, F, 8 * mel_dim]
        b, f, _ = x.shape
        return x.reshape(b, f * MEL_PER_FRAME, self.mel_dim).transpose(1, 2)

    def _mel(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mel_norm(x.transpose(1, 2))).transpose(1, 2)

    def step(self, q: torch.Tensor, state: dict) -> torch.Tensor:
        """Streaming :meth:`forward`: new frames in, the mel they complete out (one frame behind).

        ``state`` (a dict, empty at stream start) keeps each conv's cache. To end a stream, push
        ``LOOKAHEAD`` frames of zeros (the right padding of :meth:`forward`).
        """
        x, state["inp"] = self.inp.step(q.transpose(1, 2), state.get("inp"))
        for i, block in enumerate(self.blocks):
            x, state[f"b{i}"] = block.step(x, state.get(f"b{i}"))
        x = self._upsample(x)
        for i, block in enumerate(self.mel_blocks):
            x, state[f"m{i}"] = block.step(x, state.get(f"m{i}"))
        return self._mel(x)
