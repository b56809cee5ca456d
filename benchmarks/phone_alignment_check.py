"""Are the aligner's frame phoneme labels right? Our labels against the teacher voice's own phoneme durations.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/phone_alignment_check.py \\
        --sentences 40 --png benchmarks/phone_alignment.png

``training/align.py`` labels every 80 ms codec frame with a phoneme (CTC class id) or SILENCE,
from CTC forced alignment on the codec's phoneme head plus an energy threshold. Piper knows the
truth for its own audio: the VITS duration predictor fixes how many samples each phoneme id
gets, and ``include_alignments`` exposes it. For the first ``--sentences`` lines of
``training/heldout_sentences.txt`` this voices each sentence as the corpus does (the teacher's
sampling noise, a seeded speaking rate in the corpus' 0.9-1.12 range, soxr to 16 kHz, int16
round trip), runs ``encode_and_align`` on it, and compares frame by frame.

The reference label of a frame is the Piper segment under its middle sample, after these rules:

- a phoneme symbol the CTC head knows (``model.codec.codec.PHONEMES``, ``ː`` included) is its
  class id; Piper's trailing pad ``_`` is already counted in each symbol's samples;
- a stress mark (``ˈ ˌ``) or a word space joins the phoneme after it. Piper gives them 20-100 ms
  of audio each, and that audio sounds like the next phoneme: next to a fricative (s ʃ z f) the
  share of energy above 3.5 kHz of a space before it is nearly the fricative's, of a space or a
  stress mark after it near zero (``high_band_share`` in the output, from ``rule_evidence``);
- everything else (``^`` ``$``, punctuation, which is where Piper puts its pauses) is SILENCE.

Consecutive segments with the same label are merged, so "the phoneme before/after" is the nearest
different one. Reported for our labels and for a baseline that needs no alignment (the same
target phonemes spread evenly over the clip's non-silent frames, the same silence mask):

- ``exact``: share of frames whose label equals the reference;
- ``within_one``: share whose label is the reference segment's, or its neighbour's;
- ``speech_exact``: ``exact`` over the frames both sides call speech (phoneme identity only);
- silence precision and recall (SILENCE is the positive class);
- ``shift_exact``: ``exact`` of our frame f against the reference's frame f + k, to see a systematic
  lag at frame resolution (a peak at k = -1 would mean our labels trail the reference by a frame);
- ``earlier_onsets_exact``: ``exact`` of labels made by ``frame_phonemes`` from our onsets moved k
  CTC steps (20 ms) earlier: what a constant lag correction in the aligner would buy;
- ``onset_lag_ms``: our CTC onset of each phoneme minus Piper's start of it (positive: ours is late),
  over the phonemes where our target sequence and Piper's agree (difflib).

Piper's sampling noise is not seeded, so figures move a little from run to run; ``--steady``
switches the noise off (not what the corpus has, but reproducible).
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.codec.codec import CTC_PER_FRAME, FRAME_SAMPLES, PHONEMES, SpeechCodec
from training.align import (
    JOINS_NEXT,
    SILENCE,
    chunk_targets,
    ctc_forced_align,
    encode_and_align,
    frame_phonemes,
    phoneme_index,
    silent_frames,
)
from training.teacher import piper_voice

if TYPE_CHECKING:
    from piper import PiperVoice

SAMPLE_RATE = 16_000
CTC_STEP_S = FRAME_SAMPLES / CTC_PER_FRAME / SAMPLE_RATE  # 20 ms
SENTENCES = Path(__file__).resolve().parents[1] / "training" / "heldout_sentences.txt"
FRICATIVES = "sʃzf"  # hiss above 3.5 kHz: easy to tell from vowels and voiced consonants
CLASS_OF = phoneme_index(PHONEMES)  # our CTC class ids (0 is SILENCE)
SYMBOL_OF = {i: s for s, i in CLASS_OF.items()} | {SILENCE: "sil"}
LENGTH_SCALES = (0.9, 1.12)  # the corpus' speaking-rate range (training/synth.py, _voice_shard)
SHIFTS = range(-2, 3)  # frames
EARLIER_STEPS = range(4)  # CTC steps


@dataclass
class Segment:
    """A stretch of the teacher's audio and the label it voices."""

    label: int  # CTC class id, or SILENCE
    start: float  # seconds
    end: float


@dataclass
class Clip:
    """One sentence as the corpus would hold it, with the teacher's own segmentation."""

    text: str
    audio: np.ndarray  # float32, 16 kHz, as training/synth.py stores it
    native: np.ndarray  # Piper's own float32 output, at rate
    rate: int
    alignments: list[tuple[str, int]]  # Piper's (symbol, samples at rate), BOS and EOS included
    segments: list[Segment]  # the same after the rules in the module docstring

    def symbol_audio(self, i: int) -> np.ndarray:
        """Piper's own audio of its ``i``-th symbol."""
        start = sum(samples for _, samples in self.alignments[:i])
        return self.native[start : start + self.alignments[i][1]]


# --- the teacher, with alignments ------------------------------------------------------------


def voice_clip(voice: PiperVoice, text: str, length_scale: float, steady: bool) -> Clip:
    """``text`` voiced like a corpus item, and Piper's segments of it."""
    from piper import SynthesisConfig

    from audio_io.resample import to_mono_16k

    config = SynthesisConfig(length_scale=length_scale)
    if steady:
        config.noise_scale, config.noise_w_scale = 0.0, 0.0
    pieces, alignments = [], []
    for chunk in voice.synthesize(text, syn_config=config, include_alignments=True):  # one chunk per sentence
        if chunk.phoneme_alignments is None:
            raise RuntimeError(f"Piper gave no alignments for {text!r}")
        pieces.append(chunk.audio_float_array)
        alignments += chunk.phoneme_alignments
    native = np.concatenate(pieces)
    rate = voice.config.sample_rate
    if sum(a.num_samples for a in alignments) != len(native):
        raise RuntimeError(f"Piper's durations do not add up to its audio for {text!r}")
    # exactly training/synth.py's path: soxr HQ to 16 kHz, clipped, stored as int16, read back / 32767
    samples = np.clip(to_mono_16k(native, rate), -1.0, 1.0)
    audio = (samples * 32767).astype(np.int16).astype(np.float32) / 32767
    symbols = [(a.phoneme, int(a.num_samples)) for a in alignments]
    return Clip(text, audio, native, rate, symbols, teacher_segments(symbols, rate))


def teacher_segments(alignments: list[tuple[str, int]], rate: int) -> list[Segment]:
    """Piper's (symbol, samples) in order, as labelled segments (rules in the module docstring)."""
    segments: list[Segment] = []
    carried_start: float | None = None  # where the stress marks and spaces before this phoneme began
    t = 0
    for symbol, samples in alignments:
        start = t / rate
        t += samples
        if symbol in JOINS_NEXT:
            carried_start = start if carried_start is None else carried_start
            continue
        label = CLASS_OF.get(symbol, SILENCE)
        segments.append(Segment(label, start if carried_start is None else carried_start, t / rate))
        carried_start = None
    if carried_start is not None and segments:
        segments[-1].end = t / rate  # nothing after them (never seen: EOS comes last)
    return segments


def merge_repeats(segments: list[Segment]) -> list[Segment]:
    """Consecutive segments with one label as one (a pause of ``?`` then ``$``, a doubled /n/)."""
    merged: list[Segment] = []
    for segment in segments:
        if merged and merged[-1].label == segment.label:
            merged[-1].end = segment.end
        else:
            merged.append(Segment(segment.label, segment.start, segment.end))
    return merged


def reference_frames(segments: list[Segment], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the label under its middle sample and the index of that segment in ``segments``.

    Frames whose middle lies past the audio (the codec pads the last frame) are SILENCE, index -1.
    """
    middles = (np.arange(frames) * FRAME_SAMPLES + FRAME_SAMPLES / 2) / SAMPLE_RATE
    starts = np.array([s.start for s in segments])
    index = np.searchsorted(starts, middles, side="right") - 1
    index[middles >= segments[-1].end] = -1
    labels = np.array([s.label for s in segments] + [SILENCE], dtype=np.int64)[index]  # -1 picks SILENCE
    return labels, index


def high_band_share(audio: np.ndarray, rate: int) -> float:
    """Share of ``audio``'s energy above 3.5 kHz (NaN when too short to tell)."""
    if len(audio) < 64:
        return float("nan")
    power = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    return float(power[np.fft.rfftfreq(len(audio), 1 / rate) > 3500].sum() / (power.sum() + 1e-12))


def rule_evidence(clips: list[Clip]) -> dict[str, float]:
    """Median high-band share of fricatives and of the spaces and stress marks beside them.

    A space or stress mark that sounds like the phoneme after it has the fricative's share when a
    fricative follows, and a vowel's (near 0) when one precedes it.
    """
    shares: dict[str, list[float]] = {}
    for clip in clips:
        for i, (symbol, _) in enumerate(clip.alignments[1:-1], start=1):
            before, after = clip.alignments[i - 1][0], clip.alignments[i + 1][0]
            if symbol not in JOINS_NEXT or (before in FRICATIVES) == (after in FRICATIVES):
                continue
            kind = ("space" if symbol == " " else "stress") + (" after" if before in FRICATIVES else " before")
            fricative = i - 1 if before in FRICATIVES else i + 1
            shares.setdefault(f"{kind} a fricative", []).append(high_band_share(clip.symbol_audio(i), clip.rate))
            shares.setdefault("the fricatives", []).append(high_band_share(clip.symbol_audio(fricative), clip.rate))
    return {kind: round(float(np.nanmedian(v)), 3) for kind, v in sorted(shares.items())}


# --- our side --------------------------------------------------------------------------------


def ctc_onsets(codec: SpeechCodec, audio: np.ndarray, targets: list[int]) -> np.ndarray | None:
    """First CTC step of each target, as ``encode_and_align`` finds them (it keeps only the chunks')."""
    import torch

    with torch.inference_mode():
        q = codec.quantized(codec.pad(torch.as_tensor(audio, dtype=torch.float32)[None]))
        log_probs = codec.ctc_logits(q)[0].float().numpy()
    return ctc_forced_align(log_probs, targets)


def uniform_labels(targets: list[int], silent: np.ndarray) -> np.ndarray:
    """The baseline: ``targets`` spread evenly over the non-silent frames, in order."""
    labels = np.full(len(silent), SILENCE, dtype=np.int64)
    speech = np.flatnonzero(~silent)
    labels[speech] = np.asarray(targets)[np.arange(len(speech)) * len(targets) // max(len(speech), 1)]
    return labels


# --- comparison ------------------------------------------------------------------------------


@dataclass
class FrameRows:
    """Per-frame arrays of one clip, or of all compared clips concatenated."""

    ours: np.ndarray  # what encode_and_align stores
    baseline: np.ndarray  # uniform_labels
    reference: np.ndarray  # Piper's label under the frame's middle sample
    previous: np.ndarray  # label of the reference segment before (SILENCE at a clip's start)
    following: np.ndarray  # and after
    coverage: np.ndarray  # share of the frame its reference segment covers

    @staticmethod
    def concatenate(parts: list[FrameRows]) -> FrameRows:
        """All ``parts`` end to end."""
        return FrameRows(*(np.concatenate(column) for column in zip(*(vars(p).values() for p in parts), strict=True)))


@dataclass
class ClipComparison:
    """Everything one clip contributes to the figures."""

    rows: FrameRows
    lags: list[tuple[int, float]]  # onset_lags
    sequence_agreement: float
    earlier_hits: dict[int, int]  # frames exact with our onsets moved k CTC steps earlier


def frame_coverage(segments: list[Segment], index: np.ndarray) -> np.ndarray:
    """Share of each frame's 80 ms that the segment under its middle covers (0 past the audio)."""
    frame_s = FRAME_SAMPLES / SAMPLE_RATE
    starts = np.arange(len(index)) * frame_s
    seg_start = np.array([s.start for s in segments] + [np.inf])[index]  # -1: past the audio, no overlap
    seg_end = np.array([s.end for s in segments] + [np.inf])[index]
    return (np.minimum(seg_end, starts + frame_s) - np.maximum(seg_start, starts)).clip(0) / frame_s


def neighbours(segments: list[Segment], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the segments before and after each frame's reference segment (SILENCE off the ends)."""
    labels = np.array([SILENCE] + [s.label for s in segments] + [SILENCE, SILENCE])
    inside = index >= 0  # frames past the audio: their neighbour is the clip's last segment
    before = np.where(inside, labels[index.clip(0)], labels[len(segments)])
    after = np.where(inside, labels[index + 2], SILENCE)
    return before, after


def frame_scores(labels: np.ndarray, rows: FrameRows) -> dict:
    """The figures of one labelling against the reference."""
    ref = rows.reference
    exact = labels == ref
    within = exact | (labels == rows.previous) | (labels == rows.following)
    both_speech = (labels != SILENCE) & (ref != SILENCE)
    said_silent, is_silent = labels == SILENCE, ref == SILENCE
    return {
        "exact": round(float(exact.mean()), 3),
        "within_one": round(float(within.mean()), 3),
        "speech_exact": round(float(exact[both_speech].mean()), 3),
        "silence_precision": round(float(is_silent[said_silent].mean()), 3),
        "silence_recall": round(float(said_silent[is_silent].mean()), 3),
    }


def shifted_exact(ours: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """``exact`` of our frame f against reference frame f + k, per clip, for each k in SHIFTS."""
    out = {}
    for k in SHIFTS:
        hits = total = 0
        for o, r in zip(ours, reference, strict=True):
            a, b = (o[: len(o) - k], r[k:]) if k >= 0 else (o[-k:], r[: len(r) + k])
            hits += int((a == b).sum())
            total += len(a)
        out[str(k)] = round(hits / total, 3)
    return out


def onset_lags(targets: list[int], onsets: np.ndarray, segments: list[Segment]) -> list[tuple[int, float]]:
    """(class, our onset - Piper's start in seconds) for each phoneme both sequences share."""
    spoken = [s for s in segments if s.label != SILENCE]
    matcher = difflib.SequenceMatcher(a=targets, b=[s.label for s in spoken], autojunk=False)
    lags = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            i, j = block.a + k, block.b + k
            lags.append((targets[i], float(onsets[i]) * CTC_STEP_S - spoken[j].start))
    return lags


def sequence_agreement(targets: list[int], segments: list[Segment]) -> float:
    """Share of Piper's phonemes that our (per-chunk) phonemization also has, in order."""
    theirs = [s.label for s in segments if s.label != SILENCE]
    matcher = difflib.SequenceMatcher(a=targets, b=theirs, autojunk=False)
    return sum(b.size for b in matcher.get_matching_blocks()) / max(len(theirs), 1)


def lag_figures(lags_s: list[float]) -> dict:
    """Median, spread and closeness of onset lags, in ms."""
    ms = np.asarray(lags_s) * 1000
    return {
        "phonemes": len(ms),
        "median": round(float(np.median(ms)), 1),
        "p10": round(float(np.percentile(ms, 10)), 1),
        "p90": round(float(np.percentile(ms, 90)), 1),
        "median_abs": round(float(np.median(np.abs(ms))), 1),
        "within_40ms": round(float((np.abs(ms) <= 40).mean()), 3),
        "within_80ms": round(float((np.abs(ms) <= 80).mean()), 3),
    }


def per_phoneme(rows: FrameRows, lags: list[tuple[int, float]], min_frames: int) -> list[dict]:
    """Exact share, most common wrong label and median onset lag per reference label, most frames first."""
    by_class: dict[int, list[float]] = {}
    for label, lag in lags:
        by_class.setdefault(label, []).append(lag * 1000)
    out = []
    for label, frames in Counter(rows.reference.tolist()).most_common():
        if frames < min_frames:
            break
        mine = rows.ours[rows.reference == label]
        wrong = Counter(mine[mine != label].tolist()).most_common(1)
        out.append(
            {
                "phoneme": SYMBOL_OF[label],
                "frames": frames,
                "exact": round(float((mine == label).mean()), 3),
                "confused_with": SYMBOL_OF[wrong[0][0]] if wrong else None,
                "median_lag_ms": round(float(np.median(by_class[label])), 1) if label in by_class else None,
            }
        )
    return out


# --- picture ---------------------------------------------------------------------------------


def draw(examples: list[tuple[str, dict[str, np.ndarray]]], path: Path) -> None:
    """Label strips of a few clips as a PNG: one cell per frame, a symbol where a label starts, and
    a red frame around every cell that differs from the first row (the reference)."""
    from PIL import Image, ImageDraw, ImageFont

    cell, row_h, label_w = 14, 18, 70
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 11)  # has the IPA glyphs; Pillow's default font does not
    except OSError:
        font = ImageFont.load_default(size=11)
    width = label_w + cell * max(len(next(iter(rows.values()))) for _, rows in examples)
    height = sum(16 + row_h * len(rows) + 8 for _, rows in examples)
    canvas = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(canvas)
    y = 0
    for text, rows in examples:
        pen.text((2, y + 2), text, fill="black", font=font)
        y += 16
        reference = next(iter(rows.values()))
        for name, labels in rows.items():
            pen.text((2, y + 3), name, fill="black", font=font)
            for f, label in enumerate(labels):
                x = label_w + f * cell
                hue = "#dddddd" if label == SILENCE else ("#9ecae1", "#fdd0a2", "#c7e9c0", "#dadaeb")[int(label) % 4]
                edge = "red" if label != reference[f] else hue
                pen.rectangle([x, y, x + cell - 1, y + row_h - 2], fill=hue, outline=edge)
                if label != SILENCE and (f == 0 or labels[f - 1] != label):
                    pen.text((x + 2, y + 2), SYMBOL_OF[int(label)], fill="black", font=font)
            y += row_h
        y += 8
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(str(path), optimize=True)


# --- all clips -------------------------------------------------------------------------------


def compare_clip(codec: SpeechCodec, clip: Clip) -> ClipComparison | None:
    """Our labels of ``clip`` against Piper's; ``None`` when encode_and_align cannot align it."""
    codes, alignment = encode_and_align(codec, clip.audio, clip.text)
    if alignment is None:
        return None
    frames = codes.shape[0]
    silent = silent_frames(clip.audio, FRAME_SAMPLES, frames)
    targets = [t for chunk in chunk_targets(clip.text, CLASS_OF)[2] for t in chunk]
    onsets = ctc_onsets(codec, clip.audio, targets)
    # the onsets must be the ones behind the stored labels, or their lag says nothing about them
    assert np.array_equal(frame_phonemes(onsets, targets, frames, CTC_PER_FRAME, silent), alignment.phones)
    segments = merge_repeats(clip.segments)
    reference, index = reference_frames(segments, frames)
    before, after = neighbours(segments, index)
    rows = FrameRows(
        alignment.phones.astype(np.int64),
        uniform_labels(targets, silent),
        reference,
        before,
        after,
        frame_coverage(segments, index),
    )
    earlier_hits = {}
    for k in EARLIER_STEPS:
        moved = frame_phonemes((onsets - k).clip(0), targets, frames, CTC_PER_FRAME, silent)
        earlier_hits[k] = int((moved == reference).sum())
    return ClipComparison(
        rows,
        onset_lags(targets, onsets, clip.segments),
        sequence_agreement(targets, clip.segments),
        earlier_hits,
    )


def reference_figures(clips: list[Clip], rows: FrameRows) -> dict:
    """How the reference itself looks: silence, phoneme lengths, how much of a frame one label covers."""
    lengths = [s.end - s.start for c in clips for s in c.segments if s.label != SILENCE]
    speech = rows.reference != SILENCE
    return {
        "silence_share": round(float((~speech).mean()), 3),
        "median_phoneme_ms": round(float(np.median(lengths)) * 1000, 1),
        "speech_frame_coverage": round(float(rows.coverage[speech].mean()), 3),
    }


def markdown_table(result: dict) -> str:
    """The headline figures of ours and the baseline, as a Markdown table."""
    keys = ("exact", "within_one", "speech_exact", "silence_precision", "silence_recall")
    lines = ["| labels | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("ours", "baseline"):
        lines.append(f"| {name} | " + " | ".join(f"{result[name][k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=40, help="the first N held-out sentences")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaking rates")
    parser.add_argument("--steady", action="store_true", help="no Piper sampling noise (the corpus has it)")
    parser.add_argument("--codec", help="codec checkpoint (default: the shipped one)")
    parser.add_argument("--min-frames", type=int, default=40, help="phonemes with fewer frames are not listed")
    parser.add_argument("--png", type=Path, help="draw label strips of the first --plot-clips clips here")
    parser.add_argument("--plot-clips", type=int, default=3)
    args = parser.parse_args()
    import torch

    from model.codec import load_codec

    torch.set_num_threads(1)
    codec, voice, rng = load_codec(args.codec), piper_voice(threads=1, alignments=True), random.Random(args.seed)
    texts = [line.strip() for line in SENTENCES.read_text().splitlines() if line.strip()][: args.sentences]
    clips = [voice_clip(voice, text, rng.uniform(*LENGTH_SCALES), args.steady) for text in texts]
    compared = [(clip, c) for clip in clips if (c := compare_clip(codec, clip)) is not None]
    rows = FrameRows.concatenate([c.rows for _, c in compared])
    lags = [lag for _, c in compared for lag in c.lags]
    result = {
        "clips": len(compared),
        "failed": len(clips) - len(compared),
        "frames": len(rows.reference),
        "reference": reference_figures(clips, rows),
        "phoneme_sequence_agreement": round(float(np.mean([c.sequence_agreement for _, c in compared])), 3),
        "ours": frame_scores(rows.ours, rows),
        "baseline": frame_scores(rows.baseline, rows),
        "shift_exact": shifted_exact([c.rows.ours for _, c in compared], [c.rows.reference for _, c in compared]),
        "earlier_onsets_exact": {
            str(k): round(sum(c.earlier_hits[k] for _, c in compared) / len(rows.reference), 3) for k in EARLIER_STEPS
        },
        "onset_lag_ms": lag_figures([lag for _, lag in lags]),
        "per_phoneme": per_phoneme(rows, lags, args.min_frames),
        "high_band_share": rule_evidence(clips),
        "settings": {"sentences": len(texts), "seed": args.seed, "steady": args.steady},
    }
    print(json.dumps(result, indent=1, ensure_ascii=False))
    print(markdown_table(result))
    if args.png:
        shown = compared[: args.plot_clips]
        draw(
            [
                (clip.text, {"piper": c.rows.reference, "ours": c.rows.ours, "uniform": c.rows.baseline})
                for clip, c in shown
            ],
            args.png,
        )


if __name__ == "__main__":
    main()
