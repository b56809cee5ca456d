"""Typed hearing events: what the listen pipeline tells the rest of the agent (Pipecat-style frames)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class HearingEvent:
    """Something heard at ``t`` seconds on the source clock."""

    kind: ClassVar[str] = "event"  # the "event" value in JSON
    t: float  # source-clock time the event refers to (speech edges) or was produced at (the rest)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"event": kind, "t": seconds rounded to ms, ...}``."""
        return {"event": self.kind, "t": round(self.t, 3)}


@dataclass(frozen=True)
class SpeechStarted(HearingEvent):
    """The user started speaking; ``t`` is the true start of speech."""

    kind: ClassVar[str] = "speech_start"


@dataclass(frozen=True)
class SpeechEnded(HearingEvent):
    """The user stopped speaking (perhaps only for a pause); ``t`` is the true end of speech."""

    kind: ClassVar[str] = "speech_end"


@dataclass(frozen=True)
class PartialTranscript(HearingEvent):
    """A hypothesis of the turn so far; ``stable`` is a prefix of ``text`` that will not change."""

    kind: ClassVar[str] = "partial"
    text: str  # the whole hypothesis: stable prefix + the latest tail
    stable: str  # committed words, never revised by later partials of the same turn

    def to_json(self) -> dict[str, Any]:
        """Base keys plus ``text`` and ``stable``."""
        return {**super().to_json(), "text": self.text, "stable": self.stable}


@dataclass(frozen=True)
class TurnScored(HearingEvent):
    """The turn so far was transcribed and scored after a speech end; ``t`` is when that was known."""

    kind: ClassVar[str] = "turn_scored"
    speech_end: float  # the speech end it was scored at (source clock)
    text: str  # the transcript so far
    probability: float  # P(end of turn | text)
    wait: float  # seconds of silence after ``speech_end`` that will end the turn

    def to_json(self) -> dict[str, Any]:
        """Base keys plus ``speech_end``, ``text``, ``probability`` and ``wait``."""
        return {
            **super().to_json(),
            "speech_end": round(self.speech_end, 3),
            "text": self.text,
            "probability": round(self.probability, 4),
            "wait": round(self.wait, 3),
        }


@dataclass(frozen=True)
class EndOfTurn(HearingEvent):
    """The user finished their turn; ``text`` is its final transcript."""

    kind: ClassVar[str] = "end_of_turn"
    text: str  # final transcript of the whole turn (pauses included)
    probability: float  # P(end of turn | transcript) from the LLM
    silence: float  # seconds of silence after the last speech when the turn was declared over

    def to_json(self) -> dict[str, Any]:
        """Base keys plus ``text``, ``probability`` and ``silence``."""
        return {
            **super().to_json(),
            "text": self.text,
            "probability": round(self.probability, 4),
            "silence": round(self.silence, 3),
        }
