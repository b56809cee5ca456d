"""The talker's layout: word chunks, positions, packing, the attention rule, unmasking, alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.chunks import chunk_tokens, chunk_words, closes_chunk, phoneme_ids, phonemizer, starts_word
from model.sampler import commit, guess_codes, unmask_counts
from model.sequence import IGNORE, MASK, Chunk, Kind, Positions, allowed, build_reply, pack
from training.align import (
    SILENCE,
    align_clip,
    align_encoded,
    ctc_forced_align,
    frame_phonemes,
    match_chunks,
    silent_frames,
    teacher_align,
)
from training.synth import Timing

END = 99  # stands for <|im_end|>


def test_chunks_are_one_word_first_then_two_closed_by_punctuation():
    words = "Well, I think the cat sat. Then it left".split()
    assert chunk_words(words) == [["Well,"], ["I", "think"], ["the", "cat"], ["sat."], ["Then", "it"], ["left"]]
    assert closes_chunk("Hi", 1, first=True) and not closes_chunk("big", 1, first=False)
    assert closes_chunk('end."', 1, first=False) and closes_chunk("a", 2, first=False)


def test_chunk_tokens_follow_the_words(tokenizer):
    text = "A mature oak can host 2,000 species, lichens and fungi."
    pieces = chunk_tokens(tokenizer, text)
    assert [p[0] for p in pieces] == [" ".join(c) for c in chunk_words(text.split())]
    assert [t for _, ids in pieces for t in ids] == tokenizer(text, add_special_tokens=False)["input_ids"]
    for chunk, ids in pieces:
        assert tokenizer.decode(ids).strip() == chunk
    assert chunk_tokens(tokenizer, "   ") == []
    assert starts_word(" cat") and not starts_word("cat") and not starts_word(" ")


def test_phonemes_of_a_chunk():
    symbols = phonemizer().symbols("the cat")
    assert symbols.count(" ") == 1 and "k" in symbols
    ids = phonemizer().ids("the cat")
    assert ids == phoneme_ids(symbols) and 0 in ids and min(ids) >= 0


def _reply(groups: int = 2) -> tuple[list[Chunk], torch.Tensor]:
    chunks = [Chunk([10], [1, 2], 2), Chunk([11, 12], [3], 3), Chunk([13], [4, 5], 1)]
    codes = torch.arange(6 * groups).reshape(6, groups) % 7
    return chunks, codes


def test_layout_of_a_reply():
    chunks, codes = _reply()
    pos, start = build_reply([1, 2], chunks, codes, END)
    t = pos.tensors()
    kinds = [Kind(k).name[0] for k in t["kinds"].tolist()]
    # prompt | T1 P1 | T2 P2 D1 A1 | T3 P3 D2 A2 | <end> D3 A3
    assert "".join(kinds) == "TT" + "TPP" + "TTPDFF" + "TPPDFFF" + "TDF"
    assert start == 2
    text = [i for i, k in enumerate(kinds) if k == "T"]
    assert [t["tokens"][i].item() for i in text] == [1, 2, 10, 11, 12, 13, END]
    # every reply text position (and the prompt's last) predicts the next text token; nothing after <end>
    assert [t["text_target"][i].item() for i in text] == [IGNORE, 10, 11, 12, 13, END, IGNORE]
    durs = [i for i, k in enumerate(kinds) if k == "D"]
    assert [t["tokens"][i].item() for i in durs] == [2, 3, 1]
    # a span's length is predicted at the last text position before its D
    predicting = [i for i in range(len(kinds)) if t["dur_target"][i] != IGNORE]
    assert [t["dur_target"][i].item() for i in predicting] == [2, 3, 1]
    assert all(max(j for j in text if j < d) == p for d, p in zip(durs, predicting, strict=True))
    frames = t["kinds"] == int(Kind.FRAME)
    assert torch.equal(t["codes"][frames], codes)
    assert t["slot"][frames].tolist() == [0, 1, 0, 1, 2, 0] and t["span"][frames].tolist() == [0, 0, 1, 1, 1, 2]
    assert t["tokens"][frames].tolist() == [2, 2, 3, 3, 3, 1]  # a frame knows its span's length
    assert (t["phone_target"] == IGNORE).all()  # no phoneme labels given: no auxiliary targets


def test_frames_carry_their_phoneme_labels_and_nothing_else_does():
    chunks, codes = _reply()
    phones = torch.tensor([5, 5, 0, 7, 7, 9])
    pos, _ = build_reply([1, 2], chunks, codes, END, phones)
    t = pos.tensors()
    frames = t["kinds"] == int(Kind.FRAME)
    assert t["phone_target"][frames].tolist() == phones.tolist()
    assert (t["phone_target"][~frames] == IGNORE).all()
    packed = pack([pos, build_reply([1], chunks, codes, END)[0]], 64)
    assert sorted(packed.tensors["phone_target"][packed.tensors["phone_target"] != IGNORE].tolist()) == sorted(
        phones.tolist()
    )
    with pytest.raises(ValueError, match="one label per frame"):
        build_reply([1, 2], chunks, codes, END, phones[:5])


def test_hidden_text_keeps_the_prompt_audio_durations_and_end():
    chunks, codes = _reply()
    phones = torch.tensor([5, 5, 0, 7, 7, 9])
    pos, start = build_reply([1, 2], chunks, codes, END, phones)
    hidden = pos.hide_text(start, END).tensors()
    t = pos.tensors()
    kinds = "".join(Kind(k).name[0] for k in hidden["kinds"].tolist())
    # prompt | T1 P1 | T2 P2 D1 A1 | T3 P3 D2 A2 | <end> D3 A3, its words and phonemes hidden
    assert kinds == "TT" + "NNN" + "NNNDFF" + "NNNDFFF" + "TDF"
    kept = hidden["kinds"] != int(Kind.NULL)
    for name in ("tokens", "codes", "span", "slot", "phone_target"):
        assert torch.equal(hidden[name][kept], t[name][kept]), name
    assert (hidden["tokens"][~kept] == 0).all()
    # only audio is predicted when the text is not heard
    assert (hidden["text_target"] == IGNORE).all() and (hidden["dur_target"] == IGNORE).all()
    assert pos.tensors()["kinds"].tolist() == t["kinds"].tolist()  # the original is untouched
    assert pos.tail(start).kinds == pos.kinds[start:] and len(pos.head(start)) + len(pos.tail(start)) == len(pos)


@pytest.mark.parametrize(
    "chunks,codes,match",
    [
        ([Chunk([1], [], 2)], torch.zeros(3, 2), "sum"),
        ([Chunk([1], [], 0), Chunk([2], [], 3)], torch.zeros(3, 2), ">= 1"),
        ([Chunk([], [], 3)], torch.zeros(3, 2), "no text"),
        ([Chunk([1], [], 3)], torch.zeros(3), "frames, groups"),
    ],
)
def test_bad_replies_raise(chunks, codes, match):
    with pytest.raises(ValueError, match=match):
        build_reply([1], chunks, codes.long(), END)


def test_every_mask_entry_follows_the_rule():
    chunks, codes = _reply()
    pos, _ = build_reply([1], chunks, codes, END)
    span = torch.tensor(pos.span)
    n = len(pos)
    mask = allowed(torch.arange(n), torch.arange(n), span, span)
    for q in range(n):
        for k in range(n):
            both = span[q] >= 0 and span[q] == span[k]
            assert bool(mask[q, k]) == (k <= q or bool(both))


def test_pack_keeps_sequences_apart_and_wastes_nothing():
    chunks, codes = _reply()
    a, _ = build_reply([1, 2], chunks, codes, END)
    b, _ = build_reply([3], chunks[:2], codes[:5], END)
    c, _ = build_reply([4, 5, 6], chunks[1:], codes[2:], END)
    packed = pack([a, b, c], row_length=len(a) + len(b))
    t = packed.tensors
    assert t["kinds"].shape[0] == 2 and packed.real == len(a) + len(b) + len(c)
    row = t["kinds"][0]
    assert (row != int(Kind.PAD)).sum() == len(a) + len(b)  # first fit: the two longest share a row
    mask = packed.mask[0, 0]
    first, second = slice(0, len(a)), slice(len(a), len(a) + len(b))
    assert not mask[second, first].any() and not mask[first, second].any()
    assert packed.positions[0, len(a)] == 0  # RoPE positions restart per sequence
    spans = t["span"][0][t["span"][0] >= 0]
    assert len(set(spans.tolist())) == 5  # span ids made unique within the row (3 of a, 2 of b)
    pads = t["kinds"][1] == int(Kind.PAD)
    if pads.any():  # padding attends to itself only, and nothing attends to it
        i = int(pads.nonzero()[0])
        assert packed.mask[1, 0, i].sum() == 1 and packed.mask[1, 0, :, i].sum() == 1


def test_positions_concat_and_last_text():
    p = Positions(2)
    p.add_text([5, 6])
    p.add_phonemes([1])
    p.add_span(torch.full((2, 2), MASK), span=0)
    assert p.last_text_index() == 1 and len(p.concat(p)) == 2 * len(p)
    with pytest.raises(ValueError, match="no text"):
        Positions(2).last_text_index()


def test_unmask_counts_cover_the_span():
    for total in (0, 1, 5, 16, 80):
        for steps in (1, 2, 4, 8):
            counts = unmask_counts(total, steps)
            assert sum(counts) == total and len(counts) <= steps and all(c >= 1 for c in counts)
    assert unmask_counts(16, 4)[0] < unmask_counts(16, 4)[-1]  # few codes first
    with pytest.raises(ValueError):
        unmask_counts(3, 0)


def test_commit_takes_the_most_confident_masked_codes():
    frames = torch.tensor([[MASK, 3], [MASK, MASK]])
    logits = torch.full((2, 2, 4), -5.0)
    logits[0, 0, 1] = 5.0  # very sure
    logits[1, 0, 2] = 1.0
    logits[1, 1, 0] = 0.5
    logits[0, 1, 2] = 9.0  # already decided: must stay 3
    codes, confidence = guess_codes(logits)
    out = commit(frames, codes, confidence, 2)
    assert out.tolist() == [[1, 3], [2, MASK]]
    assert commit(out, codes, confidence, 5).tolist() == [[1, 3], [2, 0]]


def test_ctc_forced_alignment_finds_the_path():
    path = [0, 1, 1, 0, 2, 0, 2, 2, 3, 3, 0, 0]
    lp = np.full((len(path), 5), -10.0)
    lp[np.arange(len(path)), path] = 0.0
    assert ctc_forced_align(lp, [1, 2, 2, 3]).tolist() == [1, 4, 6, 8]
    assert ctc_forced_align(lp[:3], [1, 2, 2, 3]) is None  # too short for four targets and a blank
    assert ctc_forced_align(lp, []).tolist() == []


def _ctc_clip() -> tuple[str, np.ndarray, str]:
    """A text, CTC log-probs that voice it, and the phoneme symbols they index."""
    text = "Hello big world."  # chunks: "Hello" | "big world."
    symbols = "".join(sorted(set(phonemizer().symbols(text).replace(" ", ""))))
    index = {p: i + 1 for i, p in enumerate(symbols)}
    targets = [index[c] for c in phonemizer().symbols("Hello").replace(" ", "")]
    second = [index[c] for c in phonemizer().symbols("big world.").replace(" ", "")]
    # 4 CTC steps per frame: "Hello" from step 2, then silence, "big world." from step 20 (frame 5)
    steps = 4 * 12
    lp = np.full((steps, len(symbols) + 1), -20.0)
    lp[:, 0] = 0.0
    for i, c in enumerate(targets):
        lp[2 + i, :] = -20.0
        lp[2 + i, c] = 0.0
    for i, c in enumerate(second):
        lp[20 + i, :] = -20.0
        lp[20 + i, c] = 0.0
    return text, lp, symbols


def test_align_clip_cuts_spans_at_chunk_onsets():
    text, lp, symbols = _ctc_clip()
    index = {p: i + 1 for i, p in enumerate(symbols)}
    targets = [index[c] for c in phonemizer().symbols("Hello").replace(" ", "")]
    second = [index[c] for c in phonemizer().symbols("big world.").replace(" ", "")]
    spans = align_clip(text, lp, 12, symbols, 4)
    assert spans.aligned_by == "ctc"
    assert [s.text for s in spans.chunks] == ["Hello", "big world."]
    assert [s.frames for s in spans.chunks] == [5, 7] and spans.chunks[1].onset == 20
    assert align_clip("...", lp, 12, symbols, 4) is None  # nothing to hear in punctuation
    # phoneme labels: "Hello"'s phonemes from frame 0 (its first onset, step 2, is before frame 0's
    # middle), the last one held through the silence unless it is marked silent, then "big world."
    phones = spans.phones
    assert len(phones) == 12 and phones[0] == targets[0]
    assert phones[4] == targets[-1] and phones[5] == second[2]  # frame 5's middle: step 22
    silent = np.zeros(12, dtype=bool)
    silent[3:5] = True
    quiet = align_clip(text, lp, 12, symbols, 4, silent).phones
    assert quiet[3:5].tolist() == [SILENCE, SILENCE] and quiet[5:].tolist() == phones[5:].tolist()


# "Hello big world." as Piper times it, in CTC steps of 320 samples (4 to a 1280-sample frame)
HELLO_TIMED = [
    ("^", 3), ("h", 2), ("ə", 1), ("l", 3), ("ˈ", 2), ("o", 2), ("ʊ", 2),  # "Hello": steps 3-15
    (" ", 4), ("b", 2), ("ˈ", 1), ("ɪ", 2), ("ɡ", 2),  # the space before "big" starts at step 15
    (" ", 1), ("w", 2), ("ˈ", 1), ("ɜ", 3), ("ː", 2), ("l", 2), ("d", 2), (".", 4), ("$", 3),  # 46 steps
]  # fmt: skip


def _timing(steps: list[tuple[str, int]]) -> Timing:
    return Timing([s for s, _ in steps], (np.cumsum([n for _, n in steps]) * 320).tolist())


def test_teacher_timing_gives_spans_onsets_and_labels():
    from model.codec.codec import PHONEMES

    assert phonemizer().symbols("Hello") == "həlˈoʊ" and phonemizer().symbols("big world.") == "bˈɪɡ wˈɜːld"
    aligned = teacher_align("Hello big world.", _timing(HELLO_TIMED), 12, PHONEMES, 1280, 4)
    assert aligned.aligned_by == "teacher"
    # "big world." starts with the space before it (step 15 = frame 3.75, so at frame 4), not at its
    # /b/ (step 19); "Hello" starts after the leading "^", at step 3
    assert [(c.text, c.frames, c.onset) for c in aligned.chunks] == [("Hello", 4, 3), ("big world.", 8, 15)]
    # frame f's middle is step 4f + 2: in "^", /l/, the stress mark before /o/ (so /o/), /ʊ/, the space
    # before /b/ (so /b/), /ɪ/, the space before /w/, /ɜ/, /ː/, /d/, the full stop; the last frame's
    # middle is past the audio
    cls = {p: i + 1 for i, p in enumerate(PHONEMES)}
    expected = [SILENCE] + [cls[p] for p in "loʊbɪwɜːd"] + [SILENCE, SILENCE]
    assert aligned.phones.tolist() == expected


def test_teacher_timing_that_does_not_match_falls_back_to_ctc():
    from model.codec.codec import PHONEMES

    other = [
        ("^", 3),
        ("ɡ", 4),
        ("ˈ", 2),
        ("ʊ", 4),
        ("d", 4),
        (" ", 2),
        ("n", 4),
        ("ˈ", 2),
        ("a", 2),
        ("ɪ", 2),
        ("t", 4),
    ]
    other += [(".", 4), ("$", 3)]  # "Good night."
    assert teacher_align("Hello big world.", _timing(other), 12, PHONEMES, 1280, 4) is None
    assert teacher_align("Hello big world.", _timing(HELLO_TIMED), 3, PHONEMES, 1280, 4) is None  # spans don't fit
    # align_encoded: the teacher when it matches, else CTC (here on log-probs that put "big world." at frame 5)
    text, lp, symbols = _ctc_clip()
    audio = np.zeros(12 * 1280, dtype=np.float32)
    ctc = align_encoded(text, audio, lp, 12, symbols, _timing(other))
    assert ctc.aligned_by == "ctc" and [c.frames for c in ctc.chunks] == [5, 7]
    assert align_encoded(text, audio, lp, 12, symbols, None).aligned_by == "ctc"
    timed = align_encoded(text, audio, lp, 12, symbols, _timing(HELLO_TIMED))
    assert timed.aligned_by == "teacher" and [c.frames for c in timed.chunks] == [4, 8]


def test_chunks_find_their_teacher_phonemes():
    chunks = [list(range(1, 9)), list(range(9, 17))]  # the second chunk's first phoneme is 9, at position 8
    said = list(range(1, 17))
    assert match_chunks(chunks, said) == [0, 8]
    assert match_chunks(chunks, [30] + said) == [1, 9]  # the teacher said one more before
    assert match_chunks(chunks, said[:8] + [30] + said[9:]) == [0, 8]  # the first phoneme said otherwise
    assert match_chunks(chunks, said[:7] + [30, 31] + said[9:]) == [0, 8]  # inside a run said as long
    assert match_chunks(chunks, said[:8] + said[9:]) is None  # its first phoneme unsaid
    assert match_chunks(chunks, said[:7] + [30, 31] + said[10:]) is None  # inside a run said shorter
    assert match_chunks(chunks, list(range(40, 56))) is None  # another text


def test_frame_phonemes_follow_the_onsets():
    # onsets at CTC steps 0, 5 and 13; frame middles at steps 2, 6, 10, 14, 18
    assert frame_phonemes(np.array([0, 5, 13]), [3, 4, 8], 5, 4).tolist() == [3, 4, 4, 8, 8]
    assert frame_phonemes(np.array([9]), [6], 3, 4).tolist() == [6, 6, 6]  # before the first onset: the first
    quiet = np.array([False, False, True])
    assert frame_phonemes(np.array([0, 5]), [3, 4], 3, 4, quiet).tolist() == [3, 4, SILENCE]


def test_silent_frames_are_far_below_the_loudest():
    frame = 1280
    audio = np.concatenate([np.full(frame, 0.5), np.full(frame, 0.5 * 10 ** (-30 / 20)), np.zeros(frame // 2)])
    assert silent_frames(audio.astype(np.float32), frame, 3).tolist() == [False, False, True]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from model.assets import llm_source

    return AutoTokenizer.from_pretrained(llm_source())
