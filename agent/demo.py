"""``ttt demo`` (``make run``): a spoken example conversation with the agent, and its latency summary.

The Piper teacher voices a few questions into a WAV, which ``ttt chat --input ... --record ...``
plays as a live microphone; the stereo recording (left: the questions, right: the agent) is kept.
"""

from __future__ import annotations

from pathlib import Path

from agent.chat import run_chat
from agent.settings import Settings

DEMO_QUESTIONS = [
    "Hi! What is the capital of France?",
    "How many days are in a week?",
    "Thanks, that is all for today.",
]
DEMO_GAP_S = 7.0  # silence after each question: room for the answer
DEMO_DIR = Path("runs/demo")


def run_demo(settings: Settings, out: Path = DEMO_DIR, reply: str | None = None) -> int:
    """Voice the questions, talk them through with the agent, print the turns and the latency summary."""
    from training.teacher import write_conversation

    out.mkdir(parents=True, exist_ok=True)
    questions, recording, metrics = out / "questions.wav", out / "conversation.wav", out / "metrics.jsonl"
    print(f"voicing {len(DEMO_QUESTIONS)} questions with the Piper teacher voice into {questions}")
    write_conversation(DEMO_QUESTIONS, questions, gap_s=DEMO_GAP_S)
    print(f"ttt chat --input {questions} --record {recording} --metrics {metrics}  (in real time)\n")
    return run_chat(settings, str(questions), str(recording), str(metrics), reply)
