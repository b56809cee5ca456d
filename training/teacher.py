"""The Piper teacher voice: real speech for data synthesis, tests, demos and the cascade baseline."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.assets import PIPER_VOICE, locate

if TYPE_CHECKING:
    from piper import AudioChunk, PiperVoice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    """Synthesised speech and what produced it."""

    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int  # the voice's native rate (22,050 Hz for joe-medium)
    text: str  # the text that was voiced
    phonemes: list[str]  # espeak phonemes, one string per phoneme, sentences joined by " "
    # Piper's own (symbol, samples at sample_rate) in order, every sentence's "^" and "$" included:
    # how long the voice held each phoneme. None when the voice was loaded without alignments.
    timing: list[tuple[str, int]] | None = None


class TeacherVoice:
    """A Piper voice; ``speak(text)`` returns an :class:`Utterance`. Thread-safe for reading."""

    def __init__(
        self,
        voice_path: str | os.PathLike | None = None,
        steady: bool = False,
        threads: int = 0,
        arena: bool = True,
        alignments: bool = False,
    ):
        """Load the voice; ``steady`` turns off Piper's sampling noise, so a text always sounds the same.

        ``threads`` > 0 caps onnxruntime's threads (one voicing process per core wants 1: with the
        default, one thread per core in every process, the processes fight over the cores).
        ``arena=False`` turns off onnxruntime's CPU memory arena, which keeps whatever its longest
        utterance needed (about 50 MB more after a long clause, for good): a long-running agent
        wants flat memory, at about 30 ms more per clause (benchmarks/memory.md).
        ``alignments`` makes :meth:`speak` return Piper's per-phoneme durations too (see :func:`piper_voice`).
        """
        self._voice = piper_voice(voice_path, threads, arena, alignments)
        self.sample_rate: int = self._voice.config.sample_rate
        self.steady = steady  # tests want the same audio on every run; data wants variety
        # whether the session outputs Piper's durations (a second output): asked for and the patch worked
        self.aligned = len(self._voice.session.get_outputs()) > 1

    def speak(self, text: str, length_scale: float | None = None, noise_scale: float | None = None) -> Utterance:
        """Voice ``text``; ``length_scale`` > 1 speaks slower. Raises ValueError on text with nothing to say."""
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale)
        if self.steady:
            config.noise_scale, config.noise_w_scale = 0.0, 0.0
        chunks = list(self._voice.synthesize(text, syn_config=config, include_alignments=self.aligned))
        if not chunks:
            raise ValueError(f"the teacher voice has nothing to say for {text!r}")
        samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        phonemes: list[str] = []
        for i, chunk in enumerate(chunks):
            if i:
                phonemes.append(" ")
            phonemes.extend(chunk.phonemes)
        timing = piper_timing(chunks, len(samples), text) if self.aligned else None
        return Utterance(samples=samples, sample_rate=self.sample_rate, text=text, phonemes=phonemes, timing=timing)


def piper_voice(
    voice_path: str | os.PathLike | None = None, threads: int = 0, arena: bool = True, alignments: bool = False
) -> PiperVoice:
    """The teacher's ``PiperVoice``, its onnxruntime session built here (``PiperVoice.load`` takes no options).

    ``alignments`` patches the model in memory (the file stays as it is) so that the session also
    outputs the samples Piper's duration predictor gave each phoneme id; that needs the ``onnx``
    package. Without it, or when the patch fails, the voice loads unpatched and says why in the log.
    """
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    path = locate(PIPER_VOICE, voice_path)
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    model = aligned_model(path) if alignments else None
    config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(model or str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(config=PiperConfig.from_dict(config), session=session)


def aligned_model(path: Path) -> bytes | None:
    """The voice model at ``path`` with Piper's durations (``w_ceil``) as a second output; None if that fails."""
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError as error:
        log.warning("teacher voice without phoneme timing: %s (pip install onnx)", error)
        return None
    try:
        model = onnx.load(str(path))
        add_alignment_output(model)
        return model.SerializeToString()
    except Exception as error:  # whatever goes wrong costs only the timing
        log.warning("teacher voice without phoneme timing: patching %s failed: %s", path, error)
        return None


def piper_timing(chunks: list[AudioChunk], samples: int, text: str) -> list[tuple[str, int]] | None:
    """Piper's (symbol, samples) over all sentence ``chunks`` of one text, in order.

    None (logged) when a chunk has none (Piper could not map its phonemes to ids) or they do not
    add up to the ``samples`` of audio.
    """
    if any(chunk.phoneme_alignments is None for chunk in chunks):
        log.warning("Piper gave no phoneme timing for %r", text)
        return None
    timing = [(a.phoneme, int(a.num_samples)) for chunk in chunks for a in chunk.phoneme_alignments]
    if sum(n for _, n in timing) != samples:
        log.warning("Piper's phoneme timing for %r covers %d samples of %d", text, sum(n for _, n in timing), samples)
        return None
    return timing


@functools.lru_cache(maxsize=4)
def teacher_voice(
    voice_path: str | None = None, steady: bool = False, threads: int = 0, arena: bool = True, alignments: bool = False
) -> TeacherVoice:
    """A process-wide shared :class:`TeacherVoice` (loading takes about a second)."""
    return TeacherVoice(voice_path, steady, threads, arena, alignments)


def write_conversation(
    turns: Sequence[str | Sequence[str]],
    path: str | os.PathLike,
    gap_s: float = 1.5,
    pause_s: float | Sequence[float] = 0.8,
    lead_s: float = 0.5,
    voice: TeacherVoice | None = None,
) -> list[tuple[float, float]]:
    """Voice ``turns`` into one WAV with ``gap_s`` of silence between them.

    A turn is a sentence, or a sequence of fragments voiced ``pause_s`` apart (a pause inside
    the turn; one value per turn when ``pause_s`` is a sequence). Returns each turn's (start, end)
    of speech in seconds, measured on the samples (leading and trailing near-silence of each
    synthesis trimmed), so latencies can be measured against them.
    """
    import soundfile as sf

    voice = voice or teacher_voice()
    sr = voice.sample_rate
    pieces = [np.zeros(int(lead_s * sr), np.float32)]
    spans = []
    n = len(pieces[0])
    pauses = [pause_s] * len(turns) if isinstance(pause_s, int | float) else list(pause_s)
    for i, turn in enumerate(turns):
        start = n / sr
        for j, fragment in enumerate([turn] if isinstance(turn, str) else turn):
            if j:
                pieces.append(np.zeros(int(pauses[i] * sr), np.float32))
                n += len(pieces[-1])
            pieces.append(trim_silence(voice.speak(fragment).samples))
            n += len(pieces[-1])
        spans.append((start, n / sr))
        gap = gap_s if i < len(turns) - 1 else max(gap_s, 2.5)  # room for the last turn to end
        pieces.append(np.zeros(int(gap * sr), np.float32))
        n += len(pieces[-1])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.concatenate(pieces), sr)
    return spans


def trim_silence(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold`` (absolute amplitude)."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if len(loud) == 0:
        return samples[:0]
    return samples[loud[0] : loud[-1] + 1]


def voiced_16k(voice: TeacherVoice, text: str) -> np.ndarray:
    """``text`` spoken by ``voice``, leading and trailing silence trimmed, at 16 kHz (what hearing takes)."""
    import soxr

    audio = trim_silence(voice.speak(text).samples)
    return soxr.resample(audio, voice.sample_rate, 16_000).astype(np.float32)
