"""The talker's training data: every corpus clip encoded by the codec and cut into word-aligned spans.

``ttt data align --data data/corpus --out data/aligned`` reads a :mod:`training.synth` corpus and
writes, per corpus shard::

    shard_00000.npz     codes [sum of frames, G] uint16 of the shard's clips, concatenated, offsets,
                        and phones [sum of frames] uint8: each frame's aligned phoneme (see below)
    shard_00000.jsonl   one line per clip: {"id", "text", "frames", "aligned_by", "chunks": [{"text",
                        "phonemes", "frames", "onset"}]} (chunk frames sum to the clip's frames)
    manifest.json       counts (``aligned_by``: clips per timing source), and the codec the codes came from

A clip is timed by one of two sources, recorded as its ``aligned_by``:

- ``"teacher"``: the durations Piper gave each of its symbols when it voiced the clip (the corpus
  line's ``timing``). A stress mark or word space joins the phoneme after it (its audio sounds like
  that phoneme); ``^``, ``$`` and punctuation, where Piper pauses, are silence. A frame's label is
  the symbol under its middle sample. The chunks' phonemes (the strings the talker sees,
  :mod:`model.chunks`, phonemized per chunk) are matched to Piper's (phonemized per sentence) by
  difflib over the whole clip, so a chunk's first phoneme finds its teacher phoneme even where
  espeak joined two words across a chunk boundary ("in the" as one word); a clip whose two
  phoneme sequences disagree too much, or disagree at a chunk's first phoneme, falls back to CTC.
- ``"ctc"``: CTC forced alignment on the codec's own phoneme head, the chunk phonemes against the
  head's 50 Hz log-probabilities, by Viterbi over the usual blank-interleaved CTC states. A frame's
  label is the last phoneme whose onset is at or before the frame's middle, or silence when the
  frame is :data:`SILENCE_DB` below the clip's loudest frame. Its onsets trail the teacher's (about
  22 ms, stressed vowels up to 86 ms) and half its frame labels differ from the teacher's
  (benchmarks/phone_alignment.md): it is the fallback for clips without usable teacher timing.

Either way a chunk's span starts at the frame boundary nearest to its first phoneme's onset, so
silence before a word stays with the span before it, and a chunk's ``onset`` is in CTC steps
(50 Hz). Labels are CTC classes (1 + index in the codec's phoneme symbols, 0 for silence): dense
targets for the talker's auxiliary phoneme head.
A shard is finished when its JSONL exists (written last), so a second run resumes.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.chunks import chunk_words, phonemizer, words_of
from training.synth import Timing

log = logging.getLogger(__name__)

SILENCE = 0  # a frame's phoneme label when it is silent (the CTC blank's index)
SILENCE_DB = 40.0  # a frame this far below the clip's loudest frame (RMS, dB) is silence
JOINS_NEXT = "ˈˌ "  # teacher symbols whose audio is the next phoneme's: stress marks and the word space
# teacher timing is used only when its phonemes and the chunks' agree this well (difflib ratio): a text
# against itself scored 0.885 at the lowest (2,200 corpus and held-out texts), against another 0.505
MATCH_RATIO = 0.8


def ctc_forced_align(log_probs: np.ndarray, targets: list[int], blank: int = 0) -> np.ndarray | None:
    """First time step of each target in the best CTC path; ``None`` if no path fits.

    ``log_probs`` [T, C] (log-softmax over C classes, ``blank`` among them), ``targets`` [N] class ids.
    States are ``blank t1 blank t2 ... tN blank``; a path may skip a blank between two different
    targets, as CTC allows.
    """
    steps, n = log_probs.shape[0], len(targets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    states = np.full(2 * n + 1, blank, dtype=np.int64)
    states[1::2] = targets
    s = len(states)
    can_skip = np.zeros(s, dtype=bool)
    can_skip[3::2] = states[3::2] != states[1:-2:2]  # target i may follow target i-1 directly
    neg = -np.inf
    score = np.full(s, neg)
    score[0], score[1] = log_probs[0, states[0]], log_probs[0, states[1]]
    back = np.zeros((steps, s), dtype=np.int8)  # 0: stayed, 1: from s-1, 2: from s-2
    for t in range(1, steps):
        stay = score
        step = np.concatenate([[neg], score[:-1]])
        skip = np.where(can_skip, np.concatenate([[neg, neg], score[:-2]]), neg)
        choice = np.stack([stay, step, skip])
        best = choice.argmax(0)
        score = choice[best, np.arange(s)] + log_probs[t, states]
        back[t] = best
    end = s - 1 if score[s - 1] >= score[s - 2] else s - 2
    if not np.isfinite(score[end]):
        return None
    onset = np.full(n, -1, dtype=np.int64)
    state = end
    for t in range(steps - 1, -1, -1):
        if state % 2 == 1:
            onset[state // 2] = t  # overwritten until the earliest step of this target remains
        state -= int(back[t, state]) if t > 0 else 0
    if (onset < 0).any():
        return None
    return onset


@dataclass
class AlignedChunk:
    """One span of a clip: the words it voices and its length."""

    text: str  # the chunk's words, as written
    phonemes: str  # their espeak phonemes (see model.chunks)
    frames: int  # frames of audio the span takes
    onset: int  # CTC step (50 Hz) of its first phoneme


@dataclass
class ClipAlignment:
    """A clip cut into spans, and the phoneme each of its frames voices."""

    chunks: list[AlignedChunk]  # the spans, in order; their frames sum to the clip's
    phones: np.ndarray  # [frames] uint8: CTC class of each frame's phoneme, SILENCE where it is quiet
    aligned_by: str  # where the timing came from: "teacher" (Piper's durations) or "ctc" (the codec's head)


def chunk_targets(text: str, index: dict[str, int]) -> tuple[list[str], list[str], list[list[int]]] | None:
    """``text``'s chunks, their phoneme strings and their CTC targets (the phonemes in ``index``).

    ``None`` when a chunk has no target (punctuation only): nothing the head can hear, no onset.
    """
    chunks = [" ".join(c) for c in chunk_words(words_of(text))]
    strings = [phonemizer().symbols(chunk) for chunk in chunks]
    targets = [[index[c] for c in symbols if c in index] for symbols in strings]
    if not all(targets):
        return None
    return chunks, strings, targets


def cut_spans(
    chunks: list[str], strings: list[str], begins: list[float], onsets: list[int], frames: int
) -> list[AlignedChunk] | None:
    """Spans of ``frames`` frames, chunk j from the frame boundary nearest ``begins[j]`` (in frames) on.

    The first span starts at frame 0 and every span has a frame at least; ``None`` when the last
    one would start at or after the clip's end. ``onsets`` (CTC steps) are stored with the spans.
    """
    starts = [0]
    for begin in begins[1:]:
        starts.append(max(int(round(begin)), starts[-1] + 1))
    if starts[-1] >= frames:
        return None
    ends = starts[1:] + [frames]
    return [AlignedChunk(c, strings[j], ends[j] - starts[j], int(onsets[j])) for j, c in enumerate(chunks)]


def chunk_firsts(targets: list[list[int]]) -> list[int]:
    """Index of each chunk's first target in the chunks' targets laid end to end."""
    return np.cumsum([0] + [len(t) for t in targets[:-1]]).tolist()


def phoneme_index(phoneme_symbols: str) -> dict[str, int]:
    """Symbol -> CTC class id (1 + its index; 0 is the blank, SILENCE)."""
    return {p: i + 1 for i, p in enumerate(phoneme_symbols)}


def align_clip(
    text: str,
    ctc_log_probs: np.ndarray,
    frames: int,
    phoneme_symbols: str,
    per_frame: int,
    silent: np.ndarray | None = None,
) -> ClipAlignment | None:
    """Cut a clip of ``frames`` frames into the spans of ``text``'s chunks by CTC; ``None`` if it cannot be aligned.

    ``silent`` [frames] bool marks quiet frames (labelled SILENCE); without it no frame is.
    """
    parts = chunk_targets(text, phoneme_index(phoneme_symbols))
    if parts is None:
        return None
    chunks, strings, targets = parts
    flat = [t for chunk in targets for t in chunk]
    onsets = ctc_forced_align(ctc_log_probs, flat)
    if onsets is None:
        return None
    first = onsets[chunk_firsts(targets)].tolist()
    spans = cut_spans(chunks, strings, [onset / per_frame for onset in first], first, frames)
    if spans is None:
        return None
    return ClipAlignment(spans, frame_phonemes(onsets, flat, frames, per_frame, silent), "ctc")


def frame_phonemes(
    onsets: np.ndarray, targets: list[int], frames: int, per_frame: int, silent: np.ndarray | None = None
) -> np.ndarray:
    """Each frame's phoneme: the last target with its onset at or before the frame's middle CTC step.

    Frames before the first onset take the first target (CTC fires late in a phoneme, not early);
    ``silent`` frames are SILENCE.
    """
    middles = np.arange(frames) * per_frame + per_frame // 2
    which = np.searchsorted(onsets, middles, side="right") - 1
    phones = np.asarray(targets, dtype=np.uint8)[which.clip(0)]
    if silent is not None:
        phones[np.asarray(silent, dtype=bool)] = SILENCE
    return phones


@dataclass(frozen=True)
class Segment:
    """A stretch of a clip that voices one teacher symbol, the stress marks and space before it included."""

    symbol: str  # a phoneme, or a symbol voiced as silence (^ $ punctuation)
    start: int  # first 16 kHz sample
    end: int  # one past the last


def teacher_segments(timing: Timing) -> list[Segment]:
    """The teacher's symbols, each stress mark and word space joined to the symbol after it.

    Joined, the segments tile the clip: each starts where the one before ends.
    """
    segments, start = [], 0
    for symbol, end in zip(timing.symbols, timing.ends, strict=True):
        if symbol not in JOINS_NEXT:
            segments.append(Segment(symbol, start, end))
            start = end
    if segments and segments[-1].end < timing.ends[-1]:  # marks with nothing after them: the last one's
        segments[-1] = Segment(segments[-1].symbol, segments[-1].start, timing.ends[-1])
    return segments


def segment_labels(segments: list[Segment], index: dict[str, int]) -> list[int]:
    """Each segment's CTC class, SILENCE for a symbol the head has no class for (^ $ punctuation)."""
    return [index.get(s.symbol, SILENCE) for s in segments]


def match_chunks(targets: list[list[int]], spoken: list[int]) -> list[int] | None:
    """Position in ``spoken`` (the teacher's phonemes) of each chunk's first target; ``None`` if unsure.

    Unsure: the two sequences agree less than :data:`MATCH_RATIO`, or a chunk's first phoneme is
    one the teacher did not say, or sits inside a run the teacher said with a different number of
    phonemes (a chunk starting a run, "a" as eɪ against the teacher's ɐ, takes the run's start).
    """
    flat = [t for chunk in targets for t in chunk]
    matcher = difflib.SequenceMatcher(a=flat, b=spoken, autojunk=False)
    if matcher.ratio() < MATCH_RATIO:
        return None
    opcodes = matcher.get_opcodes()
    found = []
    for first in chunk_firsts(targets):
        tag, a1, a2, b1, b2 = next(op for op in opcodes if op[1] <= first < op[2])
        if not (tag == "equal" or (tag == "replace" and (first == a1 or a2 - a1 == b2 - b1))):
            return None
        found.append(b1 + first - a1)
    return found


def teacher_phonemes(segments: list[Segment], frames: int, frame_samples: int, index: dict[str, int]) -> np.ndarray:
    """[frames] uint8: the class of the segment under each frame's middle sample (SILENCE past the audio)."""
    middles = np.arange(frames) * frame_samples + frame_samples // 2
    under = np.searchsorted([s.end for s in segments], middles, side="right")  # the first ending after it
    return np.asarray(segment_labels(segments, index) + [SILENCE], dtype=np.uint8)[under]


def teacher_align(
    text: str, timing: Timing, frames: int, phoneme_symbols: str, frame_samples: int, per_frame: int
) -> ClipAlignment | None:
    """Cut a clip of ``frames`` frames into ``text``'s chunks by the teacher's own ``timing``.

    ``None`` when the teacher's phonemes cannot be matched to the chunks' (see :func:`match_chunks`)
    or the spans do not fit: the caller aligns by CTC instead.
    """
    index = phoneme_index(phoneme_symbols)
    parts = chunk_targets(text, index)
    if parts is None:
        return None
    chunks, strings, targets = parts
    segments = teacher_segments(timing)
    labels = segment_labels(segments, index)
    spoken = [k for k, label in enumerate(labels) if label != SILENCE]
    firsts = match_chunks(targets, [labels[k] for k in spoken])
    if firsts is None:
        return None
    starts = [segments[spoken[j]].start for j in firsts]
    onsets = [int(round(start * per_frame / frame_samples)) for start in starts]
    spans = cut_spans(chunks, strings, [start / frame_samples for start in starts], onsets, frames)
    if spans is None:
        return None
    return ClipAlignment(spans, teacher_phonemes(segments, frames, frame_samples, index), "teacher")


def silent_frames(audio: np.ndarray, frame_samples: int, frames: int) -> np.ndarray:
    """[frames] bool: frames whose RMS is SILENCE_DB or more below the clip's loudest frame."""
    padded = np.zeros(frames * frame_samples, dtype=np.float64)
    padded[: min(len(audio), len(padded))] = audio[: len(padded)]
    rms = np.sqrt((padded.reshape(frames, frame_samples) ** 2).mean(1))
    db = 20 * np.log10(rms + 1e-9)
    return db < db.max() - SILENCE_DB


def align_encoded(
    text: str, audio: np.ndarray, ctc_log_probs: np.ndarray, frames: int, phoneme_symbols: str, timing: Timing | None
) -> ClipAlignment | None:
    """Align an encoded clip by the teacher's ``timing`` when it matches ``text``'s chunks, else by CTC."""
    from model.codec.codec import CTC_PER_FRAME, FRAME_SAMPLES

    if timing is not None:
        timed = teacher_align(text, timing, frames, phoneme_symbols, FRAME_SAMPLES, CTC_PER_FRAME)
        if timed is not None:
            return timed
    silent = silent_frames(np.asarray(audio, dtype=np.float32), FRAME_SAMPLES, frames)
    return align_clip(text, ctc_log_probs, frames, phoneme_symbols, CTC_PER_FRAME, silent)


@torch.inference_mode()
def encode_and_align(
    codec, audio: np.ndarray, text: str, timing: Timing | None = None
) -> tuple[np.ndarray, ClipAlignment | None]:
    """Codes [F, G] of one 16 kHz clip and its alignment (``None`` when alignment fails).

    ``timing``: the teacher's durations of the clip's symbols (the corpus line's), when it has them.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)[None].to(codec.device)
    q = codec.quantized(codec.pad(x))
    codes = codec.fsq.to_codes(q)[0].cpu().numpy()
    log_probs = codec.ctc_logits(q)[0].float().cpu().numpy()
    return codes, align_encoded(text, audio, log_probs, codes.shape[0], codec.config.phonemes, timing)


def align_corpus(corpus: str | os.PathLike, out: str | os.PathLike, codec_path: str | None = None) -> dict:
    """Encode and align every finished shard of ``corpus`` into ``out``; returns the manifest."""
    from tqdm import tqdm

    from model.codec import load_codec

    corpus, out = Path(corpus), Path(out)
    jsonls = sorted(corpus.glob("shard_*.jsonl"))
    if not jsonls:
        raise FileNotFoundError(f"no corpus shards in {corpus}: build them with `ttt data synth --out {corpus}`")
    out.mkdir(parents=True, exist_ok=True)
    codec = load_codec(codec_path)
    todo = [j for j in jsonls if not (out / j.name).is_file()]
    for jsonl in tqdm(todo, desc="aligning shards", unit="shard"):
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        with np.load(jsonl.with_suffix(".npz")) as data:
            audio, offsets = data["audio"], data["offsets"]
        rows, codes_out, phones_out, dropped = [], [], [], 0
        for i, line in enumerate(lines):
            samples = audio[offsets[i] : offsets[i + 1]].astype(np.float32) / 32767
            codes, alignment = encode_and_align(codec, samples, line["text"], Timing.from_json(line.get("timing")))
            if alignment is None:
                dropped += 1
                continue
            codes_out.append(codes.astype(np.uint16))
            phones_out.append(alignment.phones)
            rows.append(
                {
                    "id": line["id"],
                    "text": line["text"],
                    "frames": int(codes.shape[0]),
                    "aligned_by": alignment.aligned_by,
                    "chunks": [c.__dict__ for c in alignment.chunks],
                }
            )
        if dropped:
            log.info("%s: %d of %d clips could not be aligned", jsonl.name, dropped, len(lines))
        by_ctc = sum(row["aligned_by"] == "ctc" for row in rows)
        if by_ctc:
            log.info("%s: %d of %d clips aligned by CTC (no usable teacher timing)", jsonl.name, by_ctc, len(rows))
        base = out / jsonl.stem
        cat = np.concatenate(codes_out) if codes_out else np.zeros((0, codec.groups), np.uint16)
        offs = np.cumsum([0] + [len(c) for c in codes_out]).astype(np.int64)
        phones = np.concatenate(phones_out) if phones_out else np.zeros(0, np.uint8)
        tmp = base.with_suffix(".tmp.npz")
        np.savez(tmp, codes=cat, offsets=offs, phones=phones)
        tmp.replace(base.with_suffix(".npz"))
        tmp_jsonl = base.with_suffix(".jsonl.tmp")
        tmp_jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        tmp_jsonl.replace(base.with_suffix(".jsonl"))
    return write_manifest(out, corpus, codec)


def write_manifest(out: Path, corpus: Path, codec) -> dict:
    """Counts over the finished aligned shards, and where they came from."""
    items = frames = chunks = 0
    aligned_by: Counter[str] = Counter({"teacher": 0, "ctc": 0})
    for jsonl in sorted(out.glob("shard_*.jsonl")):
        for line in jsonl.read_text().splitlines():
            row = json.loads(line)
            items += 1
            frames += row["frames"]
            chunks += len(row["chunks"])
            aligned_by[row.get("aligned_by", "ctc")] += 1  # shards aligned before teacher timing: all CTC
    manifest = {
        "corpus": str(corpus),
        "items": items,
        "chunks": chunks,
        "aligned_by": dict(aligned_by),
        "hours": round(frames * codec.frame_samples / codec.sample_rate / 3600, 4),
        "groups": int(codec.groups),
        "codebook_size": int(codec.codebook_size),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


@dataclass(frozen=True)
class AlignedItem:
    """One clip of the aligned corpus, ready for the talker's layout."""

    id: int  # corpus id
    text: str  # the text voiced
    chunks: list[dict]  # {"text", "phonemes", "frames", "onset"} per span
    codes: np.ndarray  # [F, G] uint16
    phones: np.ndarray | None = None  # [F] uint8 frame phoneme labels (None: aligned before they existed)


def read_aligned(folder: str | os.PathLike) -> list[AlignedItem]:
    """Every clip of an aligned corpus (codes in memory: about 0.7 MB per hour)."""
    folder = Path(folder)
    jsonls = sorted(folder.glob("shard_*.jsonl"))
    if not jsonls:
        raise FileNotFoundError(f"no aligned shards in {folder}: make them with `ttt data align --out {folder}`")
    items = []
    for jsonl in jsonls:
        rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        with np.load(jsonl.with_suffix(".npz")) as data:
            codes, offsets = data["codes"], data["offsets"]
            phones = data["phones"] if "phones" in data else None
        for i, row in enumerate(rows):
            cut = slice(offsets[i], offsets[i + 1])
            items.append(
                AlignedItem(row["id"], row["text"], row["chunks"], codes[cut], None if phones is None else phones[cut])
            )
    return items
