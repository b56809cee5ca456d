"""``ttt demo``: a short conversation voiced by the Piper teacher, heard as if from a microphone."""

from __future__ import annotations

import time

from agent.bench import listen_file, turn_latencies
from agent.listen import Listener, format_event
from agent.settings import Settings

DEMO_TURNS: list[tuple[str, ...]] = [
    ("Hi! Can you hear me?",),
    ("Please set a reminder to water the plants on Sunday.",),
    ("My phone number is", "five five five, one two three four."),  # a pause inside an unfinished phrase
    ("Thanks, that is all for today.",),
]


def run_demo(settings: Settings) -> int:
    """``ttt demo``: voice a short conversation with the teacher, hear it, print events and a summary."""
    import tempfile

    from training.teacher import write_conversation

    with tempfile.TemporaryDirectory(prefix="ttt-demo-") as tmp:
        path = f"{tmp}/conversation.wav"
        print(f"voicing {len(DEMO_TURNS)} turns with the Piper teacher voice (one has a pause mid-phrase)...")
        spans = write_conversation(DEMO_TURNS, path)
        print("loading the VAD, whisper and the end-of-turn LLM...")
        started = time.perf_counter()
        listener = Listener.from_settings(settings)
        print(f"loaded in {time.perf_counter() - started:.1f} s; listening (as fast as possible, audio-time stamps):\n")
        try:
            result = listen_file(listener, path)
        finally:
            listener.close()
    for event in result.events:
        print(format_event(event))
    latencies = turn_latencies(result.turns, spans)
    print(f"\n{len(result.turns)} turns heard ({len(DEMO_TURNS)} spoken):")
    for i, (turn, latency) in enumerate(zip(result.turns, latencies, strict=True)):
        when = "before the speech ended" if latency is None else f"{1000 * latency:.0f} ms after the speech ended"
        print(f"  {i + 1}. {turn.text!r}  end of turn {when}")
    print(f"real-time factor {result.rtf:.2f} ({result.wall_s:.1f} s for {result.audio_s:.1f} s of audio)")
    return 0
