"""Where the agent's voice goes: speakers, WAV files, memory; each reports what was really played."""

from __future__ import annotations

import asyncio
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from audio_io.frames import SAMPLE_RATE, AudioError
from audio_io.resample import as_float32


def playable(samples: np.ndarray) -> np.ndarray:
    """``samples`` as 1-D float32, checked: a sink must never play NaNs (they are loud clicks or silence)."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioError(f"a sink plays mono audio of shape (n,), got shape {samples.shape}; mix it down first")
    audio = as_float32(samples)
    if not np.isfinite(audio).all():
        raise AudioError("audio to play contains NaN or infinite samples; check the generator that produced it")
    return np.ascontiguousarray(audio)


class AudioSink(ABC):
    """Plays mono float32 audio at ``sample_rate`` and knows how much of it was really heard."""

    sample_rate: int  # Hz of the audio passed to write()

    @abstractmethod
    async def write(self, samples: np.ndarray) -> None:
        """Queue ``samples`` (float32 mono at ``sample_rate``) to play after what is already queued."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until everything written so far has been played."""

    @abstractmethod
    def stop(self) -> float:
        """Barge-in: drop all queued audio at once; return the seconds actually played so far."""

    @property
    @abstractmethod
    def played_seconds(self) -> float:
        """Seconds of audio played so far (since the sink was created)."""

    async def close(self) -> None:  # noqa: B027 - most sinks hold nothing to release
        """Release the device or file."""

    async def __aenter__(self) -> AudioSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class MemorySink(AudioSink):
    """Keeps everything written; ``audio()`` returns it. Playback is instant (played = written)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self._chunks: list[np.ndarray] = []
        self._samples = 0

    async def write(self, samples: np.ndarray) -> None:
        """Append ``samples``."""
        audio = playable(samples)
        self._chunks.append(audio)
        self._samples += len(audio)

    async def drain(self) -> None:
        """Nothing is ever pending."""

    def stop(self) -> float:
        """Nothing is queued, so nothing is dropped."""
        return self.played_seconds

    @property
    def played_seconds(self) -> float:
        """Seconds written."""
        return self._samples / self.sample_rate

    def audio(self) -> np.ndarray:
        """Everything written, concatenated."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)


class WavSink(AudioSink):
    """Writes to a WAV file as audio arrives (16-bit PCM); played = written."""

    def __init__(self, path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16"):
        import soundfile as sf

        self.path = path
        self.sample_rate = sample_rate
        self._samples = 0
        try:
            self._file = sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype=subtype)
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            raise AudioError(f"cannot write WAV file {path} ({exc}); check the folder exists and is writable") from exc

    async def write(self, samples: np.ndarray) -> None:
        """Append ``samples`` to the file."""
        if self._file.closed:
            raise AudioError(f"WavSink {self.path} is closed; create a new sink to write more")
        audio = playable(samples)
        self._file.write(audio)
        self._samples += len(audio)

    async def drain(self) -> None:
        """Flush to disk."""
        if not self._file.closed:
            self._file.flush()

    def stop(self) -> float:
        """Nothing is queued, so nothing is dropped."""
        return self.played_seconds

    @property
    def played_seconds(self) -> float:
        """Seconds written."""
        return self._samples / self.sample_rate

    async def close(self) -> None:
        """Finish the file (its header holds the final length)."""
        if not self._file.closed:
            self._file.close()


class PlayedHistory:
    """What a device played over the last ``keep_s``, on the session's 16 kHz timeline: an echo canceller's reference.

    Blocks arrive from the device's callback stamped with when their first sample reaches the
    loudspeaker. Stamps jitter by a few milliseconds, so a block that starts within
    ``snap_s`` of where the last one ended continues it: the reference stays one unbroken signal.
    """

    def __init__(self, keep_s: float = 2.0, snap_s: float = 0.02):
        self.keep = round(keep_s * SAMPLE_RATE)  # samples kept
        self.snap = round(snap_s * SAMPLE_RATE)
        self._lock = threading.Lock()  # the device thread adds, the event loop renders
        self._blocks: deque[tuple[int, np.ndarray]] = deque()  # (first sample on the timeline, samples)
        self._next: int | None = None  # where the last block ended

    @classmethod
    def of(cls, samples: np.ndarray) -> PlayedHistory:
        """A history of ``samples`` played from time 0, all kept (a recorded reference)."""
        history = cls(keep_s=len(samples) / SAMPLE_RATE + 1.0)
        history.add(samples, 0.0)
        return history

    def add(self, samples: np.ndarray, at_s: float) -> None:
        """``samples`` (16 kHz) reached the loudspeaker from session time ``at_s``."""
        start = round(at_s * SAMPLE_RATE)
        with self._lock:
            if self._next is not None and abs(start - self._next) <= self.snap:
                start = self._next
            self._blocks.append((start, np.array(samples, dtype=np.float32)))
            self._next = start + len(samples)
            while self._blocks and self._blocks[0][0] + len(self._blocks[0][1]) < self._next - self.keep:
                self._blocks.popleft()

    def render(self, begin: int, end: int) -> np.ndarray:
        """The played audio over samples ``[begin, end)`` of the timeline (silence where nothing was played)."""
        out = np.zeros(max(0, end - begin), np.float32)
        with self._lock:
            blocks = list(self._blocks)
        for start, audio in blocks:
            lo, hi = max(begin, start), min(end, start + len(audio))
            if lo < hi:
                out[lo - begin : hi - begin] = audio[lo - start : hi - start]
        return out


class SpeakerSink(AudioSink):
    """Plays through a sound card (sounddevice/PortAudio); counts only samples the device consumed."""

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = SAMPLE_RATE,
        clock: Callable[[], float] | None = None,
    ):
        """``clock`` (the session clock's ``now``, e.g. the microphone's) stamps what is played, for :meth:`render`."""
        from audio_io.sources import _check_device, _sounddevice

        if clock is not None and sample_rate != SAMPLE_RATE:
            raise AudioError(f"a speaker keeps what it played only at {SAMPLE_RATE} Hz, not {sample_rate}")

        sd = _sounddevice("speaker")
        _check_device(sd, device, "output", "speaker")
        self.device = device
        self.sample_rate = sample_rate
        self._lock = threading.Lock()  # the PortAudio thread and the event loop share the queue
        self._queue: deque[np.ndarray] = deque()
        self._offset = 0  # samples of _queue[0] already played
        self._played = 0  # samples the callback really handed to the device
        self._clock = clock
        self.history = PlayedHistory()  # what reached the loudspeaker, when (kept if ``clock`` is given)
        try:
            self._stream = sd.OutputStream(
                device=device, channels=1, dtype="float32", samplerate=sample_rate, callback=self._callback
            )
            self._stream.start()
        except Exception as exc:
            raise AudioError(
                f"no speaker: cannot open output device {device!r} at {sample_rate} Hz ({exc}); pick another "
                "with --set audio.output_device=NAME or use a WAV or virtual sink instead"
            ) from exc

    def _callback(self, outdata: np.ndarray, n: int, time_info: Any, status: Any) -> None:
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            while filled < n and self._queue:
                head = self._queue[0]
                take = min(n - filled, len(head) - self._offset)
                out[filled : filled + take] = head[self._offset : self._offset + take]
                filled += take
                self._offset += take
                if self._offset == len(head):
                    self._queue.popleft()
                    self._offset = 0
            self._played += filled
        out[filled:] = 0.0  # underrun: silence, not counted as played
        if self._clock is not None:
            latency = float(time_info.outputBufferDacTime - time_info.currentTime) if time_info else 0.0
            if latency <= 0:  # some host APIs give no times
                latency = float(self._stream.latency or 0.0) if hasattr(self, "_stream") else 0.0
            self.history.add(out, self._clock() + latency)

    def render(self, begin: int, end: int) -> np.ndarray:
        """What reached the loudspeaker over samples ``[begin, end)`` of the session's 16 kHz timeline."""
        return self.history.render(begin, end)

    async def write(self, samples: np.ndarray) -> None:
        """Queue ``samples`` behind what is already playing."""
        if self._stream is None:
            raise AudioError("this SpeakerSink is closed; create a new one to play more")
        audio = playable(samples)
        if len(audio):
            with self._lock:
                self._queue.append(audio)

    def queued_seconds(self) -> float:
        """Seconds written but not yet played."""
        with self._lock:
            return (sum(len(c) for c in self._queue) - self._offset) / self.sample_rate

    async def drain(self) -> None:
        """Wait until the device has played everything queued."""
        if self._stream is None:
            return
        while True:
            with self._lock:
                if not self._queue:
                    break
            await asyncio.sleep(0.01)
        # The callback has handed the last samples over; the device still needs its output latency.
        if self._stream is not None:
            await asyncio.sleep(float(self._stream.latency or 0.0))

    def stop(self) -> float:
        """Drop the queue; the device stops at its next buffer."""
        with self._lock:
            self._queue.clear()
            self._offset = 0
            return self._played / self.sample_rate

    @property
    def played_seconds(self) -> float:
        """Seconds the device consumed."""
        with self._lock:
            return self._played / self.sample_rate

    async def close(self) -> None:
        """Stop and release the device."""
        self.stop()
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
