"""Are the talker's word-aligned spans right? Chunk starts against whisper's word timestamps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment_check.py --aligned data/aligned \\
        --corpus data/corpus --clips 60 --png benchmarks/alignment.png

For clips spread over the aligned shards (fixed seed), whisper tiny.en (faster-whisper, greedy,
``word_timestamps=True``) transcribes the corpus audio; its words are matched in order to the
clip's words (both through ``normalise_text``, difflib), and every chunk whose first word whisper
heard gives one comparison of that word's whisper start with:

- ``onset``: the chunk's CTC onset (``onset * 20 ms``), what the forced alignment found;
- ``boundary``: where the chunk's span begins (sum of the previous spans' frames * 80 ms), what
  the talker trains on;
- ``baseline``: a boundary placed by characters (the chunk's first character / the text's
  length * the clip's duration), which needs no alignment at all.

The first chunk of a clip is left out: its span starts at 0 by construction, and whisper puts its
first word at 0.0 s however much silence comes before it. Reported per method: chunks compared, median and
p90 absolute difference (ms), the median signed difference (ours - whisper; > 0 means late) and the
share within 80 ms (one frame) and 160 ms. Whisper's own word starts are not exact (tens of ms),
so these figures bound the alignment's error from above.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAME_S = 0.08  # one codec frame
CTC_STEP_S = 0.02  # one CTC step of the codec's phoneme head (4 per frame)
SAMPLE_RATE = 16_000
METHODS = ("onset", "boundary", "baseline")


@dataclass
class Clip:
    """One aligned clip with its corpus audio."""

    shard: str  # shard file stem, the same in the aligned and the corpus folder
    row: dict  # the aligned JSONL row: {"id", "text", "frames", "chunks"}
    audio: np.ndarray  # float32 16 kHz


def pick_clips(aligned: Path, corpus: Path, n: int, seed: int, shards: int | None = None) -> list[Clip]:
    """``n`` clips, round-robin over the first ``shards`` aligned shards (all by default), each
    shard's clips in a seeded random order."""
    rng = random.Random(seed)
    shards = sorted(aligned.glob("shard_*.jsonl"))[:shards]
    if not shards:
        raise SystemExit(f"no aligned shards in {aligned}: make them with `ttt data align --out {aligned}`")
    orders = []
    for jsonl in shards:
        rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        rng.shuffle(rows)
        orders.append((jsonl.stem, rows))
    picked: dict[str, list[dict]] = {}
    for i in range(max(len(rows) for _, rows in orders)):
        for stem, rows in orders:
            if i < len(rows) and sum(map(len, picked.values())) < n:
                picked.setdefault(stem, []).append(rows[i])
    clips = []
    for stem, rows in picked.items():
        lines = (corpus / f"{stem}.jsonl").read_text().splitlines()
        where = {json.loads(line)["id"]: i for i, line in enumerate(lines)}
        with np.load(corpus / f"{stem}.npz") as data:
            audio, offsets = data["audio"], data["offsets"]
        for row in rows:
            i = where[row["id"]]
            clips.append(Clip(stem, row, audio[offsets[i] : offsets[i + 1]].astype(np.float32) / 32767))
    return clips


def whisper_words(model, audio: np.ndarray) -> list[tuple[str, float]]:
    """(word, start in seconds) of every word whisper hears, greedy, English."""
    segments, _ = model.transcribe(
        audio, beam_size=1, language="en", condition_on_previous_text=False, word_timestamps=True
    )
    return [(w.word, float(w.start)) for s in segments for w in s.words]


def heard_starts(words: list[str], heard: list[tuple[str, float]]) -> list[float | None]:
    """Whisper's start of each of ``words`` (``None`` where whisper did not hear its first token).

    Both sides are normalised word by word (a word may become several tokens: "can't" -> "can not");
    the token sequences are matched by difflib and a word takes the start of the whisper word whose
    token matched its first token.
    """
    from agent.bench import normalise_text

    ours, first_token = [], []
    for word in words:
        tokens = normalise_text(word).split()
        first_token.append(len(ours) if tokens else None)
        ours += tokens
    theirs, starts = [], []
    for word, start in heard:
        tokens = normalise_text(word).split()
        theirs += tokens
        starts += [start] * len(tokens)
    match: dict[int, int] = {}
    for block in difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False).get_matching_blocks():
        match.update({block.a + k: block.b + k for k in range(block.size)})
    return [None if t is None or t not in match else starts[match[t]] for t in first_token]


def compare_clip(clip: Clip, heard: list[tuple[str, float]]) -> list[dict]:
    """One row per chunk whose first word whisper heard: its whisper start and each method's time."""
    text, chunks = clip.row["text"], clip.row["chunks"]
    spans = [(m.start(), m.group()) for m in re.finditer(r"\S+", text)]  # the words of model.chunks.words_of
    starts = heard_starts([w for _, w in spans], heard)
    duration = len(clip.audio) / SAMPLE_RATE
    rows, word, frame = [], 0, 0
    for j, chunk in enumerate(chunks):
        char = spans[word][0]
        if starts[word] is not None:
            rows.append(
                {
                    "id": clip.row["id"],
                    "chunk": j,
                    "text": chunk["text"],
                    "whisper": starts[word],
                    "onset": chunk["onset"] * CTC_STEP_S,
                    "boundary": frame * FRAME_S,
                    "baseline": char / len(text) * duration,
                }
            )
        word += len(chunk["text"].split())
        frame += chunk["frames"]
    return rows


def summarise(errors_s: list[float]) -> dict:
    """Figures over signed differences (seconds, ours - whisper)."""
    signed = np.asarray(errors_s) * 1000
    absolute = np.abs(signed)
    return {
        "chunks": len(signed),
        "median_abs_ms": round(float(np.median(absolute)), 1),
        "p90_abs_ms": round(float(np.percentile(absolute, 90)), 1),
        "median_signed_ms": round(float(np.median(signed)), 1),
        "within_80ms": round(float((absolute <= 80).mean()), 3),
        "within_160ms": round(float((absolute <= 160).mean()), 3),
    }


GREYS = 240  # palette entries 0..239 are the spectrogram's grey levels, the rest the drawing colours
RED, YELLOW, CYAN, BLACK, WHITE = range(GREYS, GREYS + 5)
PALETTE = [v for g in range(GREYS) for v in (g * 255 // (GREYS - 1),) * 3]
PALETTE += [255, 40, 40, 255, 220, 0, 0, 220, 255, 0, 0, 0, 255, 255, 255]


def draw(clips: list[Clip], heard: list[list[tuple[str, float]]], path: Path) -> None:
    """Log-mel spectrograms with span boundaries (red lines), CTC onsets (yellow ticks, bottom),
    whisper word starts (cyan ticks, top) and each chunk's text under its span, as a palette PNG."""
    import torch
    from PIL import Image, ImageDraw, ImageFont

    from model.codec.dsp import HOP, log_mel

    px_per_mel, mel_rows, top, text_h, gap = 2, 2, 16, 30, 8  # 10 ms -> 2 px, 80 mels -> 160 px
    font = ImageFont.load_default(size=11)
    greys = []
    for clip in clips:
        n = len(clip.audio) // HOP * HOP
        mel = log_mel(torch.from_numpy(clip.audio[:n])[None])[0].numpy()
        level = np.clip((mel + 11.5) / 13.0, 0, 1)[::-1]  # low frequencies at the bottom
        greys.append((np.kron(level, np.ones((mel_rows, px_per_mel))) * (GREYS - 1)).astype(np.uint8))
    width = max(g.shape[1] for g in greys)
    height = 18 + sum(top + g.shape[0] + text_h + gap for g in greys)
    canvas = Image.new("P", (width, height), WHITE)
    canvas.putpalette(PALETTE)
    pen = ImageDraw.Draw(canvas)
    legend = "red: span boundaries (ours)   yellow, bottom: CTC onsets (ours)   cyan, top: whisper word starts"
    pen.text((2, 2), legend, fill=BLACK, font=font)
    y = 18
    for clip, words, grey in zip(clips, heard, greys, strict=True):
        h = grey.shape[0]
        spec = Image.fromarray(grey, "P")
        spec.putpalette(PALETTE)
        canvas.paste(spec, (0, y + top))
        pen.text((2, y + 1), f"id {clip.row['id']}: {clip.row['text']}", fill=BLACK, font=font)
        x_of = lambda seconds: int(round(seconds * 100 * px_per_mel))  # noqa: E731
        for _, start in words:
            pen.line([(x_of(start), y + top), (x_of(start), y + top + 14)], fill=CYAN, width=2)
        frame = 0
        for j, chunk in enumerate(clip.row["chunks"]):
            x = x_of(frame * FRAME_S)
            if j:
                pen.line([(x, y + top), (x, y + top + h)], fill=RED, width=2)
            onset = x_of(chunk["onset"] * CTC_STEP_S)
            pen.line([(onset, y + top + h - 14), (onset, y + top + h)], fill=YELLOW, width=2)
            pen.text((x + 2, y + top + h + 2 + 13 * (j % 2)), chunk["text"], fill=BLACK, font=font)
            frame += chunk["frames"]
        y += top + h + text_h + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(str(path), optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligned", default="data/aligned", help="folder from `ttt data align`")
    parser.add_argument("--corpus", default="data/corpus", help="the corpus it was aligned from")
    parser.add_argument("--clips", type=int, default=60, help="clips to check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip choice")
    parser.add_argument("--shards", type=int, help="only the first N aligned shards (a fixed sample while more arrive)")
    parser.add_argument("--png", type=Path, help="write spectrograms with the alignments here")
    parser.add_argument("--plot-clips", type=int, default=4, help="clips in the PNG (the last is the worst one)")
    parser.add_argument("--details", type=Path, help="write one JSON line per compared chunk here")
    parser.add_argument("--threads", type=int, default=1, help="whisper CPU threads")
    args = parser.parse_args()
    import torch

    from training.evaluate import Transcriber

    torch.set_num_threads(1)
    clips = pick_clips(Path(args.aligned), Path(args.corpus), args.clips, args.seed, args.shards)
    model = Transcriber.load(threads=args.threads).model
    heard = [whisper_words(model, clip.audio) for clip in clips]
    rows = [row for clip, words in zip(clips, heard, strict=True) for row in compare_clip(clip, words)]
    later = [r for r in rows if r["chunk"] > 0]
    chunks_total = sum(len(c.row["chunks"]) for c in clips)
    result = {
        "clips": len(clips),
        "shards": len({c.shard for c in clips}),
        "chunks": chunks_total,
        "chunks_heard": len(rows),
        **{m: summarise([r[m] - r["whisper"] for r in later]) for m in METHODS},
    }
    print(json.dumps(result, indent=1))
    if args.details:
        args.details.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.png:
        worst = max(later, key=lambda r: abs(r["boundary"] - r["whisper"]))["id"]
        shown = [i for i, c in enumerate(clips) if c.row["id"] != worst][: max(args.plot_clips - 1, 0)]
        shown += [next(i for i, c in enumerate(clips) if c.row["id"] == worst)]
        draw([clips[i] for i in shown], [heard[i] for i in shown], args.png)


if __name__ == "__main__":
    main()
