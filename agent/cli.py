"""The ``ttt`` command: one entry point, one subcommand per job.

Each subcommand's handler imports what it needs lazily, so ``ttt --help`` is instant and a
machine without (say) PortAudio can still run everything that does not touch a sound device.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable

from agent.settings import Settings, SettingsError, load_settings, set_torch_threads


class UserError(RuntimeError):
    """A problem the user can fix (bad input, missing asset...): printed without a traceback."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings")
    group.add_argument("--config", metavar="FILE", help="TOML settings file")
    group.add_argument("--set", metavar="SECTION.FIELD=VALUE", action="append", default=[], help="override one setting")
    group.add_argument("--llm", metavar="PATH", help="LLM backbone: local dir, .gguf file, or hub id")
    group.add_argument("--whisper", metavar="PATH", help="CTranslate2 whisper model directory")
    group.add_argument("--vad-model", metavar="PATH", help="silero VAD .onnx file")
    group.add_argument("--voice", metavar="PATH", help="Piper voice .onnx (teacher voice)")
    group.add_argument("--device", help="torch device for the LLM: cpu, cuda or auto")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = list(args.set)
    for flag, dotted in (
        ("llm", "assets.llm"),
        ("whisper", "assets.whisper"),
        ("vad_model", "assets.vad"),
        ("voice", "assets.piper_voice"),
        ("device", "device"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{dotted}={value}")
    return load_settings(args.config, overrides)


# --- handlers ------------------------------------------------------------------------------


def _cmd_listen(args: argparse.Namespace, settings: Settings) -> int:
    from agent.listen import run_listen

    return run_listen(settings, input_path=args.input, realtime=args.realtime, as_json=args.json)


def _cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from agent.chat import run_chat

    if args.record is not None and args.input is None:
        raise UserError("--record needs --input: only a conversation with a file as the microphone is recorded")
    mqtt = None
    if args.mqtt:
        from agent.mqtt import MqttConfig

        try:
            mqtt = MqttConfig.parse(
                args.mqtt,
                site_id=args.site_id,
                username=args.mqtt_username,
                password=args.mqtt_password,
                tls=args.mqtt_tls,
                ca_file=args.mqtt_ca,
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return run_chat(settings, args.input, args.record, args.metrics, args.reply, args.json, args.tools, mqtt)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from agent.serve import ServeError, check_config, run_serve

    for name in ("host", "port", "token", "max_sessions", "max_message_bytes"):
        if getattr(args, name) is not None:
            setattr(settings.serve, name, getattr(args, name))
    try:
        check_config(settings.serve)
        return run_serve(settings, args.reply)
    except ServeError as exc:
        raise UserError(str(exc)) from None


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from agent.demo import run_demo

    return run_demo(settings)


def _cmd_assets(args: argparse.Namespace, settings: Settings) -> int:
    from model.assets import describe_assets

    for line in describe_assets(settings.assets, prepare=args.prepare):
        print(line)
    return 0


def _cmd_say(args: argparse.Namespace, settings: Settings) -> int:
    import json

    import soundfile as sf

    from model.generate import GenerationOptions
    from model.say import load_for_say, say

    if not args.text.strip():
        raise UserError("nothing to say: give a non-empty TEXT")
    talker, codec, notes = load_for_say(settings)
    for note in notes:
        print(f"ttt say: note: {note}", file=sys.stderr)
    result = say(talker, codec, args.text, GenerationOptions.from_settings(settings.talker))
    try:
        sf.write(args.output, result.samples, result.sample_rate)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot write {args.output}: {exc}") from None
    if args.json:
        print(json.dumps(result.summary()))
    else:
        s = result.summary()
        print(f"wrote {args.output}: {s['audio_s']} s of audio, first audio after {s['first_audio_s']} s, ", end="")
        print(f"RTF {s['rtf']}")
    return 0


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.turns:
        from agent.bench_chat import bench_turns

        if args.what is not None:
            raise UserError(f"--turns runs the conversation benchmark; drop {args.what!r} or drop --turns")
        replies = ["talker", "piper"] if args.reply == "both" else [args.reply]
        bench_turns(settings, args.turns, replies, gap_s=args.gap_s, png=args.png)
        return 0
    if args.what is None:
        raise UserError("say what to measure: listen, turn or say, or --turns N for whole conversations")
    if args.what == "say":  # the talker's benchmark lives model-side
        from model.say import bench_say

        print(json.dumps(bench_say(settings, repeats=args.repeats)))
        return 0
    from agent.bench import run_bench

    return run_bench(settings, args.what, args)


def _cmd_data_synth(args: argparse.Namespace, settings: Settings) -> int:
    from training.synth import SynthConfig, synthesize

    config = SynthConfig(
        hours=args.hours,
        workers=args.workers,
        llm_fraction=args.llm_fraction,
        llm_budget_s=args.llm_budget_s,
        sentences=args.sentences,
    )
    manifest = synthesize(args.out, config)
    print(
        f"corpus {args.out}: {manifest['items']} items, {manifest['hours']:.2f} h in {len(manifest['shards'])} shards"
    )
    return 0


def _cmd_train_codec(args: argparse.Namespace, settings: Settings) -> int:
    from training.train_codec import run_train_codec

    return run_train_codec(args)


def _cmd_train_turn(args: argparse.Namespace, settings: Settings) -> int:
    from training.train_turn import run_train_turn

    return run_train_turn(args, settings)


def _cmd_data_align(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from training.align import align_corpus

    torch.set_num_threads(args.threads)  # the command's own flag wins over settings.torch_threads
    manifest = align_corpus(args.data, args.out)
    print(json.dumps(manifest))
    return 0


def _cmd_train_talker(args: argparse.Namespace, settings: Settings) -> int:
    from training.train_talker import run_train_talker

    return run_train_talker(args, settings)


def _cmd_eval_tts(args: argparse.Namespace, settings: Settings) -> int:
    from training.eval_tts import run_eval_tts

    return run_eval_tts(args, settings)


def _cmd_eval_chat(args: argparse.Namespace, settings: Settings) -> int:
    from training.eval_chat import run_eval_chat

    return run_eval_chat(args, settings)


def _cmd_codec_roundtrip(args: argparse.Namespace, settings: Settings) -> int:
    from training.evaluate import run_roundtrip

    return run_roundtrip(args.input, args.output, checkpoint=args.checkpoint)


def _cmd_eval_codec(args: argparse.Namespace, settings: Settings) -> int:
    from training.evaluate import run_eval_codec

    return run_eval_codec(args, settings)


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``ttt`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ttt", description="Text-to-Talk: a speech-to-speech voice agent that runs offline."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_common(p)
        p.set_defaults(handler=handler)
        return p

    p = command("listen", _cmd_listen, "hear a person: VAD, streaming ASR and turn detection")
    p.add_argument("--input", metavar="FILE", help="treat an audio file as a live microphone")
    p.add_argument("--realtime", action="store_true", help="pace --input in real time (default: fast)")
    p.add_argument("--json", action="store_true", help="print one JSON object per event")

    p = command("chat", _cmd_chat, "talk with the agent: microphone and speaker, or a file played as a live microphone")
    p.add_argument("--input", metavar="USER.wav", help="play this file as the microphone, in real time")
    p.add_argument("--record", metavar="REC.wav", help="with --input: write a stereo recording (left mic, right agent)")
    p.add_argument("--metrics", metavar="FILE", help="write one JSON line of latencies per answered turn")
    p.add_argument(
        "--reply",
        choices=["auto", "talker", "piper"],
        help="who answers (default: agent.reply, auto)",
    )
    p.add_argument("--tools", metavar="FILE", help="a Python file whose @tool functions the model may call")
    p.add_argument("--mqtt", metavar="HOST[:PORT]", help="bridge events and commands to this MQTT broker (Hermes)")
    p.add_argument("--site-id", default="default", help="Hermes siteId of this agent (default: default)")
    p.add_argument("--mqtt-username", metavar="USER", help="MQTT user name")
    p.add_argument("--mqtt-password", metavar="PASSWORD", help="MQTT password")
    p.add_argument("--mqtt-tls", action="store_true", help="connect to the broker with TLS (default port 8883)")
    p.add_argument("--mqtt-ca", metavar="FILE", help="CA certificates for --mqtt-tls (default: the system's)")
    p.add_argument("--json", action="store_true", help="print every event as one JSON object a line")

    p = command("serve", _cmd_serve, "serve the agent over the OpenAI Realtime protocol (WebSocket) and a web page")
    p.add_argument("--host", help="interface to bind (default serve.host, 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, help="port (default serve.port, 8000; 0 picks a free one)")
    p.add_argument("--token", help="secret clients must present (Bearer header); better: TTT_SERVE__TOKEN")
    p.add_argument("--max-sessions", type=int, help="sessions at once (default serve.max_sessions, 4)")
    p.add_argument("--max-message-bytes", type=int, help="largest client message; bigger closes it (1 MiB)")
    p.add_argument("--reply", choices=["auto", "talker", "piper"], help="who answers (default: agent.reply, auto)")

    command("demo", _cmd_demo, "the main job on the embedded defaults: a spoken conversation with the agent")

    p = command("assets", _cmd_assets, "show where each model asset is found")
    p.add_argument("--prepare", action="store_true", help="also convert/cache what needs it (the LLM)")

    p = command("say", _cmd_say, "voice a text with the unified model (text forced, audio diffused)")
    p.add_argument("text", metavar="TEXT", help="what to say")
    p.add_argument("--output", "-o", metavar="OUT.wav", required=True, help="WAV file to write (16 kHz)")
    p.add_argument("--json", action="store_true", help="print one JSON line with the timings")

    p = command("bench", _cmd_bench, "benchmarks: speed and latency, reported as medians")
    p.add_argument("what", nargs="?", choices=["listen", "turn", "real", "say"], help="what to measure")
    p.add_argument("--repeats", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--turns", type=int, default=0, help="spoken turns through the whole loop in real time, per voice")
    p.add_argument(
        "--reply", choices=["talker", "piper", "both"], default="both", help="with --turns: which voice (default both)"
    )
    p.add_argument("--gap-s", type=float, default=9.0, help="with --turns: silence after each question")
    p.add_argument("--png", metavar="FILE", help="with --turns: plot voice-to-voice latency per turn")
    p.add_argument("--cases", type=int, default=0, help="turn: first N of each held-out set; real: N prompts (80)")
    p.add_argument("--offline", action="store_true", help="turn, real: hear each case from its parts (CPU-time bounds)")

    # nested commands ("ttt data synth", "ttt train codec"...): one group parser per first word
    groups: dict[str, argparse._SubParsersAction] = {}

    def subcommand(group: str, name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        if group not in groups:
            gp = sub.add_parser(group, help=f"{group} commands", description=f"{group} commands")
            groups[group] = gp.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = groups[group].add_parser(name, help=help, description=help)
        _add_common(p)
        p.set_defaults(handler=handler)
        return p

    p = subcommand("data", "synth", _cmd_data_synth, "build the synthetic corpus voiced by the Piper teacher")
    p.add_argument("--hours", type=float, default=1.5, help="hours of speech to reach (resumes/extends)")
    p.add_argument("--out", default="data/corpus", help="corpus folder (default: data/corpus)")
    p.add_argument("--workers", type=int, default=0, help="voicing processes (0 = one per core)")
    p.add_argument("--llm-fraction", type=float, default=0.5, help="share of text written by SmolLM2")
    p.add_argument("--llm-budget-s", type=float, default=900.0, help="cap on LLM text generation time")
    p.add_argument(
        "--sentences", metavar="FILE", help="also voice these sentences (one per line) first, if not in the corpus yet"
    )

    p = subcommand("data", "align", _cmd_data_align, "encode the corpus with the codec and align its word chunks")
    p.add_argument("--data", default="data/corpus", help="corpus folder from `ttt data synth`")
    p.add_argument("--out", default="data/aligned", help="aligned corpus folder (default: data/aligned)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (two stall each other on a busy box)")

    p = subcommand("train", "talker", _cmd_train_talker, "train the unified transformer's voice (resumable)")
    p.add_argument("--data", default="data/aligned", help="aligned corpus folder from `ttt data align`")
    p.add_argument("--run", default="runs/talker", help="run folder: checkpoints, loss log and curve")
    p.add_argument("--minutes", type=float, default=60.0, help="stop after this much training time")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0 = by time only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--limit", type=int, default=0, help="train on the first N clips only (the overfit gate)")
    p.add_argument("--positions-per-step", type=int, default=0, help="real positions per step (0 = 2048)")
    p.add_argument("--row-length", type=int, default=0, help="packed row length (0 = a row per sequence)")
    p.add_argument("--lr", type=float, default=0.0, help="peak LoRA learning rate (0 = 3e-4)")
    p.add_argument("--speech-lr", type=float, default=0.0, help="peak learning rate of the speech parts (0 = 1e-3)")
    p.add_argument("--ema-decay", type=float, default=0.0, help="decay of the weights' EMA, per step (0 = 0.995)")
    p.add_argument("--val-every", type=int, default=0, help="steps between validations (0 = 50)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank of a new run (0 = 32)")
    p.add_argument(
        "--phone-weight",
        type=float,
        default=None,
        help="weight of the auxiliary frame-phoneme loss of a new run (default 0.2; 0 = no phoneme head)",
    )
    p.add_argument("--save-every-s", type=float, default=0.0, help="seconds between resumable checkpoints (0 = 180)")
    p.add_argument(
        "--speech-every",
        type=int,
        default=None,
        help="steps between listening tests: held-out clips voiced and transcribed (default 250; 0 = none)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="matmul precision (auto: bf16 on a CPU with AMX, else fp32)",
    )
    p.add_argument("--init", metavar="PATH", help="start a new run from this talker .safetensors (ignored on resume)")

    p = subcommand("train", "codec", _cmd_train_codec, "train the speech codec (accelerate; resumable)")
    p.add_argument("--data", default="data/corpus", help="corpus folder from `ttt data synth`")
    p.add_argument("--run", default="runs/codec", help="run folder: checkpoints and loss log")
    p.add_argument("--minutes", type=float, default=60.0, help="stop after this much training time")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0 = by time only)")
    p.add_argument("--batch", type=int, default=8, help="clips per batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--export", metavar="DIR", help="also export the best weights to DIR (codec.safetensors)")
    p.add_argument("--init", metavar="PATH", help="start a new run from this codec.safetensors (e.g. the shipped one)")
    p.add_argument("--vocoder-from", metavar="PATH", help="take the vocoder weights from this codec checkpoint")
    p.add_argument("--groups", type=int, default=0, help="G, code groups per frame, for a new run (0 = 4)")
    p.add_argument("--voc-every", type=int, default=1, help="train the vocoder on every Nth step only")
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0 = the default, 1.5e-3)")
    p.add_argument(
        "--adversarial", type=float, default=0.0, metavar="W", help="weight of a mel discriminator's loss (0 = off)"
    )

    p = subcommand("train", "turn", _cmd_train_turn, "train the end-of-turn head and choose its wait policy")
    p.add_argument("--run", default="runs/turn", help="run folder: examples, features, head, policy")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training features")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--export", metavar="DIR", help="also export the head and its card to DIR (turn_head.*)")
    p.add_argument("--limit", type=int, default=0, help="train on the first N examples only (0 = all)")
    p.add_argument("--no-policy", action="store_true", help="skip choosing the wait policy on the dev set")
    p.add_argument("--voiced", type=int, default=0, metavar="N", help="add N fragments voiced, as whisper hears them")

    p = subcommand("codec", "roundtrip", _cmd_codec_roundtrip, "encode a sound file with the codec and decode it back")
    p.add_argument("input", metavar="IN", help="input audio file (any sample rate, mono or stereo)")
    p.add_argument("output", metavar="OUT", help="output WAV (16 kHz mono)")
    p.add_argument("--checkpoint", metavar="PATH", help="codec safetensors (default: the shipped one)")

    p = subcommand("eval", "codec", _cmd_eval_codec, "codec metrics: WER orig vs resynth, mel distance, RTF")
    p.add_argument(
        "--checkpoint", metavar="PATH", nargs="+", help="codec safetensors, one or more (default: the shipped one)"
    )
    p.add_argument("--sentences", metavar="FILE", help="dev sentences (default: ../shared/eval/dev_sentences.txt)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N sentences (0 = all)")
    p.add_argument("--png", metavar="FILE", help="write a spectrogram comparison PNG")
    p.add_argument("--griffin-lim", action="store_true", help="decode with Griffin-Lim, not the vocoder")
    p.add_argument("--no-timing", action="store_true", help="skip the real-time-factor measurements (faster)")
    p.add_argument("--transcripts", metavar="FILE", help="append per-sentence transcripts to FILE (JSON lines)")

    p = subcommand("eval", "tts", _cmd_eval_tts, "talker WER (free-running and single-span) beside the teacher's")
    p.add_argument(
        "--checkpoint", metavar="PATH", nargs="+", help="talker safetensors, one or more (default: the shipped one)"
    )
    p.add_argument("--sentences", metavar="FILE", help="sentences (default: ../shared/eval/dev_sentences.txt)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N sentences (0 = all)")
    p.add_argument("--transcripts", metavar="FILE", help="append per-sentence transcripts to FILE (JSON lines)")
    p.add_argument("--png", metavar="FILE", help="spectrograms of the first sentence: teacher above talker")

    p = subcommand("eval", "chat", _cmd_eval_chat, "chat accuracy of the talker beside its untouched backbone")
    p.add_argument("--checkpoint", metavar="PATH", nargs="+", help="talker safetensors (default: the shipped one)")
    p.add_argument("--questions", metavar="FILE", help="'question | keywords' lines (default: the shipped 50)")
    p.add_argument("--answers", metavar="FILE", help="append every answer to FILE (JSON lines)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ttt`` console script."""
    from agent.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any model starts a thread
    parser = build_parser()
    args = parser.parse_args(argv)
    # transformers warns about its own deprecated attribute whenever peft wraps a model: not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from agent.tools import ToolError
    from audio_io.frames import AudioError
    from model.assets import AssetError

    try:
        settings = _settings(args)
        set_torch_threads(settings)
        return int(args.handler(args, settings) or 0)
    except (UserError, SettingsError, AssetError, AudioError, ToolError) as exc:
        print(f"ttt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
