"""The reply layout, the attention-mask rule, and the unmasking schedule."""

from __future__ import annotations

import pytest
import torch

from model.sampler import Guess, audio_length, commit, guess_frames, unmask_counts
from model.sequence import END, IGNORE, MASK, Chunking, Kind, attention_mask, build_sequence, collate

CHUNKING = Chunking(first_text=2, first_audio=3, text=4, audio=5)
EOS = 999


def _codes(n: int, groups: int = 2) -> torch.Tensor:
    return torch.arange(n * groups).reshape(n, groups) % 7


def test_text_chunks_first_then_regular():
    assert CHUNKING.text_sizes(11) == [2, 4, 4, 1]
    assert CHUNKING.text_sizes(2) == [2]
    assert CHUNKING.text_sizes(6) == [2, 4]


def test_layout_of_a_reply():
    prompt, reply = [10, 11, 12], [20, 21, 22, 23, 24, 25, 26]
    seq = build_sequence(prompt, reply, _codes(12), CHUNKING, EOS, end_frames=2)
    kinds = [Kind(k).name for k in seq.kinds.tolist()]
    expected = (
        ["TEXT"] * 3  # prompt
        + ["TEXT"] * 2 + ["BOA"] + ["FRAME"] * 3 + ["EOA"]  # first chunk: N1=2, M1=3
        + ["TEXT"] * 4 + ["BOA"] + ["FRAME"] * 5 + ["EOA"]  # regular chunk
        + ["TEXT"] * 1 + ["BOA"] + ["FRAME"] * (12 - 8 + 2) + ["EOA"]  # last: rest of audio + 2 END
    )  # fmt: skip
    assert kinds == expected
    assert seq.reply_start == 3
    text_pos = [i for i, k in enumerate(kinds) if k == "TEXT"]
    assert seq.tokens[text_pos].tolist() == prompt + reply
    frames = seq.kinds == Kind.FRAME
    assert torch.equal(seq.codes[frames][:12], _codes(12))
    assert (seq.codes[frames][12:] == END).all()
    assert seq.span[frames].tolist() == [0] * 3 + [1] * 5 + [2] * 6
    assert (seq.span[~frames] == -1).all()
    # Each reply token is predicted by the position before it (prompt end, text or <eoa>).
    targets = {i: t for i, t in enumerate(seq.text_target.tolist()) if t != IGNORE}
    assert targets == {2: 20, 3: 21, 9: 22, 10: 23, 11: 24, 12: 25, 20: 26, 21: EOS}


def test_short_audio_and_truncated_last_span():
    seq = build_sequence([1], [5, 6, 7, 8, 9, 10], _codes(4), CHUNKING, EOS, end_frames=0)
    frames = seq.kinds == Kind.FRAME
    assert seq.span[frames].tolist() == [0, 0, 0, 1]
    assert not (seq.codes == END).any()


@pytest.mark.parametrize("bad", [dict(reply=[]), dict(codes=torch.zeros(4))])
def test_bad_input_raises(bad):
    args = dict(reply=[1, 2], codes=_codes(3)) | bad
    with pytest.raises(ValueError, match="reply has no text|frames, groups"):
        build_sequence([0], args["reply"], args["codes"], CHUNKING, EOS)


def _rule(kinds: list[int], span: list[int], i: int, j: int) -> bool:
    """The mask rule written out plainly: causal, plus both positions are frames of one span."""
    if j <= i:
        return True
    return kinds[i] == Kind.FRAME and kinds[j] == Kind.FRAME and span[i] == span[j]


def test_every_mask_entry_follows_the_rule():
    seq = build_sequence([1, 2, 3, 4], list(range(20, 31)), _codes(20), CHUNKING, EOS, end_frames=3)
    mask = attention_mask(seq.span)
    length = len(seq)
    assert mask.shape == (1, 1, length, length) and mask.dtype == torch.bool
    kinds, span = seq.kinds.tolist(), seq.span.tolist()
    for i in range(length):
        for j in range(length):
            assert bool(mask[0, 0, i, j]) == _rule(kinds, span, i, j), (i, j)
    # Sanity of the rule itself: some future entries are open (within spans), most are not.
    future_open = sum(bool(mask[0, 0, i, j]) for i in range(length) for j in range(i + 1, length))
    assert future_open == sum(n * (n - 1) // 2 for n in (3, 5, 5, 20 - 13 + 3))


def test_collate_pads_and_masks_padding_out():
    a = build_sequence([1, 2], [5, 6, 7], _codes(5), CHUNKING, EOS)
    b = build_sequence([1], [5], _codes(2), CHUNKING, EOS)
    batch = collate([a, b])
    length = len(a)
    assert batch["kinds"].shape == (2, length) and batch["codes"].shape == (2, length, 2)
    assert batch["valid"][1].sum() == len(b)
    mask = batch["mask"][1, 0]
    kinds, span = b.kinds.tolist(), b.span.tolist()
    for i in range(length):
        for j in range(length):
            if i < len(b) and j < len(b):
                want = _rule(kinds, span, i, j)
            else:
                want = i == j  # padding sees only itself, nobody sees padding
            assert bool(mask[i, j]) == want, (i, j)
    assert (batch["text_target"][1, len(b) :] == IGNORE).all()


def test_unmask_counts_cover_the_span():
    for length in (1, 3, 10, 64):
        for steps in (1, 2, 4, 8, 16):
            counts = unmask_counts(length, steps)
            assert sum(counts) == length and all(c >= 1 for c in counts) and len(counts) <= steps
    assert unmask_counts(0, 4) == []
    assert unmask_counts(10, 4)[0] < unmask_counts(10, 4)[-1]  # cosine: few first, more later
    with pytest.raises(ValueError):
        unmask_counts(5, 0)


def test_commit_takes_the_most_confident_masked_frames():
    frames = torch.full((4, 2), MASK)
    frames[1] = torch.tensor([3, 3])  # already decided: must stay
    guess = Guess(
        codes=torch.tensor([[0, 0], [1, 1], [2, 2], [5, 5]]),
        end=torch.zeros(4, dtype=torch.bool),
        confidence=torch.tensor([-3.0, 0.0, -1.0, -2.0]),
    )
    out = commit(frames, guess, 2)
    assert out.tolist() == [[-1, -1], [3, 3], [2, 2], [5, 5]]


def test_guess_frames_end_only_when_allowed():
    code_logits = torch.zeros(3, 2, 4)
    code_logits[:, :, 2] = 5.0
    end_logits = torch.tensor([-5.0, 5.0, 5.0])
    g = guess_frames(code_logits, end_logits, allow_end=True)
    assert g.end.tolist() == [False, True, True]
    assert g.codes[0].tolist() == [2, 2] and (g.codes[1:] == END).all()
    g = guess_frames(code_logits, end_logits, allow_end=False)
    assert not g.end.any() and (g.codes == 2).all()
    assert audio_length(torch.tensor([[1, 1], [END, END], [2, 2]])) == 1
    assert audio_length(torch.tensor([[1, 1]])) == 1
