"""The interleaved text/audio sequence of an assistant turn, and its attention mask.

Layout of a reply (after the chat prompt, which ends with ``<|im_start|>assistant`` and a newline)::

    t1..tN1 <boa> f1..fM1 <eoa> tN1+1..tN1+N <boa> ..M frames.. <eoa> ... t..tlast <boa> last span <eoa>

The first chunk has ``first_text`` tokens and ``first_audio`` frames (so sound starts early), the
next ones ``text`` tokens and ``audio`` frames. Once the text is done the remaining audio goes in
one last span, followed by END frames (the end-of-audio code the diffusion predicts, see
:data:`END`). The backbone's LM head is asked for ``<|im_end|>`` after the last text token (that
is how text generation says it is done), but the token is not placed there: the last span is.

One frame is one position. Its codes live in ``codes[i]`` (G values in ``0..K-1``), or are
:data:`MASK` (not decided yet / noised) or :data:`END` (the audio ended before this frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

MASK = -1  # a frame's code value while it is masked (absorbing state of the diffusion)
END = -2  # a frame's code value once it is decided to lie past the end of the audio
IGNORE = -100  # "no text target here", as torch's cross-entropy expects


class Kind(IntEnum):
    """What a position holds; each kind has its own input embedding."""

    TEXT = 0  # a text token of the backbone's vocabulary
    BOA = 1  # begin-of-audio marker, opens a span
    FRAME = 2  # one audio frame (G codes, MASK or END)
    EOA = 3  # end-of-audio marker, closes a span
    PAD = 4  # batch padding; attends only to itself, never attended to


@dataclass(frozen=True)
class Chunking:
    """How a reply interleaves text and audio (from ``settings.talker``)."""

    first_text: int  # N1: text tokens before the first span
    first_audio: int  # M1: frames in the first span
    text: int  # N: text tokens per later chunk
    audio: int  # M: frames per later (not last) span

    def __post_init__(self) -> None:
        if min(self.first_text, self.first_audio, self.text, self.audio) < 1:
            raise ValueError(f"every chunk size must be >= 1, got {self}")

    def text_sizes(self, n_tokens: int) -> list[int]:
        """Split ``n_tokens`` reply tokens into text chunks: ``[N1, N, N, ..., rest]``."""
        sizes, left, first = [], n_tokens, True
        while left > 0:
            take = min(left, self.first_text if first else self.text)
            sizes.append(take)
            left -= take
            first = False
        return sizes or [0]

    def audio_size(self, span_index: int) -> int:
        """Frames of the (not last) span number ``span_index``."""
        return self.first_audio if span_index == 0 else self.audio


@dataclass
class Sequence:
    """One token sequence, position by position (all tensors have length L along dim 0)."""

    kinds: torch.Tensor  # [L] long: a Kind per position
    tokens: torch.Tensor  # [L] long: the text token id at TEXT positions, 0 elsewhere
    codes: torch.Tensor  # [L, G] long: a FRAME's codes (or MASK / END), 0 elsewhere
    span: torch.Tensor  # [L] long: index of the audio span a FRAME belongs to, -1 elsewhere
    text_target: torch.Tensor  # [L] long: the text token this position must predict, or IGNORE
    reply_start: int  # index of the first reply position (everything before is the prompt)

    def __len__(self) -> int:
        return int(self.kinds.shape[0])


def build_sequence(
    prompt_ids: list[int],
    reply_ids: list[int],
    codes: torch.Tensor,
    chunking: Chunking,
    end_token: int,
    end_frames: int = 1,
) -> Sequence:
    """Lay out a prompt and a reply (text ``reply_ids`` voiced by ``codes`` [F, G]) as one sequence.

    Regular spans take their frames in order; the last span takes all remaining frames and then
    ``end_frames`` END frames (0 leaves the end unmarked, as SST's truncated spans are).
    ``end_token`` (``<|im_end|>``) is the text target after the last reply token.
    """
    if codes.ndim != 2:
        raise ValueError(f"codes must be [frames, groups], got shape {tuple(codes.shape)}")
    if not reply_ids:
        raise ValueError("the reply has no text tokens: there is nothing to voice")
    groups = codes.shape[1]
    kinds: list[int] = []
    tokens: list[int] = []
    frames: list[torch.Tensor] = []
    span: list[int] = []
    target: list[int] = []

    def add(kind: Kind, token: int = 0, frame: torch.Tensor | None = None, span_id: int = -1) -> None:
        kinds.append(int(kind))
        tokens.append(token)
        frames.append(frame if frame is not None else torch.zeros(groups, dtype=torch.long))
        span.append(span_id)
        target.append(IGNORE)

    for tok in prompt_ids:
        add(Kind.TEXT, tok)
    reply_start = len(kinds)
    sizes = chunking.text_sizes(len(reply_ids))
    cursor_text, cursor_audio = 0, 0
    end_row = torch.full((groups,), END, dtype=torch.long)
    for index, size in enumerate(sizes):
        for tok in reply_ids[cursor_text : cursor_text + size]:
            if kinds:
                target[-1] = tok  # the previous position (prompt end, text or <eoa>) predicts it
            add(Kind.TEXT, tok)
        cursor_text += size
        last = index == len(sizes) - 1
        if last:
            target[-1] = end_token  # "the text is done"
            take = codes.shape[0] - cursor_audio
        else:
            take = min(chunking.audio_size(index), codes.shape[0] - cursor_audio)
        add(Kind.BOA)
        for f in range(cursor_audio, cursor_audio + take):
            add(Kind.FRAME, frame=codes[f], span_id=index)
        cursor_audio += take
        if last:
            for _ in range(end_frames):
                add(Kind.FRAME, frame=end_row, span_id=index)
        add(Kind.EOA)
    return Sequence(
        kinds=torch.tensor(kinds, dtype=torch.long),
        tokens=torch.tensor(tokens, dtype=torch.long),
        codes=torch.stack(frames) if frames else torch.zeros(0, groups, dtype=torch.long),
        span=torch.tensor(span, dtype=torch.long),
        text_target=torch.tensor(target, dtype=torch.long),
        reply_start=reply_start,
    )


def allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, q_span: torch.Tensor, k_span: torch.Tensor) -> torch.Tensor:
    """The attention rule as a bool matrix [..., Q, K]: True where query may attend to key.

    Causal (key at or before the query), plus bidirectional among the frames of one audio span.
    Span ids must be unique per sequence (-1 = not a frame).
    """
    causal = k_pos.unsqueeze(-2) <= q_pos.unsqueeze(-1)
    same_span = (q_span.unsqueeze(-1) == k_span.unsqueeze(-2)) & (q_span.unsqueeze(-1) >= 0)
    return causal | same_span


def attention_mask(span: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask [B, 1, L, L] (True = attend) for a batch of span-id rows [B, L].

    ``valid`` [B, L] marks real positions; a padding position attends only to itself (so its
    softmax stays finite) and no real position attends to it.
    """
    if span.ndim == 1:
        span = span.unsqueeze(0)
    batch, length = span.shape
    pos = torch.arange(length, device=span.device).expand(batch, length)
    mask = allowed(pos, pos, span, span)
    if valid is not None:
        if valid.ndim == 1:
            valid = valid.unsqueeze(0)
        mask = mask & valid.unsqueeze(-2) & valid.unsqueeze(-1)
        mask = mask | torch.eye(length, dtype=torch.bool, device=span.device)
    return mask.unsqueeze(1)


def collate(sequences: list[Sequence]) -> dict[str, torch.Tensor]:
    """Right-pad sequences into a batch: kinds/tokens/codes/span/text_target/valid/mask tensors."""
    if not sequences:
        raise ValueError("collate needs at least one sequence")
    length = max(len(s) for s in sequences)
    groups = sequences[0].codes.shape[1]

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        extra = length - t.shape[0]
        if extra == 0:
            return t
        filler = torch.full((extra, *t.shape[1:]), value, dtype=t.dtype)
        return torch.cat([t, filler])

    batch = {
        "kinds": torch.stack([pad(s.kinds, int(Kind.PAD)) for s in sequences]),
        "tokens": torch.stack([pad(s.tokens, 0) for s in sequences]),
        "codes": torch.stack([pad(s.codes.reshape(-1, groups), 0) for s in sequences]),
        "span": torch.stack([pad(s.span, -1) for s in sequences]),
        "text_target": torch.stack([pad(s.text_target, IGNORE) for s in sequences]),
    }
    batch["valid"] = batch["kinds"] != int(Kind.PAD)
    batch["mask"] = attention_mask(batch["span"], batch["valid"])
    return batch
