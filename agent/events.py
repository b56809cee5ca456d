"""The agent's one event vocabulary, and the session clock every event is stamped from.

Every record here is a frozen dataclass with a ``kind`` (its name on the internal bus, the MQTT topic
suffix under ``ttt/<siteId>/`` and the browser message type) and ``t``, seconds on the session clock
(the source's clock, or the virtual clock in tests), so a latency is a difference of two event times.
Audio samples never travel as events. ``to_json`` writes ``{"event": kind, "t": ..., fields...}``
with the fields in camelCase, as Hermes and the browser expect.

Tiers, as Pipecat's: an event whose ``dropped_on_interrupt`` is true is reply data that a barge-in
makes stale (a subscriber that has not read it yet never will); every other event always arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

AgentState = Literal["initializing", "listening", "thinking", "speaking"]  # LiveKit's agent states


def camel(name: str) -> str:
    """``voice_to_voice_s`` -> ``voiceToVoiceS`` (Hermes JSON keys)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    """Something that happened (or was asked for) at ``t`` seconds on the session clock."""

    kind: ClassVar[str] = "event"  # the "event" value in JSON, the bus name and the MQTT topic suffix
    dropped_on_interrupt: ClassVar[bool] = False  # reply data a barge-in makes stale
    t: float  # session-clock time; what it refers to is said per event

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"event": kind, "t": seconds rounded to ms, fieldName: value, ...}``."""
        out: dict[str, Any] = {"event": self.kind, "t": round(self.t, 3)}
        for f in dataclasses.fields(self):
            if f.name != "t":
                out[camel(f.name)] = _json_value(getattr(self, f.name))
        return out


# --- hearing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HearingEvent(Event):
    """Something heard in the user's audio."""


@dataclass(frozen=True)
class SpeechStarted(HearingEvent):
    """The user started speaking; ``t`` is the true start of speech."""

    kind: ClassVar[str] = "speech_start"


@dataclass(frozen=True)
class SpeechLikely(HearingEvent):
    """A speech-like chunk, before the VAD has heard enough to confirm speech; ``t`` is the chunk's start.

    Only reported when asked for (``Listener(likely_speech=True)``): the agent pauses its voice on it,
    so a barge-in is silenced without waiting for the VAD's confirmation.
    """

    kind: ClassVar[str] = "speech_likely"


@dataclass(frozen=True)
class SpeechEnded(HearingEvent):
    """The user stopped speaking (perhaps only for a pause); ``t`` is the true end of speech (no VAD hangover)."""

    kind: ClassVar[str] = "speech_end"


@dataclass(frozen=True)
class PartialTranscript(HearingEvent):
    """A hypothesis of the turn so far; ``stable`` is a prefix of ``text`` that will not change."""

    kind: ClassVar[str] = "partial"
    text: str  # the whole hypothesis: stable prefix + the latest tail
    stable: str  # committed words, never revised by later partials of the same turn


@dataclass(frozen=True)
class TurnTranscribed(HearingEvent):
    """The turn so far was transcribed after a speech end (``t``: when); its ``turn_scored`` follows.

    A reply can be written ahead from here: the score takes one more LLM pass.
    """

    kind: ClassVar[str] = "turn_transcribed"
    speech_end: float  # the speech end it was transcribed at (source clock)
    text: str  # the transcript so far


@dataclass(frozen=True)
class TurnScored(HearingEvent):
    """The turn so far was transcribed and scored after a speech end; ``t`` is when that was known."""

    kind: ClassVar[str] = "turn_scored"
    speech_end: float  # the speech end it was scored at (source clock)
    text: str  # the transcript so far
    probability: float  # P(end of turn | text)
    wait: float  # seconds of silence after ``speech_end`` that will end the turn


@dataclass(frozen=True)
class EndOfTurn(HearingEvent):
    """The user finished their turn (``t``: when that was decided); ``text`` is its final transcript."""

    kind: ClassVar[str] = "end_of_turn"
    text: str  # final transcript of the whole turn (pauses included)
    probability: float  # P(end of turn | transcript) from the LLM
    silence: float  # seconds of silence after the last speech when the turn was declared over
    likelihood: float  # the recognizer's confidence in ``text`` (whisper: exp of its mean token log-probability)


@dataclass(frozen=True)
class TurnResumed(HearingEvent):
    """The user spoke again soon after an end of turn: that turn goes on (``t``: the speech start).

    A reply to it that has not been heard yet is stale; the next end_of_turn's text is the whole turn.
    """

    kind: ClassVar[str] = "turn_resumed"
    text: str  # the transcript the ended turn had: the start of the turn that goes on
    ended_at: float  # when that end of turn was declared


# --- the agent -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentStateChanged(Event):
    """The agent moved from ``old_state`` to ``new_state`` at ``t``."""

    kind: ClassVar[str] = "agent_state_changed"
    old_state: AgentState
    new_state: AgentState


@dataclass(frozen=True)
class ReplyStarted(Event):
    """Generation of reply ``reply_id`` began at ``t`` (to a user turn, or to a say command)."""

    kind: ClassVar[str] = "reply_started"
    reply_id: str  # unique in the session; a say command's id when it came from one
    source: Literal["turn", "say"]  # what the reply answers


@dataclass(frozen=True)
class ReplyTextDelta(Event):
    """New reply text, decided at ``t``."""

    kind: ClassVar[str] = "reply_text_delta"
    dropped_on_interrupt: ClassVar[bool] = True
    reply_id: str
    text: str  # appends to the reply's text so far


@dataclass(frozen=True)
class ReplyFinished(Event):
    """Generation of a reply ended at ``t`` (done, or cancelled by an interruption)."""

    kind: ClassVar[str] = "reply_finished"
    reply_id: str
    text: str  # everything generated (not necessarily heard: see PlaybackFinished)
    interrupted: bool


@dataclass(frozen=True)
class PlaybackStarted(Event):
    """The reply's first sample plays at ``t``."""

    kind: ClassVar[str] = "playback_started"
    reply_id: str


@dataclass(frozen=True)
class PlaybackFinished(Event):
    """The reply stopped playing at ``t``: all of it, or cut by an interruption (LiveKit's shape)."""

    kind: ClassVar[str] = "playback_finished"
    reply_id: str
    position_s: float  # seconds of the reply's audio that were played
    interrupted: bool
    heard_text: str  # the words of the reply that were played before the cut (all of them if not cut)


@dataclass(frozen=True)
class Interruption(Event):
    """The user (or a command) cut the agent off at ``t``: playback stopped, generation and tools cancelled."""

    kind: ClassVar[str] = "interruption"
    reply_id: str
    reason: Literal["user_speech", "command"]
    speech_start: float  # session time the interrupting speech began (``t`` for a command)


@dataclass(frozen=True)
class ToolCallStarted(Event):
    """The model called a tool at ``t``."""

    kind: ClassVar[str] = "tool_call_started"
    call_id: str
    name: str
    arguments: str  # the JSON arguments as the model wrote them


@dataclass(frozen=True)
class ToolCallEnded(Event):
    """A tool call ended at ``t``."""

    kind: ClassVar[str] = "tool_call_ended"
    call_id: str
    name: str
    status: Literal["ok", "error", "timeout", "invalid", "cancelled"]
    output: str  # the result put in the history, or the error message


@dataclass(frozen=True)
class TurnMetrics(Event):
    """Per-turn latencies, published when the reply's first sample played (``t``); seconds on the session clock.

    The stage durations add up: voice_to_voice_s = turn_wait_s + first_text_s + first_audio_s + playout_s.
    """

    kind: ClassVar[str] = "metrics"
    reply_id: str
    user_stopped: float  # the user's speech end (VAD, back-dated past its hangover)
    end_of_turn: float  # the end-of-turn decision
    first_text: float  # the reply's first text token
    first_audio: float  # its first decoded audio
    first_played: float  # its first sample played
    voice_to_voice_s: float  # first_played - user_stopped
    turn_wait_s: float  # end_of_turn - user_stopped
    first_text_s: float  # first_text - end_of_turn
    first_audio_s: float  # first_audio - first_text
    playout_s: float  # first_played - first_audio


@dataclass(frozen=True)
class ErrorEvent(Event):
    """Something failed at ``t`` and the agent went on (Hermes ``hermes/error/<component>``)."""

    kind: ClassVar[str] = "error"
    component: str  # "tools", "mqtt", "voice", "hearing", ...
    message: str


# --- inbound commands (from MQTT, the browser or a test) ------------------------------------------


@dataclass(frozen=True)
class Command(Event):
    """A request to the agent, received at ``t``."""


@dataclass(frozen=True)
class Say(Command):
    """Speak ``text`` as it is (Hermes ``tts/say``); answered by a PlaybackFinished with ``id`` as reply_id."""

    kind: ClassVar[str] = "say"
    text: str
    id: str  # echoed back (Hermes sayFinished)


@dataclass(frozen=True)
class Respond(Command):
    """Reply to the conversation as it stands (a Realtime client's ``response.create``); the reply is ``id``."""

    kind: ClassVar[str] = "respond"
    id: str  # the reply's id (ReplyStarted, PlaybackFinished)


@dataclass(frozen=True)
class Interrupt(Command):
    """Stop speaking now."""

    kind: ClassVar[str] = "interrupt"


@dataclass(frozen=True)
class Mute(Command):
    """Stop hearing the microphone (Hermes ``asr/toggleOff``)."""

    kind: ClassVar[str] = "mute"


@dataclass(frozen=True)
class Unmute(Command):
    """Hear the microphone again (Hermes ``asr/toggleOn``)."""

    kind: ClassVar[str] = "unmute"


# --- the session clock ---------------------------------------------------------------------------


class SessionClock(Protocol):
    """What events are stamped from: the source's clock, or a virtual one (``audio_io.VirtualClock``)."""

    def now(self) -> float:
        """Seconds since the session started."""
        ...

    async def wait_until(self, t: float) -> None:
        """Return once ``now() >= t``."""
        ...


class SourceClock:
    """The clock of a live source (a microphone, a file paced in real time): its ``now()``, slept on in wall time."""

    def __init__(self, source: Any):
        self.source = source  # anything with now(): an audio_io.AudioSource

    def now(self) -> float:
        """The source's time."""
        return float(self.source.now())

    async def wait_until(self, t: float) -> None:
        """Sleep (wall time) until the source's clock reaches ``t``."""
        while (left := t - self.now()) > 0:
            await asyncio.sleep(left)


class MonotonicClock:
    """Seconds since construction on the wall clock (for sessions without a source)."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        """Seconds since the clock was made."""
        return time.monotonic() - self._start

    async def wait_until(self, t: float) -> None:
        """Sleep until ``now() >= t``."""
        await asyncio.sleep(max(0.0, t - self.now()))


class EventBus:
    """Fan-out of events to subscribers, each with its own queue (the loop never waits for a slow one)."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[Event | None]] = []
        self.history: list[Event] = []  # every event published, in order (tests, metrics at exit)

    def subscribe(self) -> asyncio.Queue[Event | None]:
        """A new queue that receives every event published from now on (``None`` when the bus closes)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; an interruption first drops their unread stale reply data."""
        self.history.append(event)
        for queue in self._queues:
            if isinstance(event, Interruption):
                kept = []
                while not queue.empty():
                    item = queue.get_nowait()
                    if item is None or not item.dropped_on_interrupt:
                        kept.append(item)
                for item in kept:
                    queue.put_nowait(item)
            queue.put_nowait(event)

    def close(self) -> None:
        """Tell every subscriber the session is over."""
        for queue in self._queues:
            queue.put_nowait(None)
