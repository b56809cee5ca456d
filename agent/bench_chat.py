"""``ttt bench --turns N``: scripted spoken turns through the whole loop in real time, per reply voice.

Each turn is a question voiced by the Piper teacher and followed by ``gap_s`` of silence, played as
a live microphone; the agent answers through a virtual speaker on the same clock. Reported per
voice (the unified talker, the Piper cascade, side by side from one run): p50 and p90 of
voice-to-voice latency and of each stage from the events, voice-to-voice measured again on the
stereo recording, replies that started while the user still talked, resident memory by turn, and
the latency drift between the first and the last 20 turns.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.chat import build_voice, converse
from agent.events import TurnMetrics
from agent.listen import Listener
from agent.memory import resident_mb
from agent.metrics import percentile, summarize
from agent.settings import Settings
from training.turn_data import CONVERSATION_QUESTIONS, read_turns

QUESTIONS = read_turns(CONVERSATION_QUESTIONS)  # held out of the end-of-turn head's training text
LOUD = 0.02  # amplitude above which the recording counts as sound
GAP_BRIDGE_S = 0.3  # silences shorter than this inside a reply do not split it


def sound_starts(audio: np.ndarray, rate: int = 16_000) -> list[float]:
    """Seconds where sound starts after at least GAP_BRIDGE_S of quiet."""
    loud = np.flatnonzero(np.abs(audio) > LOUD)
    if not len(loud):
        return []
    gaps = np.flatnonzero(np.diff(loud) > GAP_BRIDGE_S * rate)
    return [loud[0] / rate] + [loud[i + 1] / rate for i in gaps]


def recording_latencies(recording: np.ndarray, spans: list[tuple[float, float]]) -> tuple[list[float | None], int]:
    """Per question: first agent sound after its end minus its end (None: no answer before the next question).

    Also counts agent sounds that started while the user was speaking.
    """
    starts = sound_starts(recording[:, 1])
    latencies: list[float | None] = []
    for i, (_, end) in enumerate(spans):
        following = spans[i + 1][0] if i + 1 < len(spans) else float("inf")
        after = [s for s in starts if end <= s < following]
        latencies.append(after[0] - end if after else None)
    overlapping = sum(any(a <= s < b for a, b in spans) for s in starts)
    return latencies, overlapping


def memory_by_turn(memory: list[tuple[float, float]], spans: list[tuple[float, float]]) -> dict[int, float]:
    """Resident MB after each turn k (1-based): the first sample once the next question starts.

    Taken before the next question, so turn k's reply has played; the last turn's sample comes from
    the silence after it, before the recording is assembled (which briefly holds the whole audio).
    """
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    last_gap = statistics.median(gaps) if gaps else 2.5
    out = {}
    for k, (_, end) in enumerate(spans, start=1):
        until = spans[k][0] if k < len(spans) else end + last_gap
        before = [mb for t, mb in memory if t <= until]
        if before and memory[0][0] <= end:
            out[k] = before[-1]
    return out


def _p(values: list[float], q: float) -> int | None:
    return round(1000 * percentile(values, q)) if values else None


def bench_turns(settings: Settings, turns: int, replies: list[str], gap_s: float = 9.0, png: str | None = None) -> dict:
    """Run the benchmark for each reply voice; print and return the side-by-side summary."""
    import soundfile as sf

    from training.teacher import teacher_voice, write_conversation

    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(turns)]
    listener = Listener.from_settings(settings, likely_speech=True)
    results: dict[str, Any] = {"bench": "turns", "turns": turns, "gap_s": gap_s, "cores": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory(prefix="ttt-bench-turns-") as tmp:
            user = Path(tmp) / "user.wav"
            spans = write_conversation(questions, user, gap_s=gap_s, voice=teacher_voice(steady=True))
            for reply in replies:
                voice, name, tokenizer = build_voice(settings, reply)
                record = Path(tmp) / f"{name}.wav"
                started = time.perf_counter()
                turns_done, memory = asyncio.run(_run_voice(listener, voice, settings, tokenizer, user, record))
                recording, _ = sf.read(str(record), dtype="float32")
                results[name] = _voice_summary(turns_done, recording, spans, memory, started)
                print(json.dumps({name: results[name]}), flush=True)
    finally:
        listener.close()
    results["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if png:
        plot(results, [r for r in results if isinstance(results[r], dict)], png)
    print(json.dumps(results))
    return results


async def _run_voice(
    listener: Listener, voice: Any, settings: Settings, tokenizer: Any, user: Path, record: Path
) -> tuple[list[TurnMetrics], list[tuple[float, float]]]:
    """One conversation over ``user``; its per-turn metrics and (seconds, resident MB) once a second."""
    memory: list[tuple[float, float]] = []
    watcher = asyncio.create_task(watch_memory(memory))
    try:
        result = await converse(listener, voice, settings, tokenizer, str(user), str(record), quiet=True)
    finally:
        watcher.cancel()
    return result.metrics.turns, memory


async def watch_memory(memory: list[tuple[float, float]]) -> None:
    """Resident memory once a second, with the seconds since the conversation started."""
    start = time.monotonic()
    while True:
        memory.append((time.monotonic() - start, resident_mb()))
        await asyncio.sleep(1.0)


def _voice_summary(
    turns: list[TurnMetrics],
    recording: np.ndarray,
    spans: list[tuple[float, float]],
    memory: list[tuple[float, float]],
    started: float,
) -> dict[str, Any]:
    summary = summarize(turns)
    latencies, overlapping = recording_latencies(recording, spans)
    heard = [x for x in latencies if x is not None]
    summary["recording_voice_to_voice_p50_ms"] = _p(heard, 0.5)
    summary["recording_voice_to_voice_p90_ms"] = _p(heard, 0.9)
    summary["answered_on_recording"] = len(heard)
    summary["replies_started_while_user_spoke"] = overlapping
    summary["per_turn_ms"] = [None if x is None else round(1000 * x) for x in latencies]
    values = [m.voice_to_voice_s for m in turns]
    if len(values) >= 40:
        first, last = statistics.median(values[:20]), statistics.median(values[-20:])
        summary["drift_last20_vs_first20"] = round(last / first - 1, 3)
    by_turn = memory_by_turn(memory, spans)
    if by_turn:
        marks = {k: round(mb, 1) for k, mb in by_turn.items() if k % 10 == 0 or k == len(spans)}
        summary["rss_mb_by_turn"] = {str(k): mb for k, mb in marks.items()}
        if 10 in by_turn:
            summary["rss_mb_turn10"] = round(by_turn[10], 1)
            summary["rss_mb_last_turn"] = round(by_turn[max(by_turn)], 1)
            summary["rss_growth_mb_turn10_to_last"] = round(by_turn[max(by_turn)] - by_turn[10], 1)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    return summary


def plot(results: dict[str, Any], names: list[str], path: str) -> None:
    """Voice-to-voice latency per turn (from the recording), one row per voice, with its p50 as a line."""
    from PIL import Image, ImageDraw

    width, row = 900, 220
    image = Image.new("RGB", (width, row * len(names)), "white")
    draw = ImageDraw.Draw(image)
    for r, name in enumerate(names):
        values = results[name]["per_turn_ms"]
        top = r * row
        known = [v for v in values if v is not None]
        scale = max([1500, *known]) * 1.1
        draw.text((10, top + 5), f"{name}: voice-to-voice per turn (ms), p50 line; top = {scale:.0f} ms", fill="black")
        draw.line((40, top + row - 20, width - 10, top + row - 20), fill="gray")
        for i, v in enumerate(values):
            x = 40 + (width - 60) * (i + 0.5) / max(1, len(values))
            if v is None:
                draw.text((x - 3, top + 25), "x", fill="red")
                continue
            y = top + row - 20 - (row - 50) * v / scale
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill="navy")
        if known:
            y = top + row - 20 - (row - 50) * statistics.median(known) / scale
            draw.line((40, y, width - 10, y), fill="orange")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
