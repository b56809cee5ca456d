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
import dataclasses
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
        resynth.append(transcriber(decode_codes(codec, codes)))
        frames = [s.frames for s in alignment.chunks] if alignment is not None else []
        samples = single_span_samples(talker, codec, text, codes, frames, options)
        # unaligned teacher audio, or nothing voiced: scored as all words missed
        single.append(transcriber(samples) if samples is not None and len(samples) else "")
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


def decode_codes(codec, codes: np.ndarray) -> np.ndarray:
    """16 kHz samples of codec ``codes`` [F, G] (a clip's resynthesis)."""
    return codec.decode(torch.as_tensor(codes.astype(np.int64))[None])[0].cpu().numpy()


def single_span_samples(talker, codec, text: str, codes: np.ndarray, frames: list[int], options) -> np.ndarray | None:
    """The talker's audio for ``text`` with every span predicted from the true spans before it.

    ``codes`` [F, G] are the true frames of the clip and ``frames`` its span lengths, one per chunk
    of ``text``; None when they do not match the text's chunks (an alignment that failed).
    """
    from model.chunks import chunk_tokens
    from model.generate import AudioChunk

    if not frames or len(frames) != len(chunk_tokens(talker.tokenizer, text)) or sum(frames) > len(codes):
        return None
    cuts = np.cumsum([0] + list(frames))
    truth = [torch.as_tensor(codes[a:b].astype(np.int64)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    events = talker.stream([], codec, text=text, options=options, teacher=truth)
    pieces = [e.samples for e in events if isinstance(e, AudioChunk) and len(e.samples)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


class SpeechCheck:
    """The training run's periodic listening test: a few held-out clips voiced and transcribed.

    Each clip is voiced by the talker as its weights are now: free-running from its text
    (``wer_say``, as ``ttt say`` does) and span by span from the true spans before each
    (``wer_single_span``); a talker trained for guidance is heard the same two ways with guidance
    at :data:`GUIDED` too (``*_guided``). ``wer_codec`` is the clips' own codes decoded, the
    ceiling, transcribed once. Clips come from the aligned corpus, so the check needs neither the
    teacher voice nor new audio.
    """

    def __init__(self, codec, items: list, transcriber, options=None):
        from model.generate import GenerationOptions

        self.codec, self.items, self.transcriber = codec, list(items), transcriber
        self.options = options or GenerationOptions()
        self.refs = [item.text for item in self.items]
        self.codec_transcripts = [transcriber(decode_codes(codec, item.codes)) for item in self.items]

    def _heard(self, talker, options) -> tuple[list[str], list[str]]:
        """Transcripts of every clip voiced free-running and span by span with ``options``."""
        from model.say import say

        said, single = [], []
        for item in self.items:
            result = say(talker, self.codec, item.text, options)
            said.append(self.transcriber(result.samples) if len(result.samples) else "")
            frames = [c["frames"] for c in item.chunks]
            samples = single_span_samples(talker, self.codec, item.text, item.codes, frames, options)
            single.append(self.transcriber(samples) if samples is not None and len(samples) else "")
        return said, single

    def __call__(self, talker) -> dict:
        """WERs (percent) of ``talker`` on the clips, beside the codec's; the talker is left as it was found."""
        from training.wer import word_error_rate

        was_training = talker.training
        talker.eval()
        talker.prompt_cache = None  # a cache computed with other weights would be reused
        modes = {"": self.options}
        if talker.config.text_null:
            modes["_guided"] = dataclasses.replace(self.options, guidance=GUIDED)
        heard = {}
        try:
            for suffix, options in modes.items():
                heard[f"say{suffix}"], heard[f"single_span{suffix}"] = self._heard(talker, options)
        finally:
            talker.prompt_cache = None
            talker.train(was_training)
        out = {"speech_clips": len(self.items), "speech_text": self.refs[0] if self.refs else ""}
        for name, hyps in heard.items():
            out[f"wer_{name}"] = round(100 * word_error_rate(self.refs, hyps), 2)
        out["wer_codec"] = round(100 * word_error_rate(self.refs, self.codec_transcripts), 2)
        out |= {f"heard_{name}": hyps[0] if hyps else "" for name, hyps in heard.items()}
        return out


GUIDED = 2.0  # the guidance scale the listening test also tries (talker.guidance; OmniVoice and F5-TTS use 2)


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
