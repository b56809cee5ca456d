"""Vocos-style vocoder: causal ConvNeXt over log-mel -> STFT magnitude and phase -> overlap-add iSTFT."""

from __future__ import annotations

import torch
from torch import nn

from model.codec.dsp import N_FFT, istft
from model.codec.layers import CausalConv1d, ConvNeXtBlock


class Vocoder(nn.Module):
    """``[B, n_mels, M]`` log-mel -> ``[B, M * 160]`` waveform; frame ``m`` uses mel frames ``<= m``."""

    def __init__(self, n_mels: int, dim: int, blocks: int):
        super().__init__()
        self.inp = CausalConv1d(n_mels, dim, 7)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, dim * 3) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.bins = N_FFT // 2 + 1
        self.out = nn.Linear(dim, 2 * self.bins)

    def spectrum(self, logmel: torch.Tensor) -> torch.Tensor:
        """Complex STFT frames ``[B, bins, M]`` predicted from ``logmel``."""
        return self._head(self.blocks(self.inp(logmel)))

    def step(self, logmel: torch.Tensor, state: dict) -> torch.Tensor:
        """Streaming :meth:`spectrum` (``state``: a dict of conv caches, empty at stream start)."""
        x, state["inp"] = self.inp.step(logmel, state.get("inp"))
        for i, block in enumerate(self.blocks):
            x, state[f"b{i}"] = block.step(x, state.get(f"b{i}"))
        return self._head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.out(self.norm(x.transpose(1, 2))).transpose(1, 2)
        logmag, phase = x.split(self.bins, dim=1)
        mag = torch.exp(logmag.clamp(max=6.0))  # clamp: one wild frame must not blow up the audio
        return torch.polar(mag, phase)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """Waveform from (un-normalised, natural-log) mel."""
        return istft(self.spectrum(logmel))
