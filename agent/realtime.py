"""One OpenAI Realtime API session (GA dialect) around the agent loop.

The session is an adapter, not a second loop: the client's audio is the agent's microphone
(:class:`StreamSource`), the client's loudspeaker its sink (:class:`ClientSpeaker`), and the
agent's events are translated into server events as they are published. Client events become
loop commands (``Respond``, ``Interrupt``) or history edits.

Mapping, in short:
- hearing: the first speech of a user turn opens a user item (``input_audio_buffer.speech_started``);
  each speech end is a ``speech_stopped``; the stable words of the partials are the transcription
  deltas; the end of turn commits the item (``committed``, ``conversation.item.added``, the
  transcription's ``completed``). With ``turn_detection: null`` the client commits instead, and the
  whole buffer is transcribed then.
- a reply is one response (two or more when it calls a client tool): ``response.created``, then on its
  first words the assistant item and its audio part, ``output_audio_transcript.delta`` as the text
  is written (``output_text.delta`` in a text-only session), ``output_audio.delta`` as the audio goes
  out, and the ``.done`` events and ``response.done`` when it has played out or was cut off.
- barge-in: the loop's own (speech over the reply pauses it, and cuts it if it lasts), and the
  client's: ``conversation.item.truncate`` says how much it really played, which cuts the reply
  there, or rewrites a reply already in the history to the words that were heard.
- client tools (``session.tools``): a call the model makes ends the response with a
  ``function_call`` item; the client's ``function_call_output`` item and its next
  ``response.create`` give the loop the result, and the reply goes on in a new response.

Only GA server events are sent, each with an ``event_id``; bad client events get an ``error``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.dialogue import History
from agent.events import (
    EndOfTurn,
    ErrorEvent,
    Event,
    EventBus,
    HearingEvent,
    Interrupt,
    Interruption,
    PartialTranscript,
    PlaybackFinished,
    ReplyStarted,
    ReplyTextDelta,
    Respond,
    SourceClock,
    SpeechEnded,
    SpeechStarted,
    TurnMetrics,
    TurnScored,
    TurnTranscribed,
)
from agent.listen import ComputeClock, Listener, TurnTracker
from agent.loop import Agent, AgentConfig, Voice
from agent.playback import Playout
from agent.realtime_audio import (
    WIRE_RATE,
    ClientSpeaker,
    FillerFrame,
    Mark,
    StreamSource,
    WireAudioError,
    decode_pcm16,
    encode_pcm16,
)
from agent.tools import Tool, Toolbox, ToolError

log = logging.getLogger("ttt.realtime")

CLIENT_TOOL_TIMEOUT_S = 60.0  # a client's tool may take this long to answer (it may ask its user)
MAX_ERRORS = 8  # bad client events in a row before the connection is closed
MIN_COMMIT_S = 0.1  # a manual commit needs at least this much audio (the API's own minimum)
MAX_COMMIT_S = 300.0  # a manual buffer holds at most this much audio; the rest is refused until a commit
AUDIO_FORMAT = {"type": "audio/pcm", "rate": WIRE_RATE}
DEFAULT_TURN_DETECTION = {"type": "server_vad", "create_response": True, "interrupt_response": True}


class ProtocolError(ValueError):
    """A client event that cannot be used; becomes an ``error`` event with ``code``."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass
class SessionParts:
    """What one session is built from; the models behind them are shared with the other sessions."""

    listener: Listener  # this session's hearing (its own VAD state, the shared recognizer and scorer)
    voice: Voice  # this session's voice (shared weights, scheduled with the other sessions)
    count_tokens: Callable[[dict], int]  # one message's length in tokens
    voice_name: str  # "piper" or "talker", shown as the session's output voice
    system_prompt: str  # default instructions
    max_history_tokens: int
    agent: AgentConfig = field(default_factory=AgentConfig)
    close: Callable[[], None] = lambda: None  # releases the parts' threads


@dataclass
class _Response:
    """One Realtime response: a reply of the loop, or the part of it after a client tool's result."""

    id: str
    reply_id: str
    playout: Playout | None  # the reply's audio on its way out (for truncation)
    metadata: dict | None
    output: list[dict] = field(default_factory=list)  # items, as response.done lists them
    item: dict | None = None  # the assistant message, once it has content
    text: str = ""
    cancel_reason: str | None = None
    done: bool = False


@dataclass
class _Said:
    """An assistant item that was played: where its words are in the history, to truncate them later."""

    response: _Response
    heard: str  # the words the history kept of it
    index: int  # its message's index in the history when it was added
    dropped: int  # the history's trimmed-message count then


@dataclass
class _ClientCall:
    """A function call waiting for the client's output and its next response.create."""

    future: asyncio.Future
    output: str | None = None


class _Tap(EventBus):
    """The agent's bus, also handing each event to the session the moment it is published (in order)."""

    def __init__(self, on_event: Callable[[Event], None]):
        super().__init__()
        self.on_event = on_event

    def publish(self, event: Event) -> None:
        """Publish, then translate."""
        super().publish(event)
        self.on_event(event)


class _ManualBuffer:
    """The audio since the last manual commit, up to MAX_COMMIT_S."""

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.seconds = 0.0
        self.refused = 0  # frames that did not fit

    def add(self, samples: np.ndarray) -> bool:
        """Keep ``samples`` (16 kHz) if they fit; False if the buffer is full."""
        if self.seconds >= MAX_COMMIT_S:
            self.refused += 1
            return False
        self.pieces.append(samples)
        self.seconds += len(samples) / 16_000
        return True

    def audio(self) -> np.ndarray:
        """Everything kept, in one array."""
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)


class RealtimeHearing:
    """The loop's hearing for a session: the Listener's turn tracking, or the client's manual commits."""

    def __init__(self, listener: Listener, session: RealtimeSession):
        self.listener = listener
        self.session = session

    async def events(self, source: StreamSource) -> AsyncIterator[HearingEvent]:  # type: ignore[override]
        """Hearing events of the client's audio, translated for the client as they happen."""
        tracker = TurnTracker(self.listener, ComputeClock(source))
        manual = _ManualBuffer()  # audio since the last commit, without turn detection
        detecting = self.session.turn_detection is not None
        try:
            async for item in source.frames():
                if (self.session.turn_detection is not None) != detecting:  # session.update switched modes
                    detecting = not detecting
                    tracker.close()
                    tracker, manual = TurnTracker(self.listener, ComputeClock(source)), _ManualBuffer()
                if isinstance(item, Mark):
                    if item.kind == "clear":
                        tracker.close()
                        tracker, manual = TurnTracker(self.listener, ComputeClock(source)), _ManualBuffer()
                        self.session.cleared()
                    elif detecting:
                        async for event in tracker.finish():  # the client ends the turn now
                            if self.session.heard(event):
                                yield event
                        tracker.close()
                        tracker = TurnTracker(self.listener, ComputeClock(source))
                    else:
                        audio, manual = manual.audio(), _ManualBuffer()
                        await self.session.commit(audio)
                    continue
                if not detecting:
                    if not isinstance(item, FillerFrame) and not manual.add(item.samples) and manual.refused == 1:
                        self.session.error("input_audio_buffer_full", f"over {MAX_COMMIT_S:g} s uncommitted; commit")
                    continue
                async for event in tracker.frame(item):
                    if self.session.heard(event):
                        yield event
        finally:
            tracker.close()


class RealtimeSession:
    """The protocol state of one connection; ``receive`` takes client messages, ``outbox`` holds server events."""

    def __init__(self, parts: SessionParts, model: str = "ttt"):
        self.parts = parts
        self.model = model
        self.sid = secrets.token_hex(6)
        self.outbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self._ids = itertools.count(1)
        self.instructions = parts.system_prompt
        self.output_modalities = ["audio"]
        self.turn_detection: dict | None = dict(DEFAULT_TURN_DETECTION)
        self.tools: list[dict] = []
        self.tool_choice = "auto"
        self.errors = 0  # bad events in a row
        self.source = StreamSource()
        self.sink = ClientSpeaker(self._audio_out)
        self.history = History(parts.system_prompt, parts.max_history_tokens, parts.count_tokens)
        self.agent = Agent(
            RealtimeHearing(parts.listener, self),
            parts.voice,
            self.sink,
            SourceClock(self.source),
            self.history,
            parts.agent,
            bus=_Tap(self._on_agent_event),
        )
        self.metrics: list[TurnMetrics] = []  # each answered turn's latencies (server side)
        self._user_item: str | None = None  # the user item being spoken
        self._user_said = ""  # its transcription deltas so far
        self._last_item: str | None = None
        self._responses: dict[str, _Response] = {}  # reply id -> its response now (a reply spans several with tools)
        self._metadata: dict[str, dict | None] = {}  # reply id -> the metadata its response.create gave
        self._said: dict[str, _Said] = {}  # assistant item id -> where it is in the history
        self._calls: dict[str, _ClientCall] = {}  # call id -> the call waiting for the client
        self._handlers: dict[str, Callable[[dict], Any]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": lambda event: self.source.mark("commit"),
            "input_audio_buffer.clear": lambda event: self.source.mark("clear"),
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # --- out ---------------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        """A fresh id, unique in this session (``event_…``, ``item_…``, ``resp_…``, ``call_…``)."""
        return f"{prefix}_{self.sid}{next(self._ids):05d}"

    def emit(self, type_: str, **fields: Any) -> None:
        """Queue a server event."""
        self.outbox.put_nowait({"type": type_, "event_id": self.new_id("event"), **fields})

    def error(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        """Queue an ``error`` event about a client event."""
        kind = "server_error" if code.startswith("server") else "invalid_request_error"
        body = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        self.emit("error", error=body)

    def session_object(self) -> dict:
        """The session as session.created / session.updated describe it."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{self.sid}",
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": list(self.output_modalities),
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": "inf",
            "audio": {
                "input": {
                    "format": dict(AUDIO_FORMAT),
                    "transcription": {"model": "whisper-tiny.en", "language": "en"},  # what hears it
                    "turn_detection": None if self.turn_detection is None else dict(self.turn_detection),
                    "noise_reduction": None,
                },
                "output": {"format": dict(AUDIO_FORMAT), "voice": self.parts.voice_name, "speed": 1.0},
            },
        }

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Talk until the client goes away (``close``)."""
        self.emit("session.created", session=self.session_object())
        try:
            await self.agent.run(self.source)
        finally:
            self.outbox.put_nowait(None)

    async def close(self) -> None:
        """The client went away: stop hearing and speaking now."""
        await self.source.close()
        await self.sink.close()
        for call in self._calls.values():
            call.future.cancel()
        self.parts.close()

    # --- client events -------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> bool:
        """Handle one client message; False once the client has sent too many bad ones in a row."""
        event_id = None
        try:
            if isinstance(message, bytes):
                raise ProtocolError("invalid_message", "binary frames are not part of the protocol; send JSON text")
            try:
                event = json.loads(message)
            except json.JSONDecodeError as exc:
                raise ProtocolError("invalid_json", f"the message is not JSON: {exc}") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ProtocolError("invalid_event", "an event is a JSON object with a string 'type'", "type")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            handler = self._handlers.get(event["type"])
            if handler is None:
                known = ", ".join(sorted(self._handlers))
                raise ProtocolError("unknown_event_type", f"unknown event type {event['type']!r}; use one of: {known}")
            handler(event)
        except ProtocolError as exc:
            self.errors += 1
            self.error(exc.code, str(exc), exc.param, event_id)
            return self.errors < MAX_ERRORS
        self.errors = 0
        return True

    def _session_update(self, event: dict) -> None:
        session = _object(event, "session")
        if session.get("type", "realtime") != "realtime":
            raise ProtocolError("invalid_value", "only realtime sessions are served (session.type 'realtime')")
        modalities = session.get("output_modalities", session.get("modalities", self.output_modalities))
        if not isinstance(modalities, list) or not modalities or not set(modalities) <= {"audio", "text"}:
            raise ProtocolError("invalid_value", "output_modalities must be ['audio'] or ['text']", "output_modalities")
        audio = session.get("audio") or {}
        if not isinstance(audio, dict):
            raise ProtocolError("invalid_value", "session.audio must be an object", "audio")
        audio_in = audio.get("input") or {}
        audio_out = audio.get("output") or {}
        for where, config in (("input", audio_in), ("output", audio_out)):
            wire = config.get("format") if isinstance(config, dict) else None
            if wire is not None and (wire.get("type") != "audio/pcm" or wire.get("rate", WIRE_RATE) != WIRE_RATE):
                raise ProtocolError(
                    "unsupported_format", f"audio {where} format must be audio/pcm at 24000 Hz, got {wire}", where
                )
        turn = self.turn_detection
        if "turn_detection" in audio_in:
            turn = audio_in["turn_detection"]
        elif "turn_detection" in session:  # the beta dialect's flat shape
            turn = session["turn_detection"]
        if turn is not None:
            if not isinstance(turn, dict) or turn.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
                raise ProtocolError("invalid_value", "turn_detection must be server_vad, semantic_vad or null")
            turn = {**DEFAULT_TURN_DETECTION, **turn}
        tools = session.get("tools", self.tools)
        tool_choice = session.get("tool_choice", self.tool_choice)
        if tool_choice not in ("auto", "none", "required"):
            raise ProtocolError("invalid_value", "tool_choice must be auto, none or required", "tool_choice")
        toolbox = self._client_toolbox(tools if tool_choice != "none" else [])
        instructions = session.get("instructions", self.instructions)
        if not isinstance(instructions, str):
            raise ProtocolError("invalid_value", "instructions must be a string", "instructions")
        self.instructions, self.output_modalities, self.turn_detection = instructions, modalities, turn
        self.tools, self.tool_choice = list(tools), tool_choice
        self.agent.tools = toolbox
        self.history.system_prompt = toolbox.system_prompt(instructions) if toolbox else instructions
        self.sink.muted = "audio" not in modalities
        self.emit("session.updated", session=self.session_object())

    def _client_toolbox(self, tools: Any) -> Toolbox:
        if not isinstance(tools, list):
            raise ProtocolError("invalid_value", "tools must be a list", "tools")
        made = []
        for spec in tools:
            if not isinstance(spec, dict) or spec.get("type", "function") != "function":
                raise ProtocolError("invalid_value", "each tool is {type: 'function', name, description, parameters}")
            name, parameters = spec.get("name"), spec.get("parameters") or {"type": "object", "properties": {}}
            if not isinstance(name, str) or not name or not isinstance(parameters, dict):
                raise ProtocolError("invalid_value", "a tool needs a name and a JSON-schema object as parameters")
            made.append(
                Tool(name, str(spec.get("description", "")), parameters, self._remote(name), CLIENT_TOOL_TIMEOUT_S)
            )
        try:
            return Toolbox(made)
        except ToolError as exc:
            raise ProtocolError("invalid_value", str(exc), "tools") from None

    def _append(self, event: dict) -> None:
        try:
            samples = decode_pcm16(event.get("audio"))
        except WireAudioError as exc:
            raise ProtocolError("invalid_audio", str(exc), "audio") from None
        try:
            self.source.push(samples)
        except WireAudioError as exc:
            raise ProtocolError("input_audio_buffer_overflow", str(exc), "audio") from None

    def _item_create(self, event: dict) -> None:
        item = _object(event, "item")
        kind = item.get("type")
        item_id = item.get("id") if isinstance(item.get("id"), str) else self.new_id("item")
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise ProtocolError("invalid_value", "a function_call_output needs a string call_id and output")
            call = self._calls.get(call_id)
            if call is not None:
                call.output = output
            else:  # a call from before this session, or already timed out: the model still reads it
                self.history.add("tool", output)
        elif kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise ProtocolError("invalid_value", "a message's role is user, assistant or system", "item.role")
            text = _message_text(item)
            self.history.add(role, text)
        else:
            raise ProtocolError("invalid_value", "conversation.item.create takes a message or a function_call_output")
        self.emit("conversation.item.added", previous_item_id=self._last_item, item={**item, "id": item_id})
        self._last_item = item_id

    def _truncate(self, event: dict) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        if not isinstance(end_ms, int) or end_ms < 0:
            raise ProtocolError("invalid_value", "audio_end_ms must be a non-negative integer", "audio_end_ms")
        playing = [r for r in self._responses.values() if r.item is not None and r.item["id"] == item_id]
        if playing:
            response = playing[0]
            reply = self.agent.reply
            if response.playout is not None and reply is not None and reply.id == response.reply_id:
                response.playout.hold_at(end_ms / 1000)  # still playing here: cut it where the client stopped
                response.cancel_reason = response.cancel_reason or "turn_detected"
                self.agent.send(Interrupt(self.agent.now()))
        elif item_id in self._said:
            said = self._said[item_id]
            index = said.index - (self.history.dropped - said.dropped)
            playout = said.response.playout
            messages = self.history.messages
            if playout is not None and 0 <= index < len(messages) and messages[index]["content"] == said.heard:
                said.heard = playout.heard(end_ms / 1000)
                self.history.cut_reply(index, said.heard)
        else:
            raise ProtocolError("item_not_found", f"no assistant audio item {item_id!r} to truncate", "item_id")
        self.emit("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms)

    def _response_create(self, event: dict) -> None:
        waiting = [call for call in self._calls.values() if call.output is not None and not call.future.done()]
        if waiting:
            for call in waiting:
                call.future.set_result(call.output)
            return
        if self.agent.reply is not None or self._calls:
            raise ProtocolError("conversation_already_has_active_response", "a response is in progress; wait for it")
        options = event.get("response") or {}
        metadata = options.get("metadata") if isinstance(options, dict) else None
        reply_id = self.new_id("reply")
        self._metadata[reply_id] = metadata if isinstance(metadata, dict) else None
        self.agent.send(Respond(self.agent.now(), reply_id))

    def _response_cancel(self, event: dict) -> None:
        reply = self.agent.reply
        if reply is None:
            raise ProtocolError("response_cancel_not_active", "there is no response in progress to cancel")
        if reply.id in self._responses:
            self._responses[reply.id].cancel_reason = "client_cancelled"
        self.agent.send(Interrupt(self.agent.now()))

    # --- hearing -> client ---------------------------------------------------------------------

    def heard(self, event: HearingEvent) -> bool:
        """Tell the client what was heard; whether the loop should see the event too."""
        if isinstance(event, SpeechStarted):
            if self._user_item is None:
                self._user_item, self._user_said = self.new_id("item"), ""
            self.emit(
                "input_audio_buffer.speech_started",
                audio_start_ms=self.source.audio_ms(event.t),
                item_id=self._user_item,
            )
        elif isinstance(event, SpeechEnded) and self._user_item is not None:
            self.emit(
                "input_audio_buffer.speech_stopped", audio_end_ms=self.source.audio_ms(event.t), item_id=self._user_item
            )
        elif isinstance(event, PartialTranscript) and self._user_item is not None:
            if event.stable.startswith(self._user_said) and len(event.stable) > len(self._user_said):
                delta, self._user_said = event.stable[len(self._user_said) :], event.stable
                self.emit(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=self._user_item,
                    content_index=0,
                    delta=delta,
                )
        elif isinstance(event, TurnTranscribed | TurnScored) and not self._creates_response:
            return False  # no reply may be written ahead of a turn the client will answer itself
        elif isinstance(event, EndOfTurn):
            item_id, self._user_item = self._user_item or self.new_id("item"), None
            self._user_turn(item_id, event.text, event.t - event.silence)
            if not self._creates_response:
                self.history.add_user(event.text)
                return False
        return True

    @property
    def _creates_response(self) -> bool:
        """Whether an end of turn starts a response (server VAD's ``create_response``)."""
        return bool((self.turn_detection or {}).get("create_response", True))

    def _user_turn(self, item_id: str, text: str, seconds: float) -> None:
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": text}],
        }
        self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=self._last_item)
        self.emit("conversation.item.added", item=item, previous_item_id=self._last_item)
        self._last_item = item_id
        self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=text,
            usage={"type": "duration", "seconds": round(max(0.0, seconds), 3)},
        )

    async def commit(self, audio: np.ndarray) -> None:
        """A manual commit: transcribe the buffer, add the user's message (the client asks for the response)."""
        if len(audio) < MIN_COMMIT_S * 16_000:
            self.error("input_audio_buffer_commit_empty", f"the buffer holds under {MIN_COMMIT_S:g} s of audio")
            return
        loop = asyncio.get_running_loop()
        decoding = await loop.run_in_executor(None, self.parts.listener.asr.decode, audio)
        self._user_turn(self.new_id("item"), decoding.text, len(audio) / 16_000)
        if decoding.text:
            self.history.add_user(decoding.text)

    def cleared(self) -> None:
        """The client emptied the input buffer."""
        self._user_item = None
        self.emit("input_audio_buffer.cleared")

    # --- the loop -> client --------------------------------------------------------------------

    def _on_agent_event(self, event: Event) -> None:
        if isinstance(event, ReplyStarted):
            reply = self.agent.reply
            playout = reply.playout if reply is not None and reply.id == event.reply_id else None
            self._start_response(event.reply_id, playout, self._metadata.pop(event.reply_id, None))
        elif isinstance(event, ReplyTextDelta) and event.reply_id in self._responses:
            response = self._responses[event.reply_id]
            self._open_message(response)
            response.text += event.text
            kind = "response.output_audio_transcript.delta" if self._audio else "response.output_text.delta"
            self.emit(kind, **self._where(response), delta=event.text)
        elif isinstance(event, Interruption) and event.reply_id in self._responses:
            response = self._responses[event.reply_id]
            reason = "turn_detected" if event.reason == "user_speech" else "client_cancelled"
            response.cancel_reason = response.cancel_reason or reason
        elif isinstance(event, PlaybackFinished) and event.reply_id in self._responses:
            response = self._responses.pop(event.reply_id)
            if response.item is not None and response.item["id"] not in self._said:
                said = _Said(response, event.heard_text, len(self.history.messages), self.history.dropped)
                self._said[response.item["id"]] = said
            self._finish_response(response, "cancelled" if event.interrupted else "completed")
        elif isinstance(event, TurnMetrics):
            self.metrics.append(event)
            log.info("session %s turn %s", self.sid, json.dumps(event.to_json()))
        elif isinstance(event, ErrorEvent):
            self.error(f"server_{event.component}_error", event.message)

    @property
    def _audio(self) -> bool:
        return "audio" in self.output_modalities

    def _start_response(self, reply_id: str, playout: Playout | None, metadata: dict | None) -> _Response:
        response = _Response(self.new_id("resp"), reply_id, playout, metadata)
        self._responses[reply_id] = response
        self.emit("response.created", response=self._response_object(response, "in_progress"))
        return response

    def _response_object(self, response: _Response, status: str) -> dict:
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": response.cancel_reason or "client_cancelled"}
        elif status == "completed":
            details = {"type": "completed"}
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": list(response.output),
            "conversation_id": f"conv_{self.sid}",
            "output_modalities": list(self.output_modalities),
            "metadata": response.metadata,
            "usage": None,
            "max_output_tokens": "inf",
        }

    def _where(self, response: _Response) -> dict:
        assert response.item is not None
        return {
            "response_id": response.id,
            "item_id": response.item["id"],
            "output_index": len(response.output) - 1,
            "content_index": 0,
        }

    def _part(self, response: _Response) -> dict:
        if self._audio:
            return {"type": "audio", "transcript": response.text}
        return {"type": "text", "text": response.text}

    def _message(self, response: _Response, status: str) -> dict:
        assert response.item is not None
        content = {"type": "output_audio", "transcript": response.text}
        if not self._audio:
            content = {"type": "output_text", "text": response.text}
        return {**response.item, "status": status, "content": [content]}

    def _open_message(self, response: _Response) -> None:
        """The response's assistant item and its content part, announced before its first delta."""
        if response.item is not None:
            return
        response.item = {"id": self.new_id("item"), "type": "message", "object": "realtime.item", "role": "assistant"}
        response.output.append(self._message(response, "in_progress"))
        index = len(response.output) - 1
        item = self._message(response, "in_progress")
        self.emit("response.output_item.added", response_id=response.id, output_index=index, item=item)
        self.emit("conversation.item.added", item=item, previous_item_id=self._last_item)
        self._last_item = response.item["id"]
        self.emit("response.content_part.added", **self._where(response), part=self._part(response))

    def _audio_out(self, samples: np.ndarray) -> None:
        """The sink sends a piece of the reply's audio (only the reply being played writes to it)."""
        reply = self.agent.reply
        response = self._responses.get(reply.id) if reply is not None else None
        if response is None or response.done:
            return
        self._open_message(response)
        self.emit("response.output_audio.delta", **self._where(response), delta=encode_pcm16(samples))

    def _finish_response(self, response: _Response, status: str) -> None:
        if response.done:
            return
        response.done = True
        if response.item is not None:
            where = self._where(response)
            if self._audio:
                self.emit("response.output_audio.done", **where)
                self.emit("response.output_audio_transcript.done", **where, transcript=response.text)
            else:
                self.emit("response.output_text.done", **where, text=response.text)
            self.emit("response.content_part.done", **where, part=self._part(response))
            item = self._message(response, "completed" if status == "completed" else "incomplete")
            response.output[where["output_index"]] = item
            self.emit(
                "response.output_item.done", response_id=response.id, output_index=where["output_index"], item=item
            )
        self.emit("response.done", response=self._response_object(response, status))

    # --- client tools --------------------------------------------------------------------------

    def _remote(self, name: str) -> Callable[..., Any]:
        async def call(**arguments: Any) -> str:
            return await self._call_client(name, arguments)

        return call

    async def _call_client(self, name: str, arguments: dict) -> str:
        """Ask the client to run its tool: the response ends with the call; the reply resumes in a new one."""
        reply = self.agent.reply
        response = self._responses.get(reply.id) if reply is not None else None
        if response is None:
            raise RuntimeError("a tool was called outside a response")
        call_id, item_id = self.new_id("call"), self.new_id("item")
        encoded = json.dumps(arguments)
        item = {
            "id": item_id,
            "type": "function_call",
            "object": "realtime.item",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        index = len(response.output)
        response.output.append({**item, "status": "completed", "arguments": encoded})
        self.emit("response.output_item.added", response_id=response.id, output_index=index, item=item)
        self.emit("conversation.item.added", item=item, previous_item_id=self._last_item)
        self._last_item = item_id
        self.emit(
            "response.function_call_arguments.done",
            response_id=response.id,
            item_id=item_id,
            output_index=index,
            call_id=call_id,
            name=name,
            arguments=encoded,
        )
        self.emit("response.output_item.done", response_id=response.id, output_index=index, item=response.output[index])
        self._finish_response(response, "completed")
        call = _ClientCall(asyncio.get_running_loop().create_future())
        self._calls[call_id] = call
        try:
            output = await call.future
        finally:
            self._calls.pop(call_id, None)
        self._start_response(response.reply_id, response.playout, None)
        return output


def _object(event: dict, key: str) -> dict:
    value = event.get(key)
    if not isinstance(value, dict):
        raise ProtocolError("invalid_value", f"{event.get('type')} needs an object '{key}'", key)
    return value


def _message_text(item: dict) -> str:
    content = item.get("content")
    if not isinstance(content, list):
        raise ProtocolError("invalid_value", "a message's content is a list of parts", "item.content")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "text", "output_text"):
            raise ProtocolError(
                "invalid_value",
                "message parts must be text (input_text, text or output_text); send audio with input_audio_buffer",
                "item.content",
            )
        if not isinstance(part.get("text"), str):
            raise ProtocolError("invalid_value", "a text part needs a string 'text'", "item.content")
        texts.append(part["text"])
    return " ".join(texts)
