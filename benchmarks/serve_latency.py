"""Voice-to-voice latency of ``ttt serve`` measured at the client, for one session and for two at once.

A ``ttt serve`` process is started; the official ``openai`` Realtime client streams questions voiced by
the Piper teacher in real time (50 ms messages, as a microphone) and times, on its own clock, the first
reply audio it receives after the last sample of the question's speech left it. With ``--sessions 2``,
two clients ask at the same moment (the worst case: both replies are generated at once).

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/serve_latency.py --turns 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from agent.bench_chat import QUESTIONS
from tests.realtime_client import ask, serve_process


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict:
    return {
        "turns": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies)),
        "p90_ms": round(1000 * percentile(latencies, 0.9)),
        "min_ms": round(1000 * min(latencies)),
        "max_ms": round(1000 * max(latencies)),
    }


async def one_at_a_time(port: int, speeches: list) -> list[float]:
    latencies = []
    for speech in speeches:
        turn = await ask(port, speech)
        assert turn.status == "completed" and turn.voice_to_voice_s is not None, turn.types()
        latencies.append(turn.voice_to_voice_s)
        print(
            f"  1 session: {turn.user_transcript!r} -> {turn.reply_transcript!r} {1000 * turn.voice_to_voice_s:.0f} ms"
        )
    return latencies


async def two_at_once(port: int, speeches: list) -> list[float]:
    latencies = []
    for first, second in zip(speeches[0::2], speeches[1::2], strict=True):
        turns = await asyncio.gather(ask(port, first), ask(port, second))
        for turn in turns:
            assert turn.status == "completed" and turn.voice_to_voice_s is not None, turn.types()
            latencies.append(turn.voice_to_voice_s)
            print(
                f"  2 sessions: {turn.user_transcript!r} -> {turn.reply_transcript!r} "
                f"{1000 * turn.voice_to_voice_s:.0f} ms"
            )
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=8, help="questions per mode (even)")
    parser.add_argument("--reply", default="piper", help="the server's voice (auto, talker, piper)")
    args = parser.parse_args()

    from audio_io.resample import to_mono_16k
    from training.teacher import teacher_voice, trim_silence

    teacher = teacher_voice(steady=True)
    speeches = []
    for i in range(args.turns):
        utterance = teacher.speak(QUESTIONS[i % len(QUESTIONS)])
        speeches.append(to_mono_16k(trim_silence(utterance.samples), utterance.sample_rate))
    results = {"load_1min_before": os.getloadavg()[0], "cpus": os.cpu_count(), "reply": args.reply}
    with serve_process("--reply", args.reply) as served:
        asyncio.run(ask(served.port, speeches[0]))  # warm-up, not counted
        for name, run in (("one_session", one_at_a_time), ("two_sessions", two_at_once)):
            cpu, wall, seen = served.cpu_seconds(), time.monotonic(), len(served.turn_metrics())
            latencies = asyncio.run(run(served.port, speeches))
            server = served.turn_metrics()[seen:]  # the server's own stamps of the same turns
            results[name] = {
                **summary(latencies),
                "server_p50_ms": {
                    stage: round(1000 * statistics.median(m[stage] for m in server))
                    for stage in ("voiceToVoiceS", "turnWaitS", "firstTextS", "firstAudioS", "playoutS")
                },
                "server_cpu_s_per_turn": round((served.cpu_seconds() - cpu) / len(latencies), 2),
                "wall_s": round(time.monotonic() - wall, 1),
            }
    results["load_1min_after"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
