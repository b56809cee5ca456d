"""Scripted stand-ins for the slow parts, for fast events-in/events-out tests of the loop logic.

"Speech" is written as tones: utterance i of a script is a sine at its own frequency lasting
WORD_S per word, so a fake recognizer can tell which words were said, and for how long, from the
samples alone. The real models are tested on real speech in the slow tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np

from agent.asr import Decoding
from agent.listen import Listener
from agent.turn_detector import TurnDetector
from audio_io.frames import SAMPLE_RATE, AudioFrame
from audio_io.sources import AudioSource
from audio_io.vad import StreamingVad

WORD_S = 0.25  # seconds of tone per scripted word
LOUD = 0.01  # RMS above which a chunk is "speech"
WINDOW = 320  # 20 ms analysis windows
BASE_HZ = 300.0  # utterance i sounds at BASE_HZ + STEP_HZ * i
STEP_HZ = 100.0


class EnergyVad(StreamingVad):
    """P(speech) = 1 for a loud chunk, 0 for a quiet one; the hysteresis is the real one."""

    def probability(self, chunk: np.ndarray) -> float:
        """1.0 when the chunk's RMS is above LOUD."""
        return 1.0 if float(np.sqrt(np.mean(chunk**2))) > LOUD else 0.0


class ToneScript:
    """A list of texts; ``speech(i)`` is text i as a tone, ``text_of(freq)`` reads it back."""

    def __init__(self, texts: list[str]):
        self.texts = list(texts)

    def freq(self, i: int) -> float:
        """The tone of text i."""
        return BASE_HZ + STEP_HZ * i

    def speech(self, i: int, amplitude: float = 0.3) -> np.ndarray:
        """Text i voiced as a tone of WORD_S per word (16 kHz float32)."""
        n = round(len(self.texts[i].split()) * WORD_S * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        return (amplitude * np.sin(2 * np.pi * self.freq(i) * t)).astype(np.float32)

    def index_of(self, freq: float) -> int:
        """The text whose tone is nearest ``freq``."""
        return min(range(len(self.texts)), key=lambda i: abs(self.freq(i) - freq))


class ToneAsr:
    """A recognizer of tone speech: each loud segment is read back as the first words of its text."""

    def __init__(self, script: ToneScript):
        self.script = script
        self.calls = 0  # decodes so far

    def transcribe(self, samples: np.ndarray) -> str:
        """The words of the tone segments in ``samples``."""
        return self.decode(samples).text

    def decode(self, samples: np.ndarray) -> Decoding:
        """As :meth:`transcribe`, with fixed speech scores."""
        self.calls += 1
        n = len(samples) // WINDOW
        if n == 0:
            return Decoding("", 1.0, 0.0)
        windows = samples[: n * WINDOW].reshape(n, WINDOW)
        loud = np.sqrt(np.mean(windows**2, axis=1)) > LOUD
        words: list[str] = []
        i = 0
        while i < n:
            if not loud[i]:
                i += 1
                continue
            j = i
            while j < n and loud[j]:
                j += 1
            segment = windows[i:j].reshape(-1)
            spectrum = np.abs(np.fft.rfft(segment))
            freq = float(np.argmax(spectrum)) * SAMPLE_RATE / len(segment)
            text = self.script.texts[self.script.index_of(freq)].split()
            heard = min(len(text), round((j - i) * WINDOW / SAMPLE_RATE / WORD_S))
            words += text[:heard]
            i = j
        text = " ".join(words)
        return Decoding(text, 0.0 if text else 1.0, 0.0)


class ScriptedScorer:
    """P(end of turn | text) from a rule: ``unfinished(text)`` gives 0.02, anything else 0.95."""

    def __init__(self, unfinished: Callable[[str], bool] = lambda text: False):
        self.unfinished = unfinished

    def probability(self, transcript: str) -> float:
        """Low for an unfinished phrase, high otherwise; 0 for nothing."""
        if not transcript.strip():
            return 0.0
        return 0.02 if self.unfinished(transcript) else 0.95


def tone_listener(
    script: ToneScript,
    unfinished: Callable[[str], bool] = lambda text: False,
    likely_speech: bool = False,
    resume_s: float = 0.0,
) -> Listener:
    """A listener on the fakes, with the default VAD and turn settings (no resuming unless ``resume_s``)."""
    scorer = TurnDetector(ScriptedScorer(unfinished))
    return Listener(EnergyVad(), ToneAsr(script), scorer, 300, likely_speech, resume_s)


def place(pieces: list[tuple[float, np.ndarray]], duration: float) -> np.ndarray:
    """Audio of ``duration`` seconds with each (start, samples) piece placed at its start."""
    out = np.zeros(round(duration * SAMPLE_RATE), np.float32)
    for start, samples in pieces:
        begin = round(start * SAMPLE_RATE)
        out[begin : begin + len(samples)] += samples[: len(out) - begin]
    return out


class ChunkedSource(AudioSource):
    """An array streamed as fast as it is read, in frames of ``frame_samples`` (any size)."""

    def __init__(self, samples: np.ndarray, frame_samples: int):
        self.samples = samples
        self.frame_samples = frame_samples
        self.realtime = False
        self._now = 0.0

    def now(self) -> float:
        """End of the last frame delivered."""
        return self._now

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """The frames, in order."""
        for offset in range(0, len(self.samples), self.frame_samples):
            frame = AudioFrame(self.samples[offset : offset + self.frame_samples], offset / SAMPLE_RATE)
            self._now = frame.end
            await asyncio.sleep(0)
            yield frame


AGENT_HZ = 2500.0  # the fake agent's voice: a tone no scripted user utterance uses
WORD_AUDIO_S = 0.3  # seconds of agent audio per word


def babble(seconds: float, seed: int) -> np.ndarray:
    """Speech-like noise: low-passed (coloured, as a voice is), in syllables of about 4 a second."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    white = rng.standard_normal(n)
    coloured = np.empty(n)
    acc = 0.0
    for i, x in enumerate(white):  # one-pole low-pass: most energy below 1 kHz
        acc = 0.9 * acc + x
        coloured[i] = acc
    t = np.arange(n) / SAMPLE_RATE
    syllables = np.clip(np.sin(2 * np.pi * (4 + rng.uniform(-1, 1)) * t + rng.uniform(0, 6)), 0, None)
    return (0.05 * coloured * syllables).astype(np.float32)


def room(delay_s: float, seed: int, gain: float = 0.5, tail_s: float = 0.06) -> np.ndarray:
    """An impulse response: ``delay_s`` of flight, then an exponentially decaying reverberant tail."""
    rng = np.random.default_rng(seed)
    taps = np.zeros(round((delay_s + tail_s) * SAMPLE_RATE))
    start = round(delay_s * SAMPLE_RATE)
    tail = rng.standard_normal(len(taps) - start) * np.exp(-np.arange(len(taps) - start) / (0.015 * SAMPLE_RATE))
    tail[0] = 3.0  # the direct path
    taps[start:] = gain * tail / np.sqrt(np.sum(tail**2))
    return taps


class FakeVoice:
    """A voice on the session clock: ``think_s`` before the first word, then one word (text and a tone) at a time.

    ``answer(messages)`` picks the reply text; each word takes ``word_s`` of compute and sounds for WORD_AUDIO_S.
    """

    def __init__(
        self,
        clock,
        answer: Callable[[list[dict]], str],
        think_s: float = 0.3,
        word_s: float = 0.05,
    ):
        self.clock = clock
        self.answer = answer
        self.think_s = think_s
        self.word_s = word_s
        self.prompts: list[list[dict]] = []  # the messages of every reply asked for
        self.cancelled = 0  # replies that stopped because their cancel event was set
        self.primed: list[list[dict]] = []  # the messages of every prime asked for

    def word_audio(self) -> np.ndarray:
        """One word of the agent's voice."""
        t = np.arange(round(WORD_AUDIO_S * SAMPLE_RATE)) / SAMPLE_RATE
        return (0.2 * np.sin(2 * np.pi * AGENT_HZ * t)).astype(np.float32)

    async def _speak(self, text: str, cancel) -> AsyncIterator:
        import torch

        from model.generate import AudioChunk, TextDelta

        await self.clock.wait_until(self.clock.now() + self.think_s)
        try:
            for word in text.split():
                if cancel.is_set():
                    self.cancelled += 1
                    return
                yield TextDelta(" " + word)
                yield AudioChunk(torch.zeros(0, 1, dtype=torch.long), self.word_audio(), SAMPLE_RATE)
                await self.clock.wait_until(self.clock.now() + self.word_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def prime(self, messages: list[dict]) -> None:
        """Note the prompt to prime (a fake has no cache)."""
        self.primed.append([dict(m) for m in messages])

    def reply(self, messages: list[dict], cancel) -> AsyncIterator:
        """Answer ``messages``."""
        self.prompts.append([dict(m) for m in messages])
        return self._speak(self.answer(messages), cancel)

    def say(self, text: str, cancel) -> AsyncIterator:
        """Voice ``text``."""
        return self._speak(text, cancel)


def loud_runs(audio: np.ndarray, threshold: float = 0.05, gap_s: float = 0.03) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches louder than ``threshold``, gaps shorter than ``gap_s`` bridged."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    runs: list[tuple[float, float]] = []
    for index in loud:
        t = index / SAMPLE_RATE
        if runs and t - runs[-1][1] <= gap_s:
            runs[-1] = (runs[-1][0], t + 1 / SAMPLE_RATE)
        else:
            runs.append((t, t + 1 / SAMPLE_RATE))
    return runs
