"""The talker's training data: every corpus clip encoded by the codec and cut into word-aligned spans.

``ttt data align --data data/corpus --out data/aligned`` reads a :mod:`training.synth` corpus and
writes, per corpus shard::

    shard_00000.npz     codes [sum of frames, G] uint16 of the shard's clips, concatenated, offsets,
                        and phones [sum of frames] uint8: each frame's aligned phoneme (see below)
    shard_00000.jsonl   one line per clip: {"id", "text", "frames", "chunks": [{"text", "phonemes",
                        "frames", "onset"}]} (chunk frames sum to the clip's frames)
    manifest.json       counts, and the codec the codes came from

Alignment is CTC forced alignment on the codec's own phoneme head: the chunk phonemes (the same
strings the talker sees, :mod:`model.chunks`) against the head's 50 Hz log-probabilities, by
Viterbi over the usual blank-interleaved CTC states. A chunk's span starts at the frame boundary
nearest to its first phoneme's onset; silence before a word stays with the span before it.
A frame's phoneme label is the CTC class (1 + index in the codec's phoneme symbols) of the last
phoneme whose onset is at or before the frame's middle, or 0 (silence) when the frame is
:data:`SILENCE_DB` below the clip's loudest frame: dense targets for the talker's auxiliary
phoneme head.
A shard is finished when its JSONL exists (written last), so a second run resumes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.chunks import chunk_words, phonemizer, words_of

log = logging.getLogger(__name__)

SILENCE = 0  # a frame's phoneme label when it is silent (the CTC blank's index)
SILENCE_DB = 40.0  # a frame this far below the clip's loudest frame (RMS, dB) is silence


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


def align_clip(
    text: str,
    ctc_log_probs: np.ndarray,
    frames: int,
    phoneme_symbols: str,
    per_frame: int,
    silent: np.ndarray | None = None,
) -> ClipAlignment | None:
    """Cut a clip of ``frames`` frames into the spans of ``text``'s chunks; ``None`` if it cannot be aligned.

    ``silent`` [frames] bool marks quiet frames (labelled SILENCE); without it no frame is.
    """
    index = {p: i + 1 for i, p in enumerate(phoneme_symbols)}
    chunks = [" ".join(c) for c in chunk_words(words_of(text))]
    targets, first_of_chunk, strings = [], [], []
    for chunk in chunks:
        symbols = phonemizer().symbols(chunk)
        ids = [index[c] for c in symbols if c in index]
        if not ids:
            return None  # nothing the head can hear (punctuation only): no onset to find
        first_of_chunk.append(len(targets))
        targets += ids
        strings.append(symbols)
    onsets = ctc_forced_align(ctc_log_probs, targets)
    if onsets is None:
        return None
    starts = [0]
    for j in range(1, len(chunks)):
        boundary = int(round(onsets[first_of_chunk[j]] / per_frame))
        starts.append(max(boundary, starts[-1] + 1))
    if starts[-1] >= frames:
        return None
    ends = starts[1:] + [frames]
    spans = [
        AlignedChunk(chunk, strings[j], ends[j] - starts[j], int(onsets[first_of_chunk[j]]))
        for j, chunk in enumerate(chunks)
    ]
    return ClipAlignment(spans, frame_phonemes(onsets, targets, frames, per_frame, silent))


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


def silent_frames(audio: np.ndarray, frame_samples: int, frames: int) -> np.ndarray:
    """[frames] bool: frames whose RMS is SILENCE_DB or more below the clip's loudest frame."""
    padded = np.zeros(frames * frame_samples, dtype=np.float64)
    padded[: min(len(audio), len(padded))] = audio[: len(padded)]
    rms = np.sqrt((padded.reshape(frames, frame_samples) ** 2).mean(1))
    db = 20 * np.log10(rms + 1e-9)
    return db < db.max() - SILENCE_DB


@torch.inference_mode()
def encode_and_align(codec, audio: np.ndarray, text: str) -> tuple[np.ndarray, ClipAlignment | None]:
    """Codes [F, G] of one 16 kHz clip and its alignment (``None`` when alignment fails)."""
    from model.codec.codec import CTC_PER_FRAME

    x = torch.as_tensor(audio, dtype=torch.float32)[None].to(codec.device)
    q = codec.quantized(codec.pad(x))
    codes = codec.fsq.to_codes(q)[0].cpu().numpy()
    log_probs = codec.ctc_logits(q)[0].float().cpu().numpy()
    frames = codes.shape[0]
    silent = silent_frames(np.asarray(audio, dtype=np.float32), codec.frame_samples, frames)
    return codes, align_clip(text, log_probs, frames, codec.config.phonemes, CTC_PER_FRAME, silent)


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
            codes, alignment = encode_and_align(codec, samples, line["text"])
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
                    "chunks": [c.__dict__ for c in alignment.chunks],
                }
            )
        if dropped:
            log.info("%s: %d of %d clips could not be aligned", jsonl.name, dropped, len(lines))
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
    for jsonl in sorted(out.glob("shard_*.jsonl")):
        for line in jsonl.read_text().splitlines():
            row = json.loads(line)
            items += 1
            frames += row["frames"]
            chunks += len(row["chunks"])
    manifest = {
        "corpus": str(corpus),
        "items": items,
        "chunks": chunks,
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
