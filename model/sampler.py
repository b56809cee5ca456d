"""Confidence-ordered unmasking of one audio span, code by code (the MaskGIT / LLaDA schedule).

A span starts as k frames of G [MASK] codes. Each of S steps predicts every still-masked code in
parallel and commits the most confident ones; the number committed per step follows a cosine
schedule (few first, while the context is thin, more later). Codes of one frame can be committed
at different steps, so codes that depend on each other need not be decided together.
"""

from __future__ import annotations

import math

import torch

from model.sequence import MASK


def unmask_counts(total: int, steps: int) -> list[int]:
    """Codes to commit at each step so that ``total`` codes are done after at most ``steps`` steps.

    Cosine schedule: after step s of S, ``floor(total * cos(pi/2 * s/S))`` codes stay masked.
    Steps that would commit nothing are dropped (no wasted forward pass), so every count is >= 1
    and they sum to ``total``.
    """
    if total < 0 or steps < 1:
        raise ValueError(f"need total >= 0 and steps >= 1, got total={total}, steps={steps}")
    counts, masked = [], total
    for s in range(1, steps + 1):
        left = 0 if s == steps else math.floor(total * math.cos(math.pi / 2 * s / steps))
        if masked - left > 0:
            counts.append(masked - left)
        masked = min(masked, left)
    return counts


def guess_codes(
    logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposed codes [k, G] and their log-probabilities (confidence) from logits [k, G, K].

    Greedy when ``temperature`` is 0, else sampled at that temperature.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    if temperature > 0:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        codes = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(probs.shape[:-1])
    else:
        codes = logp.argmax(dim=-1)
    return codes, logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1)


def commit(frames: torch.Tensor, codes: torch.Tensor, confidence: torch.Tensor, count: int) -> torch.Tensor:
    """``frames`` [k, G] with its ``count`` most confident masked codes set from ``codes``."""
    masked = frames == MASK
    count = min(count, int(masked.sum()))
    if count <= 0:
        return frames
    score = confidence.masked_fill(~masked, float("-inf")).flatten()
    chosen = score.topk(count).indices
    out = frames.clone().flatten()
    out[chosen] = codes.flatten()[chosen]
    return out.view_as(frames)
