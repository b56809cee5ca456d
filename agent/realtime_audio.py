"""Sound over a Realtime WebSocket: the client's microphone as an AudioSource, its loudspeaker as an AudioSink.

On the wire audio is base64 PCM16 mono at 24 kHz (the OpenAI Realtime API's ``audio/pcm``); inside,
the agent hears and speaks 16 kHz float32, so both directions are resampled here, as streams.

Time: the session clock is the audio's own timeline (seconds of microphone audio heard), kept
level with the wall clock. A client that streams in real time sets the pace; a client that
stops streaming (a muted microphone, or one not started yet) is heard as silence, so a turn
still ends; a client that sends faster than real time is heard at its own pace, as a file read
fast. The protocol's ``audio_start_ms`` / ``audio_end_ms`` count the client's own audio only
(``audio_ms``), so a client can tell which of its samples they mean.

The client plays what it is sent from its own buffer, out of the server's sight. So the sink
sends audio only a little ahead of where the client's playback must be (``lead_s``) and counts
what it sent as played: ``stop()`` then drops only what the client never received, and a
client that flushes its buffer says how much it really played (``conversation.item.truncate``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from audio_io.frames import FRAME_SAMPLES, SAMPLE_RATE, AudioFrame
from audio_io.sinks import AudioSink, playable
from audio_io.sources import AudioSource

WIRE_RATE = 24_000  # Hz of the audio on the wire, both ways
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


class WireAudioError(ValueError):
    """Audio from the client that cannot be used (not base64, not whole PCM16 samples)."""


def decode_pcm16(data: str) -> np.ndarray:
    """Base64 PCM16 little-endian mono -> float32 in [-1, 1]; WireAudioError for anything else."""
    if not isinstance(data, str):
        raise WireAudioError(f"audio must be a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireAudioError(f"audio is not valid base64 ({exc})") from None
    if len(raw) % 2:
        raise WireAudioError(f"audio must be whole 16-bit samples; got {len(raw)} bytes, an odd number")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def encode_pcm16(samples: np.ndarray) -> str:
    """float32 in [-1, 1] -> base64 PCM16 little-endian."""
    pcm = np.clip(np.round(np.asarray(samples, np.float32) * 32767.0), -32768, 32767).astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def _resampler(source_rate: int, target_rate: int):  # noqa: ANN202 - soxr's stream type
    import soxr

    return soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")


@dataclass(frozen=True)
class Mark:
    """A client request that must be handled in order with the audio before it (commit, clear)."""

    kind: str  # "commit" or "clear"


class FillerFrame(AudioFrame):
    """Silence the client did not send: it stopped streaming, and the turn detector must still hear time pass."""


class StreamSource(AudioSource):
    """The client's microphone: 24 kHz samples pushed in, 16 kHz frames (and marks) out, in order."""

    realtime = True  # live: events are stamped when they happen

    def __init__(self, stall_s: float = 0.25, max_queued_s: float = 30.0):
        self.stall_s = stall_s  # without audio for this long, the client is heard as silence
        self.max_queued_s = max_queued_s  # audio sent ahead of the hearing beyond this is refused (memory)
        self._origin = time.monotonic()  # the session's start on the wall clock
        self._queue: asyncio.Queue[AudioFrame | Mark | None] = asyncio.Queue()
        self._resample = _resampler(WIRE_RATE, SAMPLE_RATE)
        self._pending = np.zeros(0, np.float32)  # 16 kHz samples short of a whole frame
        self._framed_until = 0.0  # audio time of the end of the last frame queued
        self._heard_until = 0.0  # audio time of the end of the last frame handed to the hearing
        self._fillers: list[tuple[float, float]] = []  # (session time, seconds) of the silence filled in
        self.received_s = 0.0  # seconds of audio the client sent

    def _wall(self) -> float:
        return time.monotonic() - self._origin

    def now(self) -> float:
        """The session time: the audio heard so far, or the wall clock when the client is behind it."""
        return max(self._heard_until, self._wall())

    def audio_ms(self, t: float) -> int:
        """Session time ``t`` as the protocol counts it: milliseconds of the client's own audio before it."""
        filled = sum(min(seconds, max(0.0, t - start)) for start, seconds in self._fillers)
        return max(0, round(1000 * (t - filled)))

    def push(self, samples: np.ndarray) -> None:
        """Audio from the client (24 kHz float32), queued as whole frames; WireAudioError when too far ahead."""
        if self._framed_until - self._heard_until + len(samples) / WIRE_RATE > self.max_queued_s:
            raise WireAudioError(
                f"over {self.max_queued_s:g} s of audio wait to be heard: send it as it is captured (real time)"
            )
        self.received_s += len(samples) / WIRE_RATE
        self._frame(self._resample.resample_chunk(samples))

    def _frame(self, samples16: np.ndarray, filler: bool = False) -> None:
        self._pending = np.concatenate([self._pending, samples16])
        kind = FillerFrame if filler else AudioFrame
        while len(self._pending) >= FRAME_SAMPLES:
            frame = kind(self._pending[:FRAME_SAMPLES].copy(), self._framed_until)
            self._pending = self._pending[FRAME_SAMPLES:]
            self._framed_until += FRAME_S
            self._queue.put_nowait(frame)

    def mark(self, kind: str) -> None:
        """Queue a request behind the audio sent before it."""
        self._queue.put_nowait(Mark(kind))

    async def frames(self) -> AsyncIterator[AudioFrame | Mark]:  # type: ignore[override]
        """Frames (and marks) until closed; silence is filled in when the client falls behind the clock."""
        while True:
            try:
                async with asyncio.timeout(self.stall_s):  # not wait_for: it can swallow a cancellation
                    item = await self._queue.get()
            except TimeoutError:
                behind = self._wall() - self._framed_until
                if behind >= self.stall_s:
                    frames = int(behind / FRAME_S)
                    self._fillers.append((self._framed_until, frames * FRAME_S))
                    self._frame(np.zeros(frames * FRAME_SAMPLES, np.float32), filler=True)
                continue
            if item is None:
                return
            if isinstance(item, AudioFrame):
                self._heard_until = item.end
            yield item

    async def close(self) -> None:
        """End the stream (the client went away)."""
        self._queue.put_nowait(None)


class ClientSpeaker(AudioSink):
    """The client's loudspeaker seen from the server: audio is sent at the pace the client plays it.

    ``send`` gets each piece as 24 kHz float32. Sent counts as played (see the module docstring).
    ``muted`` (a text-only session) sends nothing and counts it played at once.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, send: Callable[[np.ndarray], None], lead_s: float = 0.3, piece_s: float = 0.04):
        self.send = send
        self.lead_s = lead_s  # how far ahead of the client's playback audio is sent (its jitter buffer)
        self.piece = round(piece_s * WIRE_RATE)  # samples per message
        self.muted = False
        self._resample = _resampler(SAMPLE_RATE, WIRE_RATE)
        self._queue: deque[np.ndarray] = deque()  # 24 kHz pieces not sent yet
        self._written_s = 0.0  # seconds written, less what stop() dropped
        self._play_end = 0.0  # monotonic time at which the client will have played everything sent
        self._wake = asyncio.Event()
        self._pacer: asyncio.Task | None = None

    def _queued_s(self) -> float:
        return sum(len(piece) for piece in self._queue) / WIRE_RATE

    async def write(self, samples: np.ndarray) -> None:
        """Queue 16 kHz ``samples`` to be sent behind what is queued."""
        audio = playable(samples)
        self._written_s += len(audio) / SAMPLE_RATE
        if not self.muted:
            self._enqueue(self._resample.resample_chunk(audio))

    def _enqueue(self, audio: np.ndarray) -> None:
        for start in range(0, len(audio), self.piece):
            self._queue.append(audio[start : start + self.piece])
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.create_task(self._pace())
        self._wake.set()

    async def _pace(self) -> None:
        while True:
            self._wake.clear()
            ahead = self._play_end - time.monotonic()
            if not self._queue or ahead > self.lead_s:
                timeout = None if not self._queue else ahead - self.lead_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                continue
            piece = self._queue.popleft()
            self._play_end = max(self._play_end, time.monotonic()) + len(piece) / WIRE_RATE
            self.send(piece)

    async def drain(self) -> None:
        """Wait until the client must have played everything written (the resampler's tail included)."""
        tail = self._resample.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resample = _resampler(SAMPLE_RATE, WIRE_RATE)
        if len(tail) and not self.muted:
            self._enqueue(tail)
        while self._queue or self._play_end > time.monotonic():
            await asyncio.sleep(min(0.02, max(0.001, self._play_end - time.monotonic())))

    def stop(self) -> float:
        """Drop what the client was not sent yet; returns the seconds sent."""
        self._written_s -= self._queued_s()
        self._queue.clear()
        self._resample = _resampler(SAMPLE_RATE, WIRE_RATE)
        return self.played_seconds

    @property
    def played_seconds(self) -> float:
        """Seconds sent to the client (on the 16 kHz timeline of what was written)."""
        return max(0.0, self._written_s - self._queued_s())

    async def close(self) -> None:
        """Stop sending."""
        self._queue.clear()
        if self._pacer is not None:
            self._pacer.cancel()
