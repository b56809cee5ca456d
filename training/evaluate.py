"""Codec evaluation: round trips of files, and intelligibility/fidelity/speed on the dev sentences."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audio_io.frames import SAMPLE_RATE
from model.codec import SpeechCodec, load_codec
from training.synth import DEV_SENTENCES, read_sentence_file


def roundtrip(codec: SpeechCodec, audio: np.ndarray) -> tuple[np.ndarray, dict]:
    """Encode and decode 16 kHz mono ``audio``; return the resynthesis (trimmed to the input) and stats."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    t0 = time.perf_counter()
    codes = codec.encode(x)
    t1 = time.perf_counter()
    out = codec.decode(codes)[0, : len(audio)].cpu().numpy()
    t2 = time.perf_counter()
    stats = {
        "frames": int(codes.shape[1]),
        "frame_rate": codec.frame_rate,
        "codes_per_frame": codec.groups,
        "bitrate_bps": round(codec.bitrate, 2),
        "encode_s": round(t1 - t0, 4),
        "decode_s": round(t2 - t1, 4),
    }
    return out, stats


def run_roundtrip(input_path: str, output_path: str, checkpoint: str | None = None) -> int:
    """``ttt codec roundtrip IN OUT``: any sample rate in, 16 kHz mono WAV out, one JSON line printed."""
    import soundfile as sf

    from audio_io.resample import read_audio

    audio = read_audio(input_path)
    codec = load_codec(checkpoint)
    out, stats = roundtrip(codec, audio)
    Path(output_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(Path(output_path).expanduser()), np.clip(out, -1, 1), SAMPLE_RATE)
    print(json.dumps(stats))
    return 0


# --- dev-set evaluation --------------------------------------------------------------------


def mel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of natural-log mel spectrograms (nats), over the common length."""
    from model.codec.dsp import log_mel

    n = min(len(a), len(b)) // 160 * 160
    ma = log_mel(torch.from_numpy(a[:n].astype(np.float32))[None])
    mb = log_mel(torch.from_numpy(b[:n].astype(np.float32))[None])
    return float((ma - mb).abs().mean())


@torch.inference_mode()
def copy_synthesis(codec: SpeechCodec, audio: np.ndarray) -> np.ndarray:
    """``audio``'s own log-mel back to a waveform (vocoder, or Griffin-Lim): the codes are skipped."""
    from model.codec.dsp import log_mel

    x = codec.pad(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None])
    return codec.waveform(log_mel(x))[0, : len(audio)].cpu().numpy()


def stream_decode_seconds(codec: SpeechCodec, codes: torch.Tensor, chunk: int) -> float:
    """Seconds to decode ``codes`` [F, G] through the streaming decoder, ``chunk`` frames per push."""
    dec = codec.stream_decoder()
    t0 = time.perf_counter()
    for i in range(0, codes.shape[0], chunk):
        dec.push(codes[i : i + chunk])
    dec.flush()
    return time.perf_counter() - t0


@dataclass
class Transcriber:
    """whisper tiny.en through faster-whisper (greedy), for WER."""

    model: object

    @classmethod
    def load(cls, override: str | None = None, threads: int = 2) -> Transcriber:
        """Load the packaged tiny.en (or ``override``)."""
        from faster_whisper import WhisperModel

        from model.assets import WHISPER, locate

        path = locate(WHISPER, override)
        return cls(WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads))

    def __call__(self, audio: np.ndarray) -> str:
        """Transcript of 16 kHz mono ``audio``."""
        segments, _ = self.model.transcribe(
            audio.astype(np.float32), beam_size=1, language="en", condition_on_previous_text=False
        )
        return " ".join(s.text.strip() for s in segments)


@dataclass
class DevSet:
    """Sentences in the steady teacher's voice (16 kHz) with whisper's transcripts of that audio.

    Built once and shared by every checkpoint an evaluation compares. The steady voice (no
    sampling noise) means every run hears the same audio, so checkpoints compare fairly (with
    noise, the same checkpoint's gap moved between +11.8 and +15.7 points).
    """

    sentences: list[str]
    audio: list[np.ndarray]
    transcripts: list[str] | None  # None when no transcriber was given

    @classmethod
    def voice(cls, sentences: list[str], transcriber: Transcriber | None = None) -> DevSet:
        """Voice ``sentences`` with the steady teacher and transcribe them."""
        from audio_io.resample import to_mono_16k
        from training.teacher import teacher_voice

        voice = teacher_voice(steady=True)
        audio = []
        for text in sentences:
            utt = voice.speak(text)
            audio.append(to_mono_16k(utt.samples, utt.sample_rate))
        transcripts = [transcriber(a) for a in audio] if transcriber is not None else None
        return cls(sentences, audio, transcripts)


def evaluate_codec(
    codec: SpeechCodec,
    dev: DevSet,
    transcriber: Transcriber | None = None,
    png: str | os.PathLike | None = None,
    timing: bool = True,
    per_sentence: list[dict] | None = None,
) -> dict:
    """WER of the teacher's audio and of its resynthesis, mel distance, bitrate and (``timing``) RTFs.

    ``per_sentence``: when given, one record per sentence (text and the three transcripts) is
    appended to it.
    """
    from training.wer import wer_gap, word_error_rate

    hyp_resyn, hyp_copy, dists = [], [], []
    enc_s, dec_s, stream10_s, stream1_s, seconds = 0.0, 0.0, 0.0, 0.0, 0.0
    first_out = None
    for audio in dev.audio:
        out, stats = roundtrip(codec, audio)
        if first_out is None:
            first_out = out
        if timing:
            codes = codec.encode(torch.from_numpy(audio)[None])[0]
            stream10_s += stream_decode_seconds(codec, codes, 10)
            stream1_s += stream_decode_seconds(codec, codes, 1)
        enc_s += stats["encode_s"]
        dec_s += stats["decode_s"]
        seconds += len(audio) / SAMPLE_RATE
        dists.append(mel_distance(audio, out))
        if transcriber is not None:
            hyp_resyn.append(transcriber(out))
            hyp_copy.append(transcriber(copy_synthesis(codec, audio)))
    result = {
        "sentences": len(dev.sentences),
        "audio_s": round(seconds, 2),
        "frame_rate": codec.frame_rate,
        "codes_per_frame": codec.groups,
        "codebook_size": codec.codebook_size,
        "bitrate_bps": round(codec.bitrate, 2),
        "mel_l1": round(statistics.mean(dists), 4),
        "vocoder": "vocos-istft" if codec.config.vocoder else "griffin-lim",
    }
    if timing:
        result["encode_rtf"] = round(enc_s / seconds, 4)
        result["decode_rtf"] = round(dec_s / seconds, 4)
        result["stream_decode_rtf_chunk10"] = round(stream10_s / seconds, 4)
        result["stream_decode_rtf_chunk1"] = round(stream1_s / seconds, 4)
    if transcriber is not None and dev.transcripts is not None:
        result["wer_original"] = round(100 * word_error_rate(dev.sentences, dev.transcripts), 2)
        result["wer_resynth"] = round(100 * word_error_rate(dev.sentences, hyp_resyn), 2)
        gap, gap_se = wer_gap(dev.sentences, dev.transcripts, hyp_resyn)
        result["wer_gap"] = round(100 * gap, 2)
        # paired, over sentences: how firm the gap is (null for one sentence: no spread to measure)
        result["wer_gap_se"] = None if math.isnan(gap_se) else round(100 * gap_se, 2)
        # the teacher's own mel through the vocoder: how much of the gap the vocoder alone causes
        result["wer_vocoder_only"] = round(100 * word_error_rate(dev.sentences, hyp_copy), 2)
        if per_sentence is not None:
            for text, orig, resyn, copy in zip(dev.sentences, dev.transcripts, hyp_resyn, hyp_copy, strict=True):
                per_sentence.append({"text": text, "original": orig, "resynth": resyn, "vocoder_only": copy})
    if png and first_out is not None:
        spectrogram_png(dev.audio[0], first_out, png)
    return result


def spectrogram_png(original: np.ndarray, resynth: np.ndarray, path: str | os.PathLike) -> None:
    """Write log-mel spectrograms of ``original`` (top) and ``resynth`` (bottom) as one PNG."""
    from PIL import Image

    from model.codec.dsp import log_mel

    rows = []
    for audio in (original, resynth):
        n = len(audio) // 160 * 160
        mel = log_mel(torch.from_numpy(audio[:n].astype(np.float32))[None])[0].numpy()
        img = np.clip((mel + 11.5) / 13.0, 0, 1)[::-1]  # low frequencies at the bottom
        rows.append(np.kron(img, np.ones((3, 2))))  # bigger pixels: 80 mels -> 240 px
        rows.append(np.ones((6, rows[-1].shape[1])))
    width = min(r.shape[1] for r in rows)
    canvas = np.concatenate([r[:, :width] for r in rows[:-1]])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((canvas * 255).astype(np.uint8)).save(str(path))


def read_sentences(path: str | os.PathLike | None) -> list[str]:
    """Non-empty lines of the dev sentence file (``path``, or the shared dev set)."""
    return read_sentence_file(path or DEV_SENTENCES, what="dev sentences file", hint="pass --sentences FILE")


def run_eval_codec(args: argparse.Namespace, settings) -> int:
    """``ttt eval codec``: one JSON line of metrics per checkpoint (the dev audio is shared)."""
    torch.set_num_threads(2)
    sentences = read_sentences(args.sentences)
    if args.limit:
        sentences = sentences[: args.limit]
    checkpoints = args.checkpoint or [None]
    codecs = [load_codec(path) for path in checkpoints]  # a bad path fails before the slow part
    transcriber = Transcriber.load(settings.assets.whisper, settings.asr.cpu_threads)
    dev = DevSet.voice(sentences, transcriber)
    for path, codec in zip(checkpoints, codecs, strict=True):
        if args.griffin_lim:
            codec.config.vocoder = False  # same codes and mel, zero-training vocoder: isolates the vocoder
        rows: list[dict] = []
        result = evaluate_codec(codec, dev, transcriber, png=args.png, timing=not args.no_timing, per_sentence=rows)
        name = {"checkpoint": str(path or "shipped")}
        print(json.dumps(name | result), flush=True)
        if args.transcripts:
            with Path(args.transcripts).open("a") as f:
                for row in rows:
                    f.write(json.dumps(name | row) + "\n")
    return 0
