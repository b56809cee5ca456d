"""Short complete questions against end-of-turn heads: P(end of turn) and the silence each waits for.

The held-out sets: training/conversation_questions.txt (what `ttt bench --turns` asks) and
training/turn_short_questions.txt. Both are kept out of the head's training text. Every head given
is scored on the same questions in one run, as written by whisper (its final "?" is stripped by the
scorer, as the listener's is), with each head's own wait policy.

    .venv/bin/python benchmarks/turn_short_questions.py [--head OLD.safetensors] [--head NEW.safetensors]

Without --head, the shipped head (model/checkpoints/turn_head.safetensors).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from agent.settings import load_settings
from agent.turn_detector import build_turn_detector
from model.backbone import load_backbone
from training.turn_data import CONVERSATION_QUESTIONS, TURN_SHORT_QUESTIONS, read_turns

SLOW_S = 1.0  # a complete question waiting longer than this is a slow turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", action="append", help="a turn_head.safetensors (its .json beside it); repeatable")
    parser.add_argument("--json", help="write the per-question scores here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = load_settings()
    backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    sets = {"conversation": read_turns(CONVERSATION_QUESTIONS), "short": read_turns(TURN_SHORT_QUESTIONS)}
    heads = args.head or [None]
    scores: dict[str, dict] = {}
    for head in heads:
        turn = copy.deepcopy(settings.turn)
        turn.checkpoint = head
        detector = build_turn_detector(turn, backbone)
        name = head or "shipped"
        scores[name] = {
            q: (p, detector.required_silence(p))
            for questions in sets.values()
            for q in questions
            for p in [detector.probability(q)]
        }
    print("| head | set | questions | P median | P min | wait median | waits over 1 s |")
    print("|---|---|---|---|---|---|---|")
    for name, by_question in scores.items():
        for label, questions in sets.items():
            ps = [by_question[q][0] for q in questions]
            waits = [by_question[q][1] for q in questions]
            slow = sum(w > SLOW_S for w in waits)
            print(
                f"| {name} | {label} | {len(questions)} | {statistics.median(ps):.3f} | {min(ps):.3f} | "
                f"{statistics.median(waits) * 1000:.0f} ms | {slow} |"
            )
    print()
    names = list(scores)
    print("| question | " + " | ".join(f"P ({n})" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for questions in sets.values():
        for q in questions:
            print(f"| {q} | " + " | ".join(f"{scores[n][q][0]:.3f}" for n in names) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {n: {q: {"p": p, "wait_s": w} for q, (p, w) in s.items()} for n, s in scores.items()}, f, indent=1
            )


if __name__ == "__main__":
    main()
