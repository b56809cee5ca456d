"""Keeping the agent's own voice out of what it hears: a one-tap echo canceller on the microphone.

A microphone near the speaker picks up the agent's reply, a little late and quieter. For each
microphone frame the canceller finds, in what the agent played over the last ``max_delay_s``, the
delay whose copy best explains the frame, and subtracts that copy scaled by its least-squares
gain. Hearing (VAD, whisper) then runs on what is left: the user's voice, not the agent's, so the
agent's echo cannot barge in on it. One delay and one gain per frame model a direct path, not a
reverberant room; with real devices, headphones or the system's echo canceller do better.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np

from audio_io.frames import SAMPLE_RATE, AudioFrame
from audio_io.sources import AudioSource

QUIET = 1e-4  # reference energy per sample below which the agent is silent: nothing to cancel


class EchoCanceller:
    """Subtracts the best-fitting delayed copy of the played audio from each microphone frame."""

    def __init__(self, played: Callable[[int, int], np.ndarray], max_delay_s: float = 0.25):
        self.played = played  # played(begin, end): the agent's audio over those 16 kHz session samples
        self.max_delay = round(max_delay_s * SAMPLE_RATE)  # longest echo path considered

    def process(self, frame: AudioFrame) -> AudioFrame:
        """``frame`` less the agent's echo."""
        mic = np.asarray(frame.samples, dtype=np.float32)
        n = len(mic)
        begin = round(frame.t * SAMPLE_RATE)
        reference = self.played(begin - self.max_delay, begin + n)
        if n == 0 or float(np.mean(reference**2)) < QUIET:
            return frame
        # corr[k] = <mic, reference[k : k + n]>: window k is the copy delayed by max_delay - k samples.
        corr = np.correlate(reference, mic, mode="valid")
        squares = np.concatenate([[0.0], np.cumsum(reference.astype(np.float64) ** 2)])
        energy = squares[n:] - squares[:-n]
        fit = np.where(energy > QUIET * n, corr**2 / np.maximum(energy, 1e-12), 0.0)
        k = int(np.argmax(fit))
        if energy[k] <= QUIET * n:
            return frame
        gain = corr[k] / energy[k]
        residual = mic - gain * reference[k : k + n]
        return AudioFrame(residual.astype(np.float32), frame.t)


class EchoCancelledSource(AudioSource):
    """``source`` with the agent's echo removed from every frame; same clock, same pacing."""

    def __init__(self, source: AudioSource, canceller: EchoCanceller):
        self.source = source
        self.canceller = canceller
        self.realtime = getattr(source, "realtime", True)  # hearing stamps events as the source is paced

    def now(self) -> float:
        """The source's clock."""
        return self.source.now()

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """The source's frames, echo removed."""
        async for frame in self.source.frames():
            yield self.canceller.process(frame)

    async def close(self) -> None:
        """Close the source."""
        await self.source.close()
