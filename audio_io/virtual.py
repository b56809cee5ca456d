"""A virtual microphone and speaker on one clock, for tests and benchmarks without a sound card.

An agent is driven by a scripted conversation and its replies are recorded, deterministically and
faster than real time.

In the default (non-realtime) mode time only moves when the microphone delivers a frame, so a run
gives the same timeline on any machine; ``realtime=True`` ties the clock to the wall clock instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from audio_io.frames import FRAME_SAMPLES, SAMPLE_RATE, AudioError, AudioFrame
from audio_io.resample import to_mono_16k
from audio_io.sinks import AudioSink, playable
from audio_io.sources import AudioSource


class VirtualClock:
    """Seconds since the start of a virtual session, shared by a microphone and a speaker."""

    def __init__(self, realtime: bool = False):
        self.realtime = realtime  # True: follow the wall clock; False: advance only with microphone frames
        self._start = time.monotonic()
        self._t = 0.0  # virtual time (non-realtime mode)
        self._driven = False  # a microphone is streaming and owns the clock's progress
        self._ticked = asyncio.Event()  # replaced on every advance, so waiters re-check the time

    def now(self) -> float:
        """Current time in seconds."""
        return time.monotonic() - self._start if self.realtime else self._t

    def advance(self, seconds: float) -> None:
        """Move virtual time forward (the microphone calls this once per frame)."""
        if seconds < 0:
            raise AudioError(f"a clock cannot go backwards ({seconds} s)")
        self._t += seconds
        self._ticked.set()
        self._ticked = asyncio.Event()

    def drive(self, driven: bool) -> None:
        """Mark whether a microphone is moving the clock; when none is, waiting jumps straight ahead."""
        self._driven = driven
        self._ticked.set()
        self._ticked = asyncio.Event()

    async def wait_until(self, t: float) -> None:
        """Return once ``now() >= t``."""
        if self.realtime:
            await asyncio.sleep(max(0.0, t - self.now()))
            return
        while self._t < t:
            if not self._driven:
                # Nobody will advance time any more (the conversation is over): jump.
                self._t = t
                return
            await self._ticked.wait()


class VirtualMicrophone(AudioSource):
    """Silence, except where scripted 16 kHz mono audio plays; ends ``tail_s`` after the last of it."""

    def __init__(
        self,
        clock: VirtualClock,
        script: list[tuple[float, np.ndarray]] | None = None,
        tail_s: float = 2.0,
    ):
        self.clock = clock
        self.tail_s = tail_s  # silence streamed after the last scripted audio, for the agent to answer
        self._script: list[tuple[int, np.ndarray]] = []  # (start sample, samples), kept sorted
        self._closed = False
        self._delivered = 0  # samples delivered so far
        self._echo: tuple[VirtualSpeaker, int, np.ndarray] | None = None  # (speaker, delay in samples, response)
        for t, samples in script or []:
            self.play_at(t, samples)

    def hear_speaker(
        self, speaker: VirtualSpeaker, delay_s: float = 0.05, gain: float = 0.3, room: np.ndarray | None = None
    ) -> None:
        """Also pick up ``speaker``'s sound, ``delay_s`` late and scaled by ``gain`` (a room's echo path).

        ``room`` is the room's impulse response after the delay (16 kHz; default: one tap, no reverberation).
        """
        response = gain * (np.ones(1) if room is None else np.asarray(room, dtype=np.float64))
        self._echo = (speaker, round(delay_s * SAMPLE_RATE), response)

    def play_at(self, t: float, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Make ``samples`` (mono; resampled when ``sample_rate`` is not 16 kHz) play from time ``t``.

        Audio overlapping other scripted audio is mixed with it. Audio placed in the already
        delivered past is refused (it could never be heard).
        """
        if t < 0:
            raise AudioError(f"scripted audio must start at t >= 0, got {t}")
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioError(f"scripted audio must be mono, shape (n,), got {samples.shape}")
        audio = to_mono_16k(samples, sample_rate)
        start = round(t * SAMPLE_RATE)
        if start < self._delivered:
            raise AudioError(
                f"cannot play audio at {t:.3f} s: the microphone already delivered up to "
                f"{self._delivered / SAMPLE_RATE:.3f} s; schedule it later"
            )
        self._script.append((start, audio))
        self._script.sort(key=lambda item: item[0])

    @property
    def end_time(self) -> float:
        """When the stream ends: the last scripted audio's end plus ``tail_s``."""
        last = max((start + len(a) for start, a in self._script), default=0)
        return last / SAMPLE_RATE + self.tail_s

    def now(self) -> float:
        """The shared clock's time."""
        return self.clock.now()

    def recording(self, duration: float | None = None) -> np.ndarray:
        """What the microphone plays over ``[0, duration)`` (default: what it has delivered)."""
        n = self._delivered if duration is None else round(duration * SAMPLE_RATE)
        return self._render(0, n)

    def _render(self, begin: int, end: int) -> np.ndarray:
        out = np.zeros(max(0, end - begin), np.float32)
        for start, audio in self._script:
            lo, hi = max(begin, start), min(end, start + len(audio))
            if lo < hi:
                out[lo - begin : hi - begin] += audio[lo - start : hi - start]
        if self._echo is not None:
            speaker, delay, response = self._echo
            played = speaker.render(begin - delay - len(response) + 1, end - delay)
            out += np.convolve(played, response, mode="valid").astype(np.float32)
        return out

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Stream frames from t = 0 until ``end_time`` (or until closed)."""
        self._closed = False
        self._delivered = 0
        self.clock.drive(True)
        try:
            while not self._closed:
                end = round(self.end_time * SAMPLE_RATE)  # re-read: play_at may extend the script
                if self._delivered >= end:
                    return
                n = min(FRAME_SAMPLES, end - self._delivered)
                frame = AudioFrame(self._render(self._delivered, self._delivered + n), self._delivered / SAMPLE_RATE)
                if self.clock.realtime:
                    await self.clock.wait_until(frame.end)
                else:
                    # The frame is handed over when its last sample is "captured".
                    self.clock.advance(max(0.0, frame.end - self.clock.now()))
                    await asyncio.sleep(0)
                if self._closed:
                    return
                self._delivered += n
                yield frame
        finally:
            self.clock.drive(False)

    async def close(self) -> None:
        """End the stream after the current frame."""
        self._closed = True
        self.clock.drive(False)


class VirtualSpeaker(AudioSink):
    """A sink that plays in clock time.

    Audio written at ``now`` plays from ``now`` (or after what is queued); ``stop()`` cuts whatever
    the clock has not reached yet.
    """

    def __init__(self, clock: VirtualClock, sample_rate: int = SAMPLE_RATE):
        self.clock = clock
        self.sample_rate = sample_rate
        self.segments: list[tuple[float, np.ndarray]] = []  # (start time, samples) as they (will) play

    def _segment_end(self, start: float, audio: np.ndarray) -> float:
        return start + len(audio) / self.sample_rate

    @property
    def queued_until(self) -> float:
        """Clock time at which everything written so far will have played."""
        return max((self._segment_end(s, a) for s, a in self.segments), default=0.0)

    async def write(self, samples: np.ndarray) -> None:
        """Schedule ``samples`` at the clock's now, or right after what is still queued."""
        audio = playable(samples)
        if len(audio):
            self.segments.append((max(self.clock.now(), self.queued_until), audio))

    async def drain(self) -> None:
        """Wait (in clock time) until everything written has played.

        In non-realtime mode the clock moves with the microphone's frames, so call this from a task
        other than the one consuming them (or after the microphone has ended, when time jumps ahead).
        """
        await self.clock.wait_until(self.queued_until)

    def stop(self) -> float:
        """Cut every segment at the clock's now; returns seconds played."""
        now = self.clock.now()
        kept = []
        for start, audio in self.segments:
            played = int(round((now - start) * self.sample_rate))
            if played > 0:
                kept.append((start, audio[: min(played, len(audio))]))
        self.segments = kept
        return self.played_seconds

    @property
    def played_seconds(self) -> float:
        """Seconds of audio the clock has already moved past."""
        now = self.clock.now()
        total = 0.0
        for start, audio in self.segments:
            total += min(len(audio) / self.sample_rate, max(0.0, now - start))
        return total

    def recording(self, duration: float) -> np.ndarray:
        """The played audio on the clock's 16 kHz timeline over ``[0, duration)``."""
        return self.render(0, round(duration * SAMPLE_RATE))

    def render(self, begin: int, end: int) -> np.ndarray:
        """The played (or scheduled) audio over samples ``[begin, end)`` of the 16 kHz timeline (may start < 0)."""
        out = np.zeros(max(0, end - begin), np.float32)
        for start, audio in self.segments:
            audio16 = audio if self.sample_rate == SAMPLE_RATE else to_mono_16k(audio, self.sample_rate)
            first = round(start * SAMPLE_RATE)
            lo, hi = max(begin, first), min(end, first + len(audio16))
            if lo < hi:
                out[lo - begin : hi - begin] += audio16[lo - first : hi - first]
        return out


def stereo_recording(mic: VirtualMicrophone, speaker: VirtualSpeaker) -> np.ndarray:
    """The conversation as (n, 2) float32 at 16 kHz: left the microphone, right the agent, one clock."""
    duration = max(mic.recording().size / SAMPLE_RATE, speaker.queued_until)
    return np.stack([mic.recording(duration), speaker.recording(duration)], axis=1)
