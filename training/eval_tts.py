"""``ttt eval tts``: how intelligible the talker's voice is, beside the teacher's, and how fast.

For each sentence the steady teacher voice is voiced and transcribed once (shared by every
checkpoint); then, per checkpoint, whisper tiny.en transcribes

- ``say``: the talker voicing the text on its own (free-running: its durations, its spans);
- ``single_span``: every span predicted from the true spans before it, at its true length
  (teacher forcing on the teacher audio's own codes and alignment: the first WER signal in training);
- ``codec``: the teacher audio through the codec (what a perfect talker would reach).

The WER gap of ``say`` over the teacher comes with its paired standard error over sentences, and
sentences of 20 words or more are also scored on their own (skipped or repeated words show there).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch

LONG_WORDS = 20  # a sentence this long or longer counts as long


def evaluate_tts(
    talker, codec, dev, transcriber, options, per_sentence: list[dict] | None = None, png: str | None = None
) -> dict:
    """Metrics of one talker on a voiced :class:`training.evaluate.DevSet` (see the module docstring).

    ``png``: log-mel spectrograms of the first sentence, the teacher's (top) above the talker's.
    """
    from model.chunks import chunk_tokens
    from model.generate import AudioChunk
    from model.say import say
    from training.align import encode_and_align
    from training.evaluate import spectrogram_png
    from training.wer import wer_gap, word_error_rate

    said, single, resynth, firsts, rtfs = [], [], [], [], []
    for text, audio in zip(dev.sentences, dev.audio, strict=True):
        result = say(talker, codec, text, options)
        if png and not said and len(result.samples):
            spectrogram_png(audio, result.samples, png)
        said.append(transcriber(result.samples) if len(result.samples) else "")
        firsts.append(result.first_audio_s)
        rtfs.append(result.rtf)
        codes, alignment = encode_and_align(codec, audio, text)
        spans = alignment.chunks if alignment is not None else None
        resynth.append(transcriber(codec.decode(torch.as_tensor(codes.astype(np.int64))[None])[0].cpu().numpy()))
        if spans is not None and len(spans) == len(chunk_tokens(talker.tokenizer, text)):
            cuts = np.cumsum([0] + [s.frames for s in spans])
            truth = [torch.as_tensor(codes[a:b].astype(np.int64)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            chunks = talker.stream([], codec, text=text, options=options, teacher=truth)
            pieces = [e.samples for e in chunks if isinstance(e, AudioChunk) and len(e.samples)]
            single.append(transcriber(np.concatenate(pieces)) if pieces else "")
        else:
            single.append("")  # the teacher audio could not be aligned: scored as all words missed
    long = [i for i, s in enumerate(dev.sentences) if len(s.split()) >= LONG_WORDS]
    refs, teacher = dev.sentences, dev.transcripts

    def wer(hyps: list[str], rows: list[int] | None = None) -> float:
        rows = list(range(len(refs))) if rows is None else rows
        return round(100 * word_error_rate([refs[i] for i in rows], [hyps[i] for i in rows]), 2)

    gap, gap_se = wer_gap(refs, teacher, said)
    out = {
        "sentences": len(refs),
        "wer_teacher": wer(teacher),
        "wer_say": wer(said),
        "wer_gap": round(100 * gap, 2),
        "wer_gap_se": None if math.isnan(gap_se) else round(100 * gap_se, 2),
        "wer_single_span": wer(single),
        "wer_codec": wer(resynth),
        "long_sentences": len(long),
        "first_audio_s_median": round(statistics.median(firsts), 4),
        "rtf_median": round(statistics.median(rtfs), 4),
    }
    if long:
        out |= {"wer_say_long": wer(said, long), "wer_teacher_long": wer(teacher, long)}
    if per_sentence is not None:
        for row in zip(refs, teacher, said, single, resynth, strict=True):
            per_sentence.append(dict(zip(("text", "teacher", "say", "single_span", "codec"), row, strict=True)))
    return out


def run_eval_tts(args: argparse.Namespace, settings) -> int:
    """``ttt eval tts``: one JSON line per checkpoint, then a table."""
    from model.codec import load_codec
    from model.generate import GenerationOptions
    from model.talker import load_talker
    from training.evaluate import DevSet, Transcriber, read_sentences

    sentences = read_sentences(args.sentences)
    if args.limit:
        sentences = sentences[: args.limit]
    codec = load_codec()
    checkpoints = args.checkpoint or [None]
    transcriber = Transcriber.load(settings.assets.whisper, settings.asr.cpu_threads)
    dev = DevSet.voice(sentences, transcriber)
    options = GenerationOptions.from_settings(settings.talker)
    rows = []
    for path in checkpoints:
        talker, trained = load_talker(settings, codec, checkpoint=path)
        per: list[dict] = []
        result = {"checkpoint": str(path or "shipped"), "trained": trained}
        png = args.png if len(checkpoints) == 1 else None
        result |= evaluate_tts(talker, codec, dev, transcriber, options, per, png=png)
        print(json.dumps(result), flush=True)
        rows.append(result)
        if args.transcripts:
            with Path(args.transcripts).open("a") as f:
                for row in per:
                    f.write(json.dumps({"checkpoint": result["checkpoint"]} | row) + "\n")
    columns = ("wer_teacher", "wer_say", "wer_gap", "wer_gap_se", "wer_single_span", "wer_codec")
    columns += ("first_audio_s_median", "rtf_median")
    print(" | ".join(("checkpoint",) + columns))
    for r in rows:
        print(" | ".join([r["checkpoint"]] + [str(r[c]) for c in columns]))
    return 0
