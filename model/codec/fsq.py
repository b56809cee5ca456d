"""Finite scalar quantisation (Mentzer et al., 2023): round each bounded latent dim to a few levels."""

from __future__ import annotations

import math

import torch
from torch import nn


class FSQ(nn.Module):
    """Quantise ``[..., G * len(levels)]`` latents into ``G`` integer codes in ``[0, prod(levels))``.

    No codebook and no commitment loss: each dim is squashed by tanh to ``levels[i]`` values and
    rounded with a straight-through gradient, so every code is used and training is stable.
    """

    def __init__(self, levels: list[int], groups: int):
        super().__init__()
        self.levels = list(levels)
        self.groups = groups
        self.dim = len(levels)  # latent dims per group
        self.codebook_size = math.prod(levels)
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1]), 0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` so that rounding gives exactly ``levels[i]`` values per dim."""
        half = (self._levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., G*D]`` -> quantised values in [-1, 1] (same shape), straight-through."""
        shape = z.shape
        z = z.reshape(*shape[:-1], self.groups, self.dim)
        bounded = self.bound(z)
        q = bounded + (torch.round(bounded) - bounded).detach()
        return (q / (self._levels // 2)).reshape(shape)

    def to_codes(self, q: torch.Tensor) -> torch.Tensor:
        """Quantised values ``[..., G*D]`` -> integer codes ``[..., G]``."""
        q = q.reshape(*q.shape[:-1], self.groups, self.dim)
        digits = torch.round(q * (self._levels // 2) + self._levels // 2).long()
        return (digits * self._basis).sum(-1)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes ``[..., G]`` -> quantised values ``[..., G*D]``."""
        if codes.shape[-1] != self.groups:
            raise ValueError(f"expected {self.groups} codes per frame, got shape {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}); got {codes.min()}..{codes.max()}")
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels.long()
        q = (digits - self._levels // 2) / (self._levels // 2)
        return q.reshape(*codes.shape[:-1], self.groups * self.dim).float()
