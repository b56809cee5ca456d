"""The interleaved text/audio layout of an assistant turn, its positions, and its attention mask.

A reply is cut into chunks of whole words (:mod:`model.chunks`). Chunk j has text tokens T_j,
phoneme ids P_j (inputs only, never predicted) and an audio span A_j of k_j frames, announced by a
duration position D_j whose embedding says k_j. Text runs one chunk ahead of the audio it voices::

    prompt | T1 P1 | T2 P2 D1 A1 | T3 P3 D2 A2 | ... | Tm Pm D(m-1) A(m-1) | <|im_end|> Dm Am

Prediction targets (training) and decisions (inference):

- every text position predicts the next reply text token, in reading order, skipping the phoneme,
  duration and frame positions between them; the last text token predicts ``<|im_end|>``;
- the last text position before D_j predicts k_j (the duration head);
- the frames of a span are filled by masked diffusion; they attend to each other both ways;
- a frame may also carry the phoneme it voices (from the aligner), the target of an auxiliary
  head that teaches frames where in their chunk's phonemes they are (training only).

One frame is one position; its codes live in ``codes`` (G values in ``0..K-1``, or :data:`MASK`
per code while undecided). :class:`Positions` is the one builder of positions: training lays out a
whole reply with :func:`build_reply`, generation appends the same rows as it decides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

MASK = -1  # a code's value while it is masked (the absorbing state of the diffusion)
IGNORE = -100  # "no target here", as torch's cross-entropy expects


class Kind(IntEnum):
    """What a position holds; each kind has its own input embedding."""

    TEXT = 0  # a text token of the backbone's vocabulary (``token`` = its id)
    PHONE = 1  # a phoneme of the chunk just written (``token`` = phoneme id)
    DUR = 2  # the length of the span that follows (``token`` = k frames)
    FRAME = 3  # one audio frame (``codes``; ``slot`` = its index in the span, ``token`` = span length)
    PAD = 4  # batch padding; attends only to itself, never attended to
    NULL = 5  # a reply text or phoneme position with its content hidden (guidance's unconditional branch)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a reply as the layout needs it."""

    tokens: list[int]  # text token ids of the chunk's words
    phonemes: list[int]  # phoneme ids (model.phonemes.Phonemizer.ids)
    frames: int = 0  # k: the span's length (known in training; decided at inference)


class Positions:
    """A growing list of positions: kind, token, codes, span id, slot and targets per row."""

    FIELDS = ("kinds", "tokens", "codes", "span", "slot", "text_target", "dur_target", "phone_target")

    def __init__(self, groups: int):
        self.groups = groups
        self.kinds: list[int] = []
        self.tokens: list[int] = []
        self.codes: list[list[int]] = []
        self.span: list[int] = []  # span id of a FRAME, -1 elsewhere
        self.slot: list[int] = []  # a FRAME's index within its span, -1 elsewhere
        self.text_target: list[int] = []  # next text token (training), or IGNORE
        self.dur_target: list[int] = []  # length of the next span (training), or IGNORE
        self.phone_target: list[int] = []  # a FRAME's aligned phoneme class (training), or IGNORE

    def __len__(self) -> int:
        return len(self.kinds)

    def _add(self, kind: Kind, token: int = 0, codes: list[int] | None = None, span: int = -1, slot: int = -1):
        self.kinds.append(int(kind))
        self.tokens.append(int(token))
        self.codes.append(codes if codes is not None else [0] * self.groups)
        self.span.append(span)
        self.slot.append(slot)
        self.text_target.append(IGNORE)
        self.dur_target.append(IGNORE)
        self.phone_target.append(IGNORE)

    def add_text(self, tokens: list[int]) -> None:
        """Text tokens (prompt or reply)."""
        for tok in tokens:
            self._add(Kind.TEXT, tok)

    def add_phonemes(self, ids: list[int]) -> None:
        """A chunk's phoneme ids."""
        for p in ids:
            self._add(Kind.PHONE, p)

    def add_span(
        self, frames: torch.Tensor | list[list[int]], span: int, phones: torch.Tensor | list[int] | None = None
    ) -> None:
        """D (the span's length) and its frames [k, G] (codes, MASK where undecided), with their phonemes [k]."""
        rows = frames.tolist() if isinstance(frames, torch.Tensor) else frames
        labels = phones.tolist() if isinstance(phones, torch.Tensor) else phones
        if labels is not None and len(labels) != len(rows):
            raise ValueError(f"{len(labels)} phoneme labels for a span of {len(rows)} frames")
        self._add(Kind.DUR, len(rows))
        for i, row in enumerate(rows):
            self._add(Kind.FRAME, len(rows), [int(c) for c in row], span, i)
            if labels is not None:
                self.phone_target[-1] = int(labels[i])

    def hide_text(self, start: int, end_token: int) -> Positions:
        """A new list with every text and phoneme position from ``start`` on made :data:`Kind.NULL`.

        The model then hears the reply's audio and durations but not its words (classifier-free
        guidance's unconditional branch); the end token stays, as it says where the last span
        begins. Only audio is predicted in such a sequence: no text or duration targets remain.
        """
        out = self.concat(Positions(self.groups))
        hidden = (int(Kind.TEXT), int(Kind.PHONE))
        for i in range(start, len(out)):
            if out.kinds[i] in hidden and not (out.kinds[i] == int(Kind.TEXT) and out.tokens[i] == end_token):
                out.kinds[i], out.tokens[i] = int(Kind.NULL), 0
        out.text_target = [IGNORE] * len(out)
        out.dur_target = [IGNORE] * len(out)
        return out

    def last_text_index(self) -> int:
        """Index of the last TEXT position (where the next token and the next duration are predicted)."""
        for i in range(len(self.kinds) - 1, -1, -1):
            if self.kinds[i] == int(Kind.TEXT):
                return i
        raise ValueError("no text position yet")

    def _rows(self, cut: slice) -> Positions:
        out = Positions(self.groups)
        for name in self.FIELDS:
            setattr(out, name, getattr(self, name)[cut])
        return out

    def head(self, count: int) -> Positions:
        """A new list of the first ``count`` rows."""
        return self._rows(slice(None, count))

    def tail(self, start: int) -> Positions:
        """A new list of the rows from ``start`` on."""
        return self._rows(slice(start, None))

    def concat(self, other: Positions) -> Positions:
        """A new list: these rows, then ``other``'s."""
        out = Positions(self.groups)
        for name in self.FIELDS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Rows as tensors: codes [L, G], every other field [L]."""
        long = {"dtype": torch.long, "device": device}
        out = {name: torch.tensor(getattr(self, name), **long) for name in self.FIELDS if name != "codes"}
        out["codes"] = torch.tensor(self.codes, **long).reshape(len(self), self.groups)
        return out


def build_reply(
    prompt_ids: list[int],
    chunks: list[Chunk],
    codes: torch.Tensor,
    end_token: int,
    phones: torch.Tensor | None = None,
) -> tuple[Positions, int]:
    """The training layout of a prompt and a reply voiced by ``codes`` [F, G]; returns (positions, reply start).

    ``chunks`` carry their span lengths, which must sum to F; ``phones`` [F] are the frames'
    aligned phoneme classes (the auxiliary head's targets), if known.
    """
    if codes.ndim != 2:
        raise ValueError(f"codes must be [frames, groups], got shape {tuple(codes.shape)}")
    if not chunks or not any(c.tokens for c in chunks):
        raise ValueError("the reply has no text tokens: there is nothing to voice")
    if sum(c.frames for c in chunks) != codes.shape[0] or min(c.frames for c in chunks) < 1:
        raise ValueError(
            f"span lengths {[c.frames for c in chunks]} must be >= 1 and sum to the {codes.shape[0]} frames"
        )
    if phones is not None and phones.shape != codes.shape[:1]:
        raise ValueError(f"phones {tuple(phones.shape)} must give one label per frame of codes {tuple(codes.shape)}")
    pos = Positions(codes.shape[1])
    pos.add_text(prompt_ids)
    reply_start = len(pos)

    def write_text(tokens: list[int]) -> None:
        for tok in tokens:
            if len(pos):
                pos.text_target[pos.last_text_index()] = tok
            pos.add_text([tok])

    starts = [0]
    for c in chunks:
        starts.append(starts[-1] + c.frames)
    write_text(chunks[0].tokens)
    pos.add_phonemes(chunks[0].phonemes)
    for j, chunk in enumerate(chunks):
        if j + 1 < len(chunks):
            write_text(chunks[j + 1].tokens)
            pos.add_phonemes(chunks[j + 1].phonemes)
        else:
            write_text([end_token])
            pos.text_target[pos.last_text_index()] = IGNORE  # nothing is predicted after <|im_end|>
        pos.dur_target[pos.last_text_index()] = chunk.frames
        cut = slice(starts[j], starts[j + 1])
        pos.add_span(codes[cut], span=j, phones=None if phones is None else phones[cut])
    return pos, reply_start


def allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, q_span: torch.Tensor, k_span: torch.Tensor) -> torch.Tensor:
    """The attention rule as a bool matrix [..., Q, K]: True where query may attend to key.

    Causal (key at or before the query), plus bidirectional among the frames of one audio span.
    Span ids must be unique per sequence (-1 = not a frame).
    """
    causal = k_pos.unsqueeze(-2) <= q_pos.unsqueeze(-1)
    same_span = (q_span.unsqueeze(-1) == k_span.unsqueeze(-2)) & (q_span.unsqueeze(-1) >= 0)
    return causal | same_span


@dataclass
class Packed:
    """Several sequences packed into rows of one batch (no padding between them)."""

    tensors: dict[str, torch.Tensor]  # Positions.tensors fields, each [B, L(, G)]
    positions: torch.Tensor  # [B, L] RoPE positions, restarting at 0 for every sequence
    mask: torch.Tensor  # [B, 1, L, L] bool: the attention rule within each sequence, nothing across
    real: int  # positions that are not padding
    order: list[int]  # indices of the sequences as they lie in the batch, row by row (row-major reading order)


def pack(sequences: list[Positions], row_length: int = 0) -> Packed:
    """First-fit pack ``sequences`` (longest first) into rows of at most ``row_length`` positions.

    A sequence longer than ``row_length`` gets a row of its own (``row_length`` 0: every one does,
    and rows are padded to the longest). Span ids are made unique per row;
    a padding position attends only to itself, so its softmax stays finite.
    """
    if not sequences:
        raise ValueError("pack needs at least one sequence")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(sequences[i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(row_length, n) - n)
    length = max(sum(len(sequences[i]) for i in row) for row in rows)
    fill = {"kinds": int(Kind.PAD), "span": -1, "slot": -1}
    fill |= {"text_target": IGNORE, "dur_target": IGNORE, "phone_target": IGNORE}
    batch: dict[str, list[torch.Tensor]] = {k: [] for k in Positions.FIELDS}
    positions, segments = [], []
    for row in rows:
        parts = [sequences[i].tensors() for i in row]
        used = sum(len(sequences[i]) for i in row)
        span_offset = 0
        for part in parts:
            frames = part["span"] >= 0
            part["span"] = torch.where(frames, part["span"] + span_offset, part["span"])
            span_offset = int(part["span"].max()) + 1 if frames.any() else span_offset
        for key in batch:
            values = torch.cat([p[key] for p in parts])
            extra = length - used
            if extra:
                pad_value = fill.get(key, 0)
                shape = (extra, *values.shape[1:])
                values = torch.cat([values, torch.full(shape, pad_value, dtype=values.dtype)])
            batch[key].append(values)
        positions.append(torch.cat([torch.arange(len(sequences[i])) for i in row] + [torch.zeros(length - used)]))
        segments.append(
            torch.cat(
                [torch.full((len(sequences[i]),), s) for s, i in enumerate(row)] + [torch.full((length - used,), -1)]
            )
        )
    tensors = {k: torch.stack(v) for k, v in batch.items()}
    pos = torch.stack(positions).long()
    seg = torch.stack(segments).long()
    mask = allowed(pos, pos, tensors["span"], tensors["span"])
    mask = mask & (seg.unsqueeze(-1) == seg.unsqueeze(-2)) & (seg >= 0).unsqueeze(-1)
    mask = mask | torch.eye(length, dtype=torch.bool).expand_as(mask)
    real = int((tensors["kinds"] != int(Kind.PAD)).sum())
    return Packed(tensors, pos, mask.unsqueeze(1), real, [i for row in rows for i in row])
