"""Hearing: audio frames -> VAD -> streaming ASR -> turn detection -> hearing events.

One asyncio loop consumes the source. Partial transcripts are decoded on a worker thread while
the user speaks. When the VAD says speech ended, the final transcript and P(end of turn) are
computed at once (speculatively: the user may go on), and the turn ends when the silence since
the speech end reaches what that probability requires. Speech resuming first continues the turn.
Speech resuming soon after the end (within ``resume_s`` of the speech end) continues it too, with
a ``turn_resumed`` event: a clause that reads as a whole sentence ("We ran out of milk,") is often
followed after a comma pause by the rest, and the agent drops a reply the user has not heard yet.

Time: every event is stamped on the source clock. A file read faster than real time must not
flatter latency, so compute on the critical path (final decode + P(end of turn)) is awaited
before more frames are read, and its wall time is added to the stamp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent.asr import Recognizer, StreamingTranscriber
from agent.events import (
    EndOfTurn,
    HearingEvent,
    PartialTranscript,
    SpeechEnded,
    SpeechLikely,
    SpeechStarted,
    TurnResumed,
    TurnScored,
    TurnTranscribed,
)
from agent.settings import Settings
from agent.turn_detector import TurnDetector, build_turn_detector
from audio_io.frames import AudioFrame
from audio_io.sources import AudioSource
from audio_io.vad import StreamingVad, VadEvent

log = logging.getLogger("ttt.listen")

PREROLL_S = 0.3  # audio kept before the VAD speech start: whisper needs the onset (and drops short first words without)
FINAL_MARGIN_S = 0.03  # a speculative decode covering the speech end plus this much is the final (< SPECULATE_S)
SPECULATE_S = 0.064  # silence (two VAD chunks) after which the turn so far is decoded speculatively


@dataclass
class _Pending:
    """A turn whose speech ended: waiting for enough silence (or for the user to go on)."""

    end: float  # true end of the speech (source clock)
    text: str  # final transcript of the turn so far
    probability: float  # P(end of turn | text)
    deadline: float  # end + required silence
    ready: float  # when the final transcript and probability were known (source clock)
    likelihood: float  # the recognizer's confidence in ``text``


class ComputeClock:
    """Event times on the source clock, live or charged with compute.

    Live (a microphone, a file paced in real time): an event happens when it is produced, the
    source's ``now()``. Fast (a file read as fast as possible): an event happens at its audio time
    plus the compute on the critical path, as if that compute had run on one worker in real time.
    """

    def __init__(self, source: AudioSource):
        self.source = source
        # Files paced in real time and microphones are live; a file read as fast as possible is not.
        self.live = bool(getattr(source, "realtime", True))
        self.worker_free_at = 0.0  # fast mode: source time until which the worker would still be busy

    def stamp(self, t: float) -> float:
        """Event time: the source clock now when live, else ``t`` (computed from audio and compute)."""
        return max(self.source.now(), t) if self.live else t

    def now(self, audio_t: float) -> float:
        """The time a decision is taken at: the source clock when live, else the audio time ``audio_t``."""
        return self.source.now() if self.live else audio_t

    def worker_job(self, queued_at: float, wall_s: float) -> float:
        """Fast mode: a worker job of ``wall_s`` queued at ``queued_at`` ends then (jobs queue one behind another)."""
        self.worker_free_at = max(queued_at, self.worker_free_at) + wall_s
        return self.worker_free_at

    def critical_path(self, since: float, compute_s: float) -> float:
        """When compute on the critical path, started at ``since``, is done; the worker is busy until then."""
        ready = self.stamp(since + compute_s)
        self.worker_free_at = max(self.worker_free_at, ready)
        return ready


class Listener:
    """Hearing from its parts: a VAD, a recognizer and the turn detector; ``events(source)`` hears a source.

    One source at a time: the VAD's state is the listener's. Build the real parts with
    :meth:`from_settings`; tests inject scripted ones.
    """

    def __init__(
        self,
        vad: StreamingVad,
        asr: Recognizer,
        turns: TurnDetector,
        partial_interval_ms: int = 300,
        likely_speech: bool = False,
        resume_s: float = 0.0,
    ):
        self.vad = vad
        self.asr = asr
        self.turns = turns
        self.partial_interval_ms = partial_interval_ms  # new speech between partial re-decodes
        self.resume_s = resume_s  # speech starting this soon after an ended turn's speech end continues it
        self.likely_speech = likely_speech  # also report SpeechLikely: the first speech-like chunk of a run
        self._eot_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttt-eot")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, likely_speech: bool = False) -> Listener:
        """The silero VAD, whisper and the LLM end-of-turn model, as ``settings`` configures them."""
        from agent.asr import WhisperAsr
        from audio_io.vad import SileroVad
        from model.backbone import load_backbone

        s = settings or Settings()
        vad = SileroVad.from_settings(s)
        asr = WhisperAsr(s.asr, s.assets.whisper)
        backbone = load_backbone(s.assets.llm, s.assets.cache_dir, s.device)
        turns = build_turn_detector(s.turn, backbone)
        return cls(vad, asr, turns, s.asr.partial_interval_ms, likely_speech, s.turn.resume_ms / 1000)

    async def events(self, source: AudioSource) -> AsyncIterator[HearingEvent]:
        """Hear ``source`` until it ends, yielding speech edges, partials and ends of turn."""
        tracker = TurnTracker(self, ComputeClock(source))
        try:
            async for frame in source.frames():
                async for event in tracker.frame(frame):
                    yield event
            async for event in tracker.finish():
                yield event
        finally:
            tracker.close()

    def close(self) -> None:
        """Stop the worker threads."""
        self._eot_worker.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Ended:
    """A turn that ended, while speech starting again would still continue it."""

    speech_end: float  # its last speech end (source clock)
    text: str  # its transcript
    at: float  # when its end of turn was declared


class TurnTracker:
    """The state of hearing one source: the current turn, its transcript and its pending end."""

    def __init__(self, listener: Listener, clock: ComputeClock):
        self.listener = listener
        self.clock = clock
        self.vad = listener.vad
        self.vad.reset()
        self.transcriber = StreamingTranscriber(listener.asr, listener.partial_interval_ms)
        self.preroll: deque[AudioFrame] = deque(maxlen=32)
        self.in_turn = False
        self.turn_start = 0.0  # source time of the turn audio's first sample
        self.pending: _Pending | None = None
        self.last_end = 0.0  # end of the last frame seen
        self.silence_seen = 0.0  # the VAD's silence run when last looked at (to see it cross SPECULATE_S)
        self.candidate_decoded: float | None = None  # fast mode: source time a speculative final was decoded
        self.candidate_ready: float | None = None  # fast mode: ... and scored
        self.last_partial = ""
        self.ended: _Ended | None = None  # the last turn, while speech starting again would continue it
        self.likely = False  # a SpeechLikely was reported for the current run of speech-like chunks

    async def frame(self, frame: AudioFrame) -> AsyncIterator[HearingEvent]:
        """Feed one frame."""
        self.last_end = frame.end
        vad_events = self.vad.process(frame)
        ended = self.ended
        if ended is not None and frame.end - ended.speech_end > self.listener.resume_s and not self.vad.speaking:
            self.ended = None  # too late to go on (and nothing the VAD might still confirm): start afresh
            self.transcriber.reset()
        if self.in_turn or self.ended is not None:
            self.transcriber.push(frame.samples)
        if not self.in_turn:
            self.preroll.append(frame)
        if self.listener.likely_speech:
            if self.vad.speaking and not self.vad.in_speech and not vad_events and not self.likely:
                self.likely = True
                yield SpeechLikely(self.clock.stamp(frame.t))
            elif not self.vad.speaking or vad_events:
                self.likely = False
        for vad_event in vad_events:
            async for event in self._vad_event(vad_event):
                yield event
        if self.in_turn and self.pending is None and self.vad.in_speech:
            await self._maybe_speculate(frame.end)
            async for event in self._partials():
                yield event
        if self.pending is not None:
            event = self._maybe_end_turn(frame.end)
            if event is not None:
                yield event

    async def _vad_event(self, vad_event: VadEvent) -> AsyncIterator[HearingEvent]:
        if vad_event.kind == "speech_start":
            ended = self.ended
            if ended is not None and vad_event.t - ended.speech_end <= self.listener.resume_s:
                self.ended = None
                self.in_turn = True  # the transcriber still holds the turn's audio, silence included
                self.preroll.clear()
                yield SpeechStarted(vad_event.t)
                yield TurnResumed(vad_event.t, ended.text, ended.at)
                return
            if not self.in_turn:
                self._start_turn(vad_event.t)
            self.pending = None  # the user goes on: same turn
            yield SpeechStarted(vad_event.t)
        else:
            yield SpeechEnded(vad_event.t)
            async for event in self._speech_ended(vad_event.t, vad_event.detected_at):
                yield event

    def _start_turn(self, speech_start: float) -> None:
        self.in_turn = True
        self.ended = None
        self.transcriber.reset()
        kept = [f for f in self.preroll if f.end > speech_start - PREROLL_S]
        self.turn_start = kept[0].t if kept else speech_start
        for f in kept:
            self.transcriber.push(f.samples)
        self.preroll.clear()

    async def _maybe_speculate(self, now: float) -> None:
        """Once the user has been silent for SPECULATE_S, decode and score the turn so far."""
        previous, self.silence_seen = self.silence_seen, self.vad.silence_s
        if not previous < SPECULATE_S <= self.silence_seen:
            return
        started = time.perf_counter()
        decoded, scored = self.transcriber.speculate(then=self.listener.turns.least_probability)
        if not self.clock.live:
            # Reading faster than real time: the decode runs while the next frames would arrive;
            # it counts from here (or from when the worker is free), in the end-of-turn stamp if reused.
            await asyncio.wrap_future(decoded)
            self.candidate_decoded = self.clock.worker_job(now, time.perf_counter() - started)
            started = time.perf_counter()
            await asyncio.wrap_future(scored)
            self.candidate_ready = self.clock.worker_job(self.candidate_decoded, time.perf_counter() - started)

    async def _partials(self) -> AsyncIterator[HearingEvent]:
        hypothesis = self.transcriber.take_partial()
        # Only while the user is clearly speaking: a partial started as speech fades would hold
        # the worker when the speculative final is needed.
        if hypothesis is None and self.vad.speaking and self.transcriber.maybe_start_partial() and not self.clock.live:
            # Reading faster than real time: wait for the decode, as real time would have given it
            # time, and remember how long the worker would have been busy.
            started = time.perf_counter()
            hypothesis = await self.transcriber.wait_partial()
            self.clock.worker_job(self.last_end, time.perf_counter() - started)
        if hypothesis is not None and hypothesis.text != self.last_partial:
            self.last_partial = hypothesis.text
            yield PartialTranscript(self.clock.stamp(self.last_end), hypothesis.text, hypothesis.stable)

    async def _speech_ended(self, end: float, detected_at: float) -> AsyncIterator[HearingEvent]:
        """The critical path: the final transcript (reported at once), P(end of turn), then the required silence."""
        started = time.perf_counter()
        self.silence_seen = 0.0
        final = await self.transcriber.final(covered_until=end - self.turn_start + FINAL_MARGIN_S)
        speculated = final.speculative and self.candidate_ready is not None
        # A final decoded now queues behind any partial; a reused one was ready when its decode was.
        since = max(detected_at, self.candidate_decoded if speculated else self.clock.worker_free_at)
        transcribed = self.clock.critical_path(since, time.perf_counter() - started)
        text = final.text
        if text:
            yield TurnTranscribed(transcribed, end, text)
        started = time.perf_counter()
        turns = self.listener.turns
        probability = await asyncio.wrap_future(final.score) if final.score is not None else None
        if probability is None:
            loop = asyncio.get_running_loop()
            probability = (
                await loop.run_in_executor(self.listener._eot_worker, turns.least_probability, final.readings)
                if text
                else 1.0
            )
        since = max(transcribed, self.candidate_ready) if speculated else transcribed
        ready = self.clock.critical_path(since, time.perf_counter() - started)
        wait = turns.required_silence(probability)
        log.debug(
            "speech end %.3f detected %.3f transcribed %.3f ready %.3f (speculative %s) p=%.3f wait %.0f ms %r",
            end,
            detected_at,
            transcribed,
            ready,
            final.speculative,
            probability,
            1000 * wait,
            text,
        )
        self.pending = _Pending(end, text, probability, end + wait, ready, final.likelihood)
        yield TurnScored(ready, end, text, probability, wait)

    def _maybe_end_turn(self, now: float) -> EndOfTurn | None:
        """End the pending turn once its required silence has passed (unless speech seems to resume)."""
        pending = self.pending
        assert pending is not None
        if not self.listener.turns.turn_over(self.clock.now(now) - pending.end, pending.probability):
            return None
        if self.vad.speaking:
            return None  # speech seems to resume: let the VAD decide before cutting the turn
        t = self.clock.stamp(max(pending.deadline, pending.ready))
        resumable = bool(pending.text) and self.listener.resume_s > 0
        self._end_turn(keep_audio=resumable)
        if not pending.text:
            return None  # the VAD heard something whisper did not: a noise, not a turn
        if resumable:
            self.ended = _Ended(pending.end, pending.text, t)
        return EndOfTurn(t, pending.text, pending.probability, t - pending.end, pending.likelihood)

    def _end_turn(self, keep_audio: bool = False) -> None:
        """Close the turn; ``keep_audio`` keeps the transcriber's audio, for a turn that may yet go on."""
        self.in_turn = False
        self.candidate_decoded = self.candidate_ready = None
        self.last_partial = ""
        self.pending = None
        self.ended = None
        if not keep_audio:
            self.transcriber.reset()

    async def finish(self) -> AsyncIterator[HearingEvent]:
        """The source ended: a turn still open ends now."""
        for vad_event in self.vad.flush():
            async for event in self._vad_event(vad_event):
                yield event
        if self.in_turn and self.pending is None:
            yield SpeechEnded(self.last_end)
            async for event in self._speech_ended(self.last_end, self.last_end):
                yield event
        if self.pending is not None:
            pending = self.pending
            t = self.clock.stamp(max(pending.ready, self.last_end))
            self._end_turn()
            if pending.text:
                yield EndOfTurn(t, pending.text, pending.probability, t - pending.end, pending.likelihood)

    def close(self) -> None:
        """Stop the transcriber's worker."""
        self.transcriber.close()


def format_event(event: HearingEvent) -> str:
    """One readable line for an event."""
    line = f"{event.t:8.3f}s  {event.kind:<12s}"
    if isinstance(event, PartialTranscript):
        line += f" {event.stable!s} | {event.text[len(event.stable) :].strip()}"
    elif isinstance(event, TurnScored):
        line += f" P(end)={event.probability:.2f} -> wait {event.wait * 1000:.0f} ms {event.text!r}"
    elif isinstance(event, EndOfTurn):
        line += f" {event.text!r}  (P(end)={event.probability:.2f}, silence {event.silence * 1000:.0f} ms)"
    return line


def run_listen(settings: Settings, input_path: str | None = None, realtime: bool = False, as_json: bool = False) -> int:
    """``ttt listen``: hear a file (as if live) or the microphone, print one line per event."""
    from audio_io.sources import FileSource, MicrophoneSource

    # Open the source first: a bad file is reported before seconds of model loading.
    source = FileSource(input_path, realtime=realtime) if input_path else MicrophoneSource(settings.audio.input_device)
    listener = Listener.from_settings(settings)

    async def main() -> None:
        if input_path is None:
            print("listening... (Ctrl-C to stop)", file=sys.stderr)
        async with source:
            async for event in listener.events(source):
                print(json.dumps(event.to_json()) if as_json else format_event(event), flush=True)

    try:
        asyncio.run(main())
    finally:
        listener.close()
    return 0
