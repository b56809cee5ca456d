"""The agent: source -> hearing -> dialogue -> voice (text and audio) -> sink, one asyncio loop.

States are LiveKit's: listening, thinking (a reply is being generated, nothing heard yet),
speaking (its audio plays). A reply starts playing as soon as its first audio is decoded, while
the model goes on writing.

Barge-in: user speech over the agent pauses the playback at once (when the VAD confirms speech,
about 0.1 s after it began). If the speech lasts ``min_interruption_s`` (a cough or an "mhm" does
not), the reply is interrupted: generation and tool calls are cancelled, and the history keeps
only the words the user heard (from the playback position), followed by a note saying the reply
was cut. Shorter speech was a false alarm: the playback resumes where it stopped. When the user
goes on right after an end of turn (``turn_resumed``) and nothing of the reply has played yet, the
reply is dropped and the turn taken back: the whole turn comes with the next end of turn.

Preemptive generation: as soon as a speech end's transcript is known, the reply starts being
written, held: its sound, its events and any tool call wait for the end of turn. If the speech
end's score says the turn probably goes on (its wait is over ``preempt_wait_s``), the held reply
is dropped; if the turn ends with the text it was written for, it is released (the wait and the
thinking overlap); if the user goes on, it is dropped unseen.

Every event goes on the bus, stamped from the session clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from agent.dialogue import History
from agent.events import (
    AgentState,
    AgentStateChanged,
    Command,
    EndOfTurn,
    ErrorEvent,
    Event,
    EventBus,
    Interrupt,
    Interruption,
    Mute,
    PlaybackFinished,
    PlaybackStarted,
    ReplyFinished,
    ReplyStarted,
    ReplyTextDelta,
    Respond,
    Say,
    SessionClock,
    SpeechEnded,
    SpeechLikely,
    SpeechStarted,
    ToolCallEnded,
    ToolCallStarted,
    TurnMetrics,
    TurnResumed,
    TurnScored,
    TurnTranscribed,
    Unmute,
)
from agent.memory import trim_periodically
from agent.playback import Playout
from agent.tools import CALL_CLOSE, CALL_OPEN, Toolbox, ToolCall, ToolResult, may_open_call, parse_tool_call
from audio_io.sinks import AudioSink
from audio_io.sources import AudioSource
from model.generate import AudioChunk, TextDelta

log = logging.getLogger("ttt.agent")

VoiceOutput = TextDelta | AudioChunk
TOOL_APOLOGY = "Sorry, I could not do that."  # spoken when a tool fails, hangs or is called wrongly


class Voice(Protocol):
    """What writes and voices replies: the unified talker, or the cascade (LLM text, then Piper)."""

    def prime(self, messages: list[dict]) -> None:
        """Compute the prompt cache of ``messages`` (the system prompt) now, off the first turn's path (blocking)."""
        ...

    def reply(self, messages: list[dict], cancel: threading.Event) -> AsyncIterator[VoiceOutput]:
        """The reply to ``messages``: text deltas and decoded audio, as they are decided."""
        ...

    def say(self, text: str, cancel: threading.Event) -> AsyncIterator[VoiceOutput]:
        """``text`` voiced as it is."""
        ...


class Hearing(Protocol):
    """What hears the source: :class:`agent.listen.Listener`, or one built from scripted parts."""

    def events(self, source: AudioSource) -> AsyncIterator[Event]:
        """Hearing events of ``source`` until it ends."""
        ...


@dataclass
class AgentConfig:
    """How the loop takes turns."""

    min_interruption_s: float = 0.3  # user speech over the agent shorter than this is not a barge-in
    vad_hangover_s: float = 0.16  # the VAD's min silence: how late it reports a speech end
    confirm_s: float = 0.2  # how long after a speech-like chunk the VAD has confirmed real speech (min speech + chunks)
    poll_s: float = 0.02  # how often a paused reply checks whether to resume
    max_tool_rounds: int = 3  # tool calls one reply may chain before the agent gives up (and apologises)
    preempt_wait_s: float = 0.5  # keep a reply written ahead when its speech end's wait is at most this; 0 = never


@dataclass
class Reply:
    """One reply being generated and played (LiveKit's SpeechHandle)."""

    id: str
    source: Literal["turn", "say"]
    playout: Playout
    cancel: threading.Event = field(default_factory=threading.Event)  # stops the voice's worker thread
    task: asyncio.Task | None = None
    text: str = ""  # generated so far (tool calls aside)
    unvoiced: str = ""  # text since the last audio: the next audio voices it
    generated: bool = False  # the voice has finished writing it
    interrupted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    turn: EndOfTurn | None = None  # the user turn it answers
    first_text: float | None = None
    first_audio: float | None = None
    draft: str | None = None  # held: written ahead for this transcript, before its end of turn
    held_events: list[Event] = field(default_factory=list)  # its events while held, published on release
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set once it may be heard (at once if not held)

    def __post_init__(self) -> None:
        if self.draft is None:
            self.released.set()


class Agent:
    """The conversation loop; ``run(source)`` talks until the source ends and the last reply has played."""

    def __init__(
        self,
        hearing: Hearing,
        voice: Voice,
        sink: AudioSink,
        clock: SessionClock,
        history: History,
        config: AgentConfig | None = None,
        bus: EventBus | None = None,
        tools: Toolbox | None = None,
    ):
        self.hearing = hearing
        self.voice = voice
        self.sink = sink
        self.clock = clock
        self.history = history
        self.config = config or AgentConfig()
        self.bus = bus or EventBus()
        self.tools = tools or Toolbox([])
        self.state: AgentState = "initializing"
        self.reply: Reply | None = None
        self.muted = False
        self.commands: asyncio.Queue[Command] = asyncio.Queue()
        self._user_speech: tuple[float, float | None] | None = None  # (start, end) of the user's latest speech
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()  # barge-in checks in flight

    # --- the bus -------------------------------------------------------------------------------

    def now(self) -> float:
        """Session time."""
        return self.clock.now()

    def emit(self, event: Event) -> None:
        """Publish ``event``."""
        self.bus.publish(event)

    def _set_state(self, new: AgentState) -> None:
        if new != self.state:
            old, self.state = self.state, new
            self.emit(AgentStateChanged(self.now(), old, new))

    def send(self, command: Command) -> None:
        """An inbound command (say, respond, interrupt, mute, unmute), handled in order."""
        self.commands.put_nowait(command)

    # --- running -------------------------------------------------------------------------------

    async def run(self, source: AudioSource) -> None:
        """Hear ``source`` and answer until it ends and the last reply has played."""
        self._set_state("listening")
        self._spawn(self._prime())
        commands = asyncio.create_task(self._commands())
        trimmer = asyncio.create_task(trim_periodically())
        try:
            async for event in self.hearing.events(source):
                await self._heard(event)
            await self.commands.join()
            await self._wait_reply()
        finally:
            commands.cancel()
            trimmer.cancel()
            for task in [*self._tasks, commands, trimmer]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.reply is not None:
                if self.reply.draft is not None:
                    await self._drop(self.reply)
                else:
                    await self._interrupt(self.reply, "command", self.now())
            self.bus.close()

    async def _wait_reply(self) -> None:
        while self.reply is not None:
            await self.reply.done.wait()

    async def _heard(self, event: Event) -> None:
        if self.muted:
            return
        self.emit(event)
        reply = self.reply
        if reply is not None and reply.draft is not None and isinstance(event, SpeechStarted | TurnResumed):
            await self._drop(reply)  # the user goes on: what was written ahead is stale
        if isinstance(event, TurnTranscribed | TurnScored):
            await self._preempt(event)
        elif isinstance(event, SpeechLikely):
            reply = self.reply
            if reply is not None and not reply.interrupted and not reply.playout.paused:
                reply.playout.pause()  # silence at once; the VAD confirms speech (or not) in about 0.1 s
                self._spawn(self._resume_unless_speech(reply, event.t))
        elif isinstance(event, SpeechStarted):
            self._user_speech = (event.t, None)
            reply = self.reply
            if reply is not None and not reply.interrupted:
                reply.playout.pause()  # stop the sound now; whether it was a barge-in is decided below
                self._spawn(self._check_barge_in(reply, event.t))
        elif isinstance(event, SpeechEnded):
            if self._user_speech is not None:
                self._user_speech = (self._user_speech[0], event.t)
        elif isinstance(event, TurnResumed):
            reply = self.reply
            if reply is not None and reply.turn is not None and reply.turn.t == event.ended_at:
                if reply.playout.started_at is None:  # not a sound of it heard: drop it, the turn goes on
                    await self._interrupt(reply, "user_speech", event.t)
                    self.history.take_back_user(event.text)
        elif isinstance(event, EndOfTurn):
            reply = self.reply
            if reply is not None and reply.draft == event.text:
                await self._release(reply, event)
                return
            if reply is not None and reply.draft is not None:
                await self._drop(reply)
            elif reply is not None:  # the user went on before the last reply played: it is stale
                await self._interrupt(reply, "user_speech", self.now())
            self.history.add_user(event.text)
            self._start(Reply(f"r{next(self._ids)}", "turn", Playout(self.sink, self.clock), turn=event))

    async def _preempt(self, heard: TurnTranscribed | TurnScored) -> None:
        """Write the reply to the turn so far ahead of its end of turn (held), unless its score says it goes on."""
        wait = self.config.preempt_wait_s
        reply = self.reply
        if isinstance(heard, TurnScored) and heard.wait > wait:
            if reply is not None and reply.draft is not None:
                await self._drop(reply)  # the turn probably goes on: free the CPU for hearing it
            return
        if reply is not None or not heard.text or wait <= 0:
            return
        playout = Playout(self.sink, self.clock, held=True)
        self._start(Reply(f"r{next(self._ids)}", "turn", playout, draft=heard.text))

    async def _release(self, reply: Reply, turn: EndOfTurn) -> None:
        """The turn ended as the held reply expected: it joins the conversation and plays."""
        self.history.add_user(turn.text)
        reply.turn, reply.draft = turn, None
        held, reply.held_events = reply.held_events, []
        now = self.now()
        for event in held:  # published in order, none stamped before the end of turn it answers
            self.emit(dataclasses.replace(event, t=max(event.t, now)))
        self._set_state("thinking")
        reply.released.set()
        await reply.playout.resume()
        self._announce(reply)

    async def _drop(self, reply: Reply) -> None:
        """Discard a held reply: nothing of it was shown or heard."""
        reply.playout.stop()
        reply.cancel.set()
        if reply.task is not None and not reply.task.done():
            reply.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reply.task
        reply.done.set()
        if self.reply is reply:
            self.reply = None
        log.debug("held reply %s dropped", reply.id)

    def _reply_event(self, reply: Reply, event: Event) -> None:
        """Publish an event of ``reply``, or keep it until the reply is released."""
        if reply.draft is not None:
            reply.held_events.append(event)
        else:
            self.emit(event)

    async def _prime(self) -> None:
        """The voice's prompt cache of the history so far, computed while the user talks, off the next reply's path."""
        try:
            await asyncio.to_thread(self.voice.prime, self.history.chat())
        except Exception as exc:
            message = f"could not prepare the prompt cache ({type(exc).__name__}: {exc}); the next reply is slower"
            self.emit(ErrorEvent(self.now(), "voice", message))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume_unless_speech(self, reply: Reply, likely_at: float) -> None:
        """A click or a breath the VAD never confirms as speech: play on."""
        await self.clock.wait_until(likely_at + self.config.confirm_s)
        speech = self._user_speech
        confirmed = speech is not None and speech[0] >= likely_at - self.config.confirm_s
        if not confirmed and reply is self.reply and not reply.interrupted:
            await reply.playout.resume()

    async def _check_barge_in(self, reply: Reply, start: float) -> None:
        """Once the VAD could have reported an end, decide: a barge-in, or a cough (resume)."""
        minimum = self.config.min_interruption_s
        await self.clock.wait_until(start + minimum + self.config.vad_hangover_s)
        speech = self._user_speech
        if speech is None or speech[0] != start or reply is not self.reply or reply.interrupted:
            return  # newer speech decides, or the reply is over
        _, end = speech
        if end is None or end - start >= minimum:
            await self._interrupt(reply, "user_speech", start)
        else:
            await reply.playout.resume()

    async def _commands(self) -> None:
        while True:
            command = await self.commands.get()
            try:
                self.emit(command)
                if isinstance(command, Say):
                    await self._wait_reply()
                    self._start(Reply(command.id, "say", Playout(self.sink, self.clock)), say=command.text)
                elif isinstance(command, Respond):
                    await self._wait_reply()
                    self._start(Reply(command.id, "turn", Playout(self.sink, self.clock)))
                elif isinstance(command, Interrupt):
                    if self.reply is not None:
                        await self._interrupt(self.reply, "command", command.t)
                elif isinstance(command, Mute):
                    self.muted = True
                elif isinstance(command, Unmute):
                    self.muted = False
            finally:
                self.commands.task_done()

    # --- one reply -----------------------------------------------------------------------------

    def _start(self, reply: Reply, say: str | None = None) -> None:
        self.reply = reply
        self._reply_event(reply, ReplyStarted(self.now(), reply.id, reply.source))
        if reply.draft is None:
            self._set_state("thinking")
        reply.task = asyncio.create_task(self._generate(reply, say))

    def _prompt(self, reply: Reply) -> list[dict]:
        """The messages ``reply`` answers: the history, plus the turn it was written ahead for."""
        messages = self.history.chat()
        if reply.draft is not None:
            messages.append({"role": "user", "content": reply.draft})
        return messages

    async def _generate(self, reply: Reply, say: str | None) -> None:
        """Write the reply (with any tool calls it makes) to the sink as it comes, then wait for it to play out."""
        try:
            if say is not None:
                await self._speak(reply, lambda cancel: self.voice.say(say, cancel))
            else:
                for round_ in itertools.count():
                    call = await self._speak(reply, lambda cancel: self.voice.reply(self._prompt(reply), cancel))
                    if call is None:
                        break
                    await reply.released.wait()  # a tool acts on the world: only for a turn that ended
                    result = await self._run_tool(reply, call)
                    if result.status != "ok" or round_ + 1 >= self.config.max_tool_rounds:
                        await self._speak(reply, lambda cancel: self.voice.say(TOOL_APOLOGY, cancel))
                        break
            await reply.playout.write(np.zeros(0, np.float32), reply.playout.rate, reply.unvoiced)
        except Exception as exc:  # a failing voice must not end the conversation
            log.exception("reply %s failed", reply.id)
            self._reply_event(reply, ErrorEvent(self.now(), "voice", f"{type(exc).__name__}: {exc}"))
        reply.generated = True
        self._reply_event(reply, ReplyFinished(self.now(), reply.id, reply.text.strip(), False))
        while True:
            if reply.playout.stopped:
                return  # the interruption finishes it
            if await reply.playout.drain():
                break
            await self.clock.wait_until(self.now() + self.config.poll_s)
        self._finish(reply, reply.playout.duration_s, False, reply.playout.text)

    async def _speak(self, reply: Reply, start: Any) -> ToolCall | None:
        """Play one stream of the voice; returns the tool call it turned out to be, if it was one.

        With tools, a reply that opens like ``<tool_call>`` is held back (neither shown nor played)
        until it is clearly a call, which then ends the stream, or clearly not one.
        """
        reply.cancel = threading.Event()  # a fresh one per stream: closing the last one set its own
        held: list[VoiceOutput] = []  # outputs of a reply that may still be a tool call
        text = ""
        deciding = bool(self.tools)
        async with contextlib.aclosing(start(reply.cancel)) as stream:
            async for out in stream:
                if isinstance(out, TextDelta):
                    if reply.first_text is None:
                        reply.first_text = self.now()
                    text += out.text
                if deciding:
                    held.append(out)
                    if may_open_call(text):
                        if CALL_CLOSE in text:
                            return parse_tool_call(text, f"{reply.id}-{next(self._ids)}")
                        continue
                    deciding = False
                    for item in held:
                        await self._play(reply, item)
                    held = []
                    continue
                await self._play(reply, out)
        if deciding and text.lstrip().startswith(CALL_OPEN):  # the stream ended inside an unclosed call
            return parse_tool_call(text, f"{reply.id}-{next(self._ids)}")
        for item in held:
            await self._play(reply, item)
        return None

    async def _play(self, reply: Reply, out: VoiceOutput) -> None:
        if isinstance(out, TextDelta):
            reply.text += out.text
            reply.unvoiced += out.text
            self._reply_event(reply, ReplyTextDelta(self.now(), reply.id, out.text))
        elif len(out.samples):
            if reply.first_audio is None:
                reply.first_audio = self.now()
            await reply.playout.write(out.samples, out.sample_rate, reply.unvoiced)
            reply.unvoiced = ""
            self._announce(reply)

    async def _run_tool(self, reply: Reply, call: ToolCall) -> ToolResult:
        """Run the call (cancelled with the reply); the call and its result join the history."""
        self.emit(ToolCallStarted(self.now(), call.call_id, call.name, call.arguments))
        try:
            result = await self.tools.call(call, self.clock)
        except asyncio.CancelledError:
            self.emit(ToolCallEnded(self.now(), call.call_id, call.name, "cancelled", ""))
            raise
        self.emit(ToolCallEnded(self.now(), call.call_id, call.name, result.status, result.output))
        if result.status != "ok":
            self.emit(ErrorEvent(self.now(), "tools", result.output))
        arguments = call.arguments if call.name else json.dumps(call.arguments)
        self.history.add("assistant", f'{CALL_OPEN}{{"name": "{call.name}", "arguments": {arguments}}}{CALL_CLOSE}')
        self.history.add("tool", result.output)
        return result

    def _announce(self, reply: Reply) -> None:
        """The first sample is playing: say so, once, with the turn's latencies."""
        playout = reply.playout
        if self.state == "speaking" or playout.started_at is None or reply.interrupted:
            return
        self._set_state("speaking")
        self.emit(PlaybackStarted(playout.started_at, reply.id))
        turn = reply.turn
        if turn is None:
            return
        stopped = turn.t - turn.silence
        first_audio = reply.first_audio if reply.first_audio is not None else playout.started_at
        first_text = reply.first_text if reply.first_text is not None else first_audio
        self.emit(
            TurnMetrics(
                playout.started_at,
                reply.id,
                user_stopped=stopped,
                end_of_turn=turn.t,
                first_text=first_text,
                first_audio=first_audio,
                first_played=playout.started_at,
                voice_to_voice_s=playout.started_at - stopped,
                turn_wait_s=turn.t - stopped,
                first_text_s=first_text - turn.t,
                first_audio_s=first_audio - first_text,
                playout_s=playout.started_at - first_audio,
            )
        )

    async def _interrupt(self, reply: Reply, reason: Literal["user_speech", "command"], speech_start: float) -> None:
        """Cut ``reply``: stop the sound, cancel the generation, keep the heard words."""
        if reply.interrupted or reply.done.is_set():
            await reply.done.wait()  # another task is cutting it: the caller goes on once it is cut
            return
        reply.interrupted = True
        position = reply.playout.stop()
        reply.cancel.set()
        if reply.task is not None and not reply.task.done():
            reply.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reply.task
        self.emit(Interruption(self.now(), reply.id, reason, speech_start))
        if not reply.generated:
            self.emit(ReplyFinished(self.now(), reply.id, reply.text.strip(), True))
        self._finish(reply, position, True, reply.playout.heard(position))

    def _finish(self, reply: Reply, position: float, interrupted: bool, heard: str) -> None:
        self.emit(PlaybackFinished(self.now(), reply.id, position, interrupted, heard))
        if reply.source == "turn":
            self.history.add_reply(heard, interrupted)
            self._spawn(self._prime())  # the next reply then prefills only the user's next words
        reply.done.set()
        if self.reply is reply:
            self.reply = None
        self._set_state("listening")
