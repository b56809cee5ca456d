"""One reply's audio on its way to the sink: when it started, how far it played, which words were heard.

The reply arrives as audio pieces, each voicing a piece of text (the text generated since the piece
before). The playback position then says which words were heard: the pieces played whole, plus the
words of the piece being played that fit in the part of it already played (words spread evenly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.events import SessionClock
from audio_io.resample import to_mono_16k
from audio_io.sinks import AudioSink


@dataclass(frozen=True)
class Segment:
    """A stretch of the reply's audio and the text it voices."""

    start_s: float  # offset in the reply's audio
    end_s: float
    text: str


def heard_text(segments: list[Segment], position_s: float) -> str:
    """The words of ``segments`` played by ``position_s``: whole segments, then a share of the cut one."""
    words: list[str] = []
    for segment in segments:
        pieces = segment.text.split()
        if position_s >= segment.end_s:
            words += pieces
            continue
        if position_s > segment.start_s and pieces:
            share = (position_s - segment.start_s) / (segment.end_s - segment.start_s)
            words += pieces[: int(share * len(pieces))]
        break
    return " ".join(words)


class Playout:
    """Writes one reply's audio to ``sink`` as it is decoded; can pause, resume and stop at once."""

    def __init__(self, sink: AudioSink, clock: SessionClock, held: bool = False):
        """``held``: queue what is written without playing it until :meth:`resume` (a reply written ahead)."""
        self.sink = sink
        self.clock = clock
        self.rate = sink.sample_rate
        self.segments: list[Segment] = []
        self._chunks: list[np.ndarray] = []  # everything received, at the sink's rate
        self._received = 0  # samples received
        self._sent = 0  # samples handed to the sink (all received ones unless paused)
        self._base = sink.played_seconds  # the sink's played seconds when this reply began
        self._played_before = 0.0  # reply seconds played before the last pause
        self._sent_at_resume = 0  # reply samples already played when the sink was last restarted
        self.paused = held
        self.stopped = False
        self.started_at: float | None = None  # session time of the first sample played

    @property
    def duration_s(self) -> float:
        """Seconds of reply audio received so far."""
        return self._received / self.rate

    def position_s(self) -> float:
        """Seconds of the reply played so far."""
        if self.paused or self.stopped:
            return self._played_before
        played = self.sink.played_seconds - self._base
        return min(self._played_before + played, self.duration_s)

    async def write(self, samples: np.ndarray, sample_rate: int, text: str) -> None:
        """Queue ``samples`` (voicing ``text``) behind what is queued; the first one starts the clock."""
        if self.stopped:
            return
        audio = samples if sample_rate == self.rate else to_mono_16k(samples, sample_rate)
        audio = np.asarray(audio, dtype=np.float32)
        if not len(audio):
            if text and self.segments:  # text with no audio of its own: voiced by the piece before
                last = self.segments[-1]
                self.segments[-1] = Segment(last.start_s, last.end_s, last.text + text)
            return
        start = self.duration_s
        self._chunks.append(audio)
        self._received += len(audio)
        self.segments.append(Segment(start, self.duration_s, text))
        if not self.paused:
            await self._send()

    async def _send(self) -> None:
        pending = self._samples()[self._sent : self._received]
        if len(pending):
            if self.started_at is None:
                self.started_at = self.clock.now()
            self._sent = self._received
            await self.sink.write(pending)

    def _samples(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, np.float32)

    def pause(self) -> float:
        """Stop the sound now, keeping the rest to resume; returns the position."""
        if not self.paused and not self.stopped:
            self._played_before = self.position_s()
            self.sink.stop()
            self.paused = True
        return self._played_before

    async def resume(self) -> None:
        """Play on from where :meth:`pause` cut (a false interruption: a cough, an "mhm")."""
        if not self.paused or self.stopped:
            return
        self.paused = False
        self._base = self.sink.played_seconds
        self._sent = round(self._played_before * self.rate)
        await self._send()

    def hold_at(self, position_s: float) -> float:
        """Pause, trusting a listener that reports having heard only ``position_s`` (a client with its own buffer)."""
        self.pause()
        self._played_before = min(self._played_before, max(0.0, position_s))
        return self._played_before

    def stop(self) -> float:
        """Barge-in: cut the sound for good; returns the position played."""
        position = self.pause()
        self.stopped = True
        return position

    def heard(self, position_s: float | None = None) -> str:
        """The reply's words heard by ``position_s`` (default: now)."""
        return heard_text(self.segments, self.position_s() if position_s is None else position_s)

    @property
    def text(self) -> str:
        """All the text received with audio so far."""
        return "".join(s.text for s in self.segments).strip()

    async def drain(self) -> bool:
        """Wait until everything received has played; False if paused or stopped meanwhile."""
        while not (self.paused or self.stopped):
            await self.sink.drain()
            if self.paused or self.stopped:
                return False
            if self.position_s() >= self.duration_s - 1e-6:
                return True
        return False
