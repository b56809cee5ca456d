"""Where a long conversation's resident memory goes: N spoken turns through the whole loop, RSS by turn.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_growth.py --turns 100 --gap-s 3

The cascade voice answers scripted questions in real time (``ttt bench --turns`` with a short gap,
so 100 turns take about 9 minutes). Prints resident memory every 5 turns, read as ``ttt bench
--turns`` reads it (after each turn, before the next question), and the Python allocations that
grew most between turn 5 and the last turn (tracemalloc sees numpy, not torch or CTranslate2: a
growth it does not show is native). Results: benchmarks/memory.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

from agent.bench_chat import QUESTIONS, memory_by_turn, watch_memory
from agent.chat import build_voice, converse
from agent.listen import Listener
from agent.settings import load_settings, set_torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--gap-s", type=float, default=3.0, help="silence after each question")
    parser.add_argument("--reply", default="piper", choices=["piper", "talker"])
    args = parser.parse_args()
    from training.teacher import teacher_voice, write_conversation

    settings = load_settings()
    set_torch_threads(settings)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    listener = Listener.from_settings(settings, likely_speech=True)
    tmp = Path(tempfile.mkdtemp(prefix="ttt-memory-"))
    spans = write_conversation(questions, tmp / "user.wav", gap_s=args.gap_s, voice=teacher_voice(steady=True))
    voice, _, tokenizer = build_voice(settings, args.reply)
    tracemalloc.start(8)
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    memory: list[tuple[float, float]] = []
    marks = (5, args.turns)  # 1-based turns whose Python allocations are compared

    async def snapshot() -> None:
        start = time.monotonic()
        for k in marks:
            until = spans[k][0] if k < len(spans) else spans[-1][1] + args.gap_s
            await asyncio.sleep(max(0.0, until - 0.5 - (time.monotonic() - start)))
            gc.collect()
            snapshots[k] = tracemalloc.take_snapshot()

    async def run() -> None:
        watchers = [asyncio.create_task(watch_memory(memory)), asyncio.create_task(snapshot())]
        try:
            user, record = str(tmp / "user.wav"), str(tmp / "rec.wav")
            await converse(listener, voice, settings, tokenizer, user, record, quiet=True)
        finally:
            for watcher in watchers:
                watcher.cancel()

    asyncio.run(run())
    listener.close()
    for k, mb in memory_by_turn(memory, spans).items():
        if k % 5 == 0 or k == args.turns:
            print(f"turn {k}: {mb:.1f} MB resident")
    if len(snapshots) == 2:
        first, last = (snapshots[k] for k in marks)
        print(
            f"Python allocations: {sum(s.size for s in first.statistics('filename')) / 1e6:.1f} MB at turn "
            f"{marks[0]}, {sum(s.size for s in last.statistics('filename')) / 1e6:.1f} MB at turn {marks[1]}"
        )
        for stat in last.compare_to(first, "traceback")[:5]:
            print(f"  {stat.size_diff / 1e6:+.2f} MB  {stat.traceback.format()[-2].strip()}")


if __name__ == "__main__":
    main()
