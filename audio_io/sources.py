"""Where sound comes from: files, arrays and microphones, as async streams of timestamped frames."""

from __future__ import annotations

import asyncio
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from audio_io.frames import FRAME_SAMPLES, SAMPLE_RATE, AudioError, AudioFrame
from audio_io.resample import read_audio, to_mono_16k


class AudioSource(ABC):
    """An async stream of consecutive 16 kHz mono frames, stamped on the source's own clock."""

    @abstractmethod
    def frames(self) -> AsyncIterator[AudioFrame]:
        """Yield consecutive frames of FRAME_SAMPLES samples (the last may be shorter)."""

    @abstractmethod
    def now(self) -> float:
        """The source clock's current time, in seconds (comparable with frame times)."""

    async def close(self) -> None:  # noqa: B027 - sources without a device have nothing to release
        """Stop the stream; a running ``frames()`` ends after its current frame."""

    async def __aenter__(self) -> AudioSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ArraySource(AudioSource):
    """Frames cut from an array, as fast as they are consumed or paced to the wall clock."""

    def __init__(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, realtime: bool = False):
        self.samples = to_mono_16k(samples, sample_rate)
        self.realtime = realtime  # True: deliver each frame when a live microphone would (at its end time)
        self._closed = False
        self._start: float | None = None  # monotonic time of the first frame request (realtime mode)
        self._delivered_until = 0.0  # end time of the last frame handed out

    @property
    def duration(self) -> float:
        """Length of the whole stream in seconds."""
        return len(self.samples) / SAMPLE_RATE

    def now(self) -> float:
        """Wall-clock seconds since streaming started (realtime), else the end of the last frame delivered."""
        if self.realtime and self._start is not None:
            return time.monotonic() - self._start
        return self._delivered_until

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Yield the frames; restartable (each call streams from the beginning)."""
        self._closed = False
        self._start = time.monotonic()
        self._delivered_until = 0.0
        for offset in range(0, len(self.samples), FRAME_SAMPLES):
            if self._closed:
                return
            frame = AudioFrame(self.samples[offset : offset + FRAME_SAMPLES], offset / SAMPLE_RATE)
            if self.realtime:
                # A live microphone hands a frame over only once its last sample is captured.
                await asyncio.sleep(max(0.0, self._start + frame.end - time.monotonic()))
            else:
                await asyncio.sleep(0)  # let other tasks run between frames
            if self._closed:
                return
            self._delivered_until = frame.end
            yield frame

    async def close(self) -> None:
        """Stop streaming."""
        self._closed = True


class FileSource(ArraySource):
    """Frames of an audio file (any format soundfile reads), resampled to 16 kHz mono."""

    def __init__(self, path: str | os.PathLike, realtime: bool = False):
        self.path = path
        super().__init__(read_audio(path), SAMPLE_RATE, realtime)


def _sounddevice(what: str) -> Any:
    """Import sounddevice, turning a missing PortAudio into an AudioError that says what to install."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise AudioError(
            f"no {what}: PortAudio is not installed (apt-get install libportaudio2) or no "
            f"{'input' if what == 'microphone' else 'output'} device is available ({exc}). "
            "Use a file or virtual device instead (see audio_io.FileSource / audio_io.virtual)."
        ) from exc
    return sounddevice


def _check_device(sd: Any, device: int | str | None, kind: str, what: str) -> dict:
    """The device's info dict; AudioError when there is no such (input/output) device."""
    try:
        return sd.query_devices(device, kind=kind)
    except Exception as exc:  # PortAudioError or ValueError, depending on what is missing
        raise AudioError(
            f"no {what}: PortAudio is installed but no {kind} device"
            f"{'' if device is None else f' {device!r}'} is available ({exc}). Plug one in, pick "
            f"another with --set audio.{kind}_device=NAME, or use a file or virtual device instead."
        ) from exc


class MicrophoneSource(AudioSource):
    """Live capture from a sound card (sounddevice/PortAudio) at 16 kHz mono float32.

    If the device refuses 16 kHz, it captures at the device's default rate and resamples in stream.
    Frames are stamped with the capture time of their first sample, in seconds since ``frames()`` began.
    """

    def __init__(self, device: int | str | None = None):
        self._sd = _sounddevice("microphone")
        self.device = device
        info = _check_device(self._sd, device, "input", "microphone")
        try:
            self._sd.check_input_settings(device, channels=1, dtype="float32", samplerate=SAMPLE_RATE)
            self.capture_rate = SAMPLE_RATE
        except Exception:
            self.capture_rate = int(info["default_samplerate"])
        self._start: float | None = None
        self._stream: Any = None
        self._queue: asyncio.Queue | None = None  # wakes frames() when close() is called
        self._closed = False

    def now(self) -> float:
        """Seconds since capture started (0 before it)."""
        return 0.0 if self._start is None else time.monotonic() - self._start

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Capture until closed."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[np.ndarray, float] | None] = asyncio.Queue()
        self._queue = queue
        resampler = None
        if self.capture_rate != SAMPLE_RATE:
            import soxr

            resampler = soxr.ResampleStream(self.capture_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

        def callback(indata: np.ndarray, n: int, time_info: Any, status: Any) -> None:
            # PortAudio's thread: stamp and hand over; everything else happens on the event loop.
            captured = time.monotonic() - n / self.capture_rate - self._start
            loop.call_soon_threadsafe(queue.put_nowait, (indata[:, 0].copy(), captured))

        blocksize = FRAME_SAMPLES * self.capture_rate // SAMPLE_RATE
        self._closed = False
        self._start = time.monotonic()
        try:
            self._stream = self._sd.InputStream(
                device=self.device,
                channels=1,
                dtype="float32",
                samplerate=self.capture_rate,
                blocksize=blocksize,
                callback=callback,
            )
            self._stream.start()
        except Exception as exc:
            raise AudioError(
                f"no microphone: cannot open input device {self.device!r} ({exc}); pick another with "
                "--set audio.input_device=NAME or use a file or virtual device instead"
            ) from exc
        pending = np.zeros(0, np.float32)
        pending_t = 0.0  # capture time of pending[0]
        try:
            while not self._closed:
                item = await queue.get()
                if item is None:
                    break
                block, captured = item
                if resampler is not None:
                    block = resampler.resample_chunk(block)
                if not len(pending):
                    pending_t = captured
                pending = np.concatenate([pending, block])
                while len(pending) >= FRAME_SAMPLES:
                    yield AudioFrame(pending[:FRAME_SAMPLES].copy(), pending_t)
                    pending = pending[FRAME_SAMPLES:]
                    pending_t += FRAME_SAMPLES / SAMPLE_RATE
        finally:
            self._stop_stream()

    def _stop_stream(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None

    async def close(self) -> None:
        """Stop capturing."""
        self._closed = True
        self._stop_stream()
        if self._queue is not None:
            self._queue.put_nowait(None)
