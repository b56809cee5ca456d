"""Confidence-ordered unmasking of one audio span (the MaskGIT / LLaDA schedule).

A span starts as M [MASK] frames. Each of S steps predicts every still-masked frame in parallel
and commits the most confident ones; the number committed per step follows a cosine schedule
(few frames first, while the context is thin, more later), the one aMUSEd / MaskGIT use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.sequence import END, MASK


def unmask_counts(length: int, steps: int) -> list[int]:
    """Frames to commit at each step so that ``length`` frames are done after at most ``steps`` steps.

    Cosine schedule: after step s of S, ``floor(length * cos(pi/2 * s/S))`` frames stay masked.
    Steps that would commit nothing are dropped (no wasted forward pass), so every count is >= 1
    and they sum to ``length``.
    """
    if length < 0 or steps < 1:
        raise ValueError(f"need length >= 0 and steps >= 1, got length={length}, steps={steps}")
    counts, masked = [], length
    for s in range(1, steps + 1):
        left = 0 if s == steps else math.floor(length * math.cos(math.pi / 2 * s / steps))
        if masked - left > 0:
            counts.append(masked - left)
        masked = min(masked, left)
    return counts


@dataclass
class Guess:
    """The model's current proposal for every frame of a span."""

    codes: torch.Tensor  # [M, G] long: proposed codes (END rows where ``end`` is set)
    end: torch.Tensor  # [M] bool: the frame is proposed to lie past the end of the audio
    confidence: torch.Tensor  # [M] float: log-probability of the proposal (higher = surer)


def guess_frames(
    code_logits: torch.Tensor,
    end_logits: torch.Tensor,
    allow_end: bool,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> Guess:
    """Propose every frame from its logits: ``code_logits`` [M, G, K], ``end_logits`` [M].

    Greedy when ``temperature`` is 0, else codes are sampled at that temperature. ``allow_end``
    is False for regular spans, which never end the audio.
    """
    logp = torch.log_softmax(code_logits.float(), dim=-1)
    if temperature > 0:
        probs = torch.softmax(code_logits.float() / temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        codes = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    else:
        codes = logp.argmax(dim=-1)
    code_conf = logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
    if not allow_end:
        return Guess(codes, torch.zeros_like(end_logits, dtype=torch.bool), code_conf)
    p_end = torch.nn.functional.logsigmoid(end_logits.float())
    p_more = torch.nn.functional.logsigmoid(-end_logits.float())
    end = p_end > p_more
    codes = torch.where(end.unsqueeze(-1), torch.full_like(codes, END), codes)
    confidence = torch.where(end, p_end, p_more + code_conf)
    return Guess(codes, end, confidence)


def commit(frames: torch.Tensor, guess: Guess, count: int) -> torch.Tensor:
    """Return ``frames`` [M, G] with its ``count`` most confident masked frames set from ``guess``."""
    masked = frames[:, 0] == MASK
    count = min(count, int(masked.sum()))
    if count <= 0:
        return frames
    score = guess.confidence.masked_fill(~masked, float("-inf"))
    chosen = score.topk(count).indices
    out = frames.clone()
    out[chosen] = guess.codes[chosen]
    return out


def audio_length(frames: torch.Tensor) -> int:
    """Frames of real audio in a decided span: everything before its first END frame."""
    ended = (frames[:, 0] == END).nonzero()
    return int(ended[0, 0]) if len(ended) else int(frames.shape[0])
