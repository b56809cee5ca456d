"""``ttt chat``: talk with the agent through the microphone and speaker, or through a file played as a live one.

With ``--input USER.wav`` the file plays as a microphone in real time, the agent's voice goes to a
virtual speaker on the same clock, and ``--record REC.wav`` writes both as one stereo file (left:
what the microphone heard, right: what the agent played). It exits once the input has ended and the
agent has finished.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.dialogue import History
from agent.events import (
    EndOfTurn,
    ErrorEvent,
    Event,
    Interruption,
    PlaybackFinished,
    SourceClock,
    ToolCallEnded,
    TurnMetrics,
    TurnResumed,
)
from agent.listen import Listener
from agent.loop import Agent, AgentConfig, Voice
from agent.metrics import MetricsLog, format_summary
from agent.mqtt import MqttBridge, MqttConfig
from agent.settings import Settings, SettingsError
from agent.tools import Toolbox

REPLIES = ("auto", "talker", "piper")


def trained_talker_exists(settings: Settings) -> bool:
    """Whether the talker has trained weights to speak with (a configured or shipped checkpoint)."""
    import model.talker

    shipped = Path(model.talker.__file__).parent / "checkpoints" / "talker.safetensors"
    return settings.talker.checkpoint is not None or shipped.is_file()


def build_voice(settings: Settings, reply: str | None = None) -> tuple[Voice, str, Any]:
    """The voice ``reply`` names (default ``settings.agent.reply``); returns (voice, its name, its tokenizer)."""
    from model.backbone import load_backbone

    reply = reply or settings.agent.reply
    if reply not in REPLIES:
        raise SettingsError(f"agent.reply must be one of {', '.join(REPLIES)}, got {reply!r}")
    if reply == "auto":
        reply = "talker" if trained_talker_exists(settings) else "piper"
    backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    if reply == "piper":
        from agent.voices import CascadeVoice, TextStreamer
        from training.teacher import teacher_voice

        teacher = teacher_voice(settings.assets.piper_voice, threads=1, arena=False)  # flat memory for hours
        text = TextStreamer(backbone, settings.agent.max_reply_tokens, settings.agent.max_history_tokens)
        return CascadeVoice(text, teacher), reply, backbone.tokenizer
    from agent.voices import TalkerVoice
    from model.codec import load_codec
    from model.generate import GenerationOptions
    from model.talker import load_talker

    codec = load_codec(settings.assets.codec, allow_untrained=True)
    talker, _ = load_talker(settings, codec, backbone)
    return TalkerVoice(talker, codec, GenerationOptions.from_settings(settings.talker)), reply, backbone.tokenizer


def token_counter(tokenizer: Any) -> Any:
    """One message's length in tokens: its text plus the chat template's few tokens around it."""
    return lambda message: len(tokenizer(message["content"], add_special_tokens=False)["input_ids"]) + 5


def agent_config(settings: Settings) -> AgentConfig:
    """The loop's timing from the settings."""
    return AgentConfig(
        min_interruption_s=settings.agent.min_interruption_ms / 1000,
        preempt_wait_s=settings.agent.preempt_wait_ms / 1000,
        vad_hangover_s=settings.vad.min_silence_ms / 1000,
        confirm_s=settings.vad.min_speech_ms / 1000 + 0.1,
    )


def describe(event: Event) -> str | None:
    """One readable line for the events a person watching the conversation cares about."""
    if isinstance(event, EndOfTurn):
        return f"{event.t:8.2f}s  user:  {event.text}"
    if isinstance(event, TurnResumed):
        return f"{event.t:8.2f}s  (the user went on: the same turn)"
    if isinstance(event, PlaybackFinished):
        if event.interrupted and not event.heard_text:
            return None  # dropped before a sound of it played
        cut = "  [interrupted]" if event.interrupted else ""
        return f"{event.t:8.2f}s  agent: {event.heard_text}{cut}"
    if isinstance(event, TurnMetrics):
        return f"{event.t:8.2f}s  (voice to voice {1000 * event.voice_to_voice_s:.0f} ms)"
    if isinstance(event, Interruption):
        return f"{event.t:8.2f}s  (barge-in)"
    if isinstance(event, ToolCallEnded):
        return f"{event.t:8.2f}s  (tool {event.name}: {event.status}) {event.output}"
    if isinstance(event, ErrorEvent):
        return f"{event.t:8.2f}s  error in {event.component}: {event.message}"
    return None


@dataclass
class ChatResult:
    """What a chat run leaves behind."""

    agent: Agent
    metrics: MetricsLog
    wall_s: float


async def _print(queue: asyncio.Queue, as_json: bool) -> None:
    while (event := await queue.get()) is not None:
        if as_json:
            print(json.dumps(event.to_json()), flush=True)
        elif (line := describe(event)) is not None:
            print(line, flush=True)


async def converse(
    listener: Listener,
    voice: Voice,
    settings: Settings,
    tokenizer: Any,
    input_path: str | None = None,
    record_path: str | None = None,
    metrics_path: str | None = None,
    as_json: bool = False,
    tools: Toolbox | None = None,
    mqtt: MqttConfig | None = None,
    quiet: bool = False,
) -> ChatResult:
    """One conversation, on the file as a live microphone (``input_path``) or on the sound devices."""
    import soundfile as sf

    from audio_io.resample import read_audio
    from audio_io.virtual import VirtualClock, VirtualMicrophone, VirtualSpeaker, stereo_recording

    prompt = tools.system_prompt(settings.agent.system_prompt) if tools else settings.agent.system_prompt
    history = History(prompt, settings.agent.max_history_tokens, token_counter(tokenizer))
    if input_path is not None:
        audio = read_audio(input_path)
        clock = VirtualClock(realtime=True)
        source: Any = VirtualMicrophone(clock, [(0.0, audio)], tail_s=0.5)
        sink: Any = VirtualSpeaker(clock)
    else:
        from audio_io.sinks import SpeakerSink
        from audio_io.sources import MicrophoneSource

        microphone = MicrophoneSource(settings.audio.input_device)
        clock = SourceClock(microphone)
        sink = SpeakerSink(settings.audio.output_device, clock=microphone.now)
        source = microphone
        if settings.audio.echo_cancel:  # the agent's voice from the loudspeaker must not reach hearing
            from agent.echo import EchoCancelledSource, EchoCanceller

            source = EchoCancelledSource(microphone, EchoCanceller(sink.render))
    agent = Agent(listener, voice, sink, clock, history, agent_config(settings), tools=tools)
    metrics = MetricsLog(metrics_path)
    followers = [asyncio.create_task(metrics.follow(agent.bus))]
    if mqtt is not None:
        bridge = MqttBridge(mqtt, agent.bus, agent.send, clock.now)
        if tools:
            tools.bind_mqtt(bridge)
        followers.append(asyncio.create_task(bridge.run()))
    if not quiet:
        followers.append(asyncio.create_task(_print(agent.bus.subscribe(), as_json)))
    started = time.perf_counter()
    try:
        await agent.run(source)
    finally:
        await asyncio.gather(*followers)
        await sink.close()
    if record_path is not None and input_path is not None:
        try:
            sf.write(record_path, stereo_recording(source, sink), 16_000)
        except (OSError, RuntimeError) as exc:
            from audio_io.frames import AudioError

            raise AudioError(f"cannot write the recording {record_path}: {exc}") from None
    return ChatResult(agent, metrics, time.perf_counter() - started)


def run_chat(
    settings: Settings,
    input_path: str | None,
    record_path: str | None,
    metrics_path: str | None,
    reply: str | None,
    as_json: bool = False,
    tools_path: str | None = None,
    mqtt: MqttConfig | None = None,
) -> int:
    """``ttt chat``."""
    from agent.tools import load_tools
    from audio_io.resample import read_audio

    if input_path is not None:
        read_audio(input_path)  # a bad file or tools file is reported before the models load
    tools = load_tools(tools_path) if tools_path else None
    print("loading the VAD, whisper, the end-of-turn model and the voice...", file=sys.stderr)
    listener = Listener.from_settings(settings, likely_speech=True)
    voice, name, tokenizer = build_voice(settings, reply)
    print(f"the agent answers with the {name} voice", file=sys.stderr)
    if input_path is None:
        print("listening... (Ctrl-C to stop)", file=sys.stderr)
    try:
        result = asyncio.run(
            converse(
                listener,
                voice,
                settings,
                tokenizer,
                input_path,
                record_path,
                metrics_path,
                as_json,
                tools=tools,
                mqtt=mqtt,
            )
        )
    finally:
        listener.close()
    print(format_summary(result.metrics.summary()), file=sys.stderr)
    if record_path is not None:
        print(f"recording (left: microphone, right: agent): {record_path}", file=sys.stderr)
    return 0
