"""``ttt eval chat``: does the talker still answer like its backbone? Simple questions, expected keywords.

Each line of the question file is ``question | keyword, keyword``. The untouched backbone answers
with Hugging Face's greedy ``generate``; the talker answers in its own interleaved layout (its text
is written between the audio spans it diffuses, as in a conversation), greedy too. An answer is
right when it contains one of its keywords as whole words (after the WER normalisation, so "7"
and "seven" both count). Accuracy is the share of right answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

QUESTIONS = Path(__file__).resolve().parent / "chat_questions.txt"
SYSTEM = "Answer in one short sentence."
MAX_TOKENS = 40


def read_questions(path: str | Path | None = None) -> list[tuple[str, list[str]]]:
    """(question, keywords) pairs of a question file."""
    from training.synth import read_sentence_file

    pairs = []
    for line in read_sentence_file(path or QUESTIONS, what="question file", hint="pass --questions FILE"):
        question, _, keys = line.partition("|")
        if not keys.strip():
            raise ValueError(f"question file line {line!r} has no '| keyword' part")
        pairs.append((question.strip(), [k.strip() for k in keys.split(",") if k.strip()]))
    return pairs


def is_right(answer: str, keywords: list[str]) -> bool:
    """Whether ``answer`` holds one of ``keywords`` as whole words (both sides normalised)."""
    from training.wer import normalise_text

    words = f" {normalise_text(answer)} "
    return any(f" {normalise_text(k)} " in words for k in keywords)


def messages_for(question: str) -> list[dict[str, str]]:
    """The chat a question is asked in."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@torch.inference_mode()
def backbone_answer(backbone, question: str) -> str:
    """The untouched backbone's greedy answer."""
    tok = backbone.tokenizer
    ids = tok.apply_chat_template(messages_for(question), add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = backbone.model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def talker_answer(talker, question: str) -> str:
    """The talker's greedy answer, written between the spans it diffuses."""
    from model.generate import GenerationOptions, TextDelta

    options = GenerationOptions(max_new_tokens=MAX_TOKENS)
    events = talker.stream(messages_for(question), None, options=options)
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def run_eval_chat(args: argparse.Namespace, settings) -> int:
    """``ttt eval chat``: accuracy of the backbone and of each talker checkpoint, one JSON line each."""
    from model.backbone import load_backbone
    from model.codec import load_codec
    from model.talker import load_talker

    questions = read_questions(args.questions)
    backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    answers = {"backbone": [backbone_answer(backbone, q) for q, _ in questions]}
    codec = load_codec()
    for path in args.checkpoint or [None]:
        talker, _ = load_talker(settings, codec, backbone=backbone, checkpoint=path)
        answers[str(path or "shipped")] = [talker_answer(talker, q) for q, _ in questions]
    for name, said in answers.items():
        right = [is_right(a, keys) for a, (_, keys) in zip(said, questions, strict=True)]
        print(json.dumps({"model": name, "questions": len(right), "accuracy": round(sum(right) / len(right), 3)}))
        if args.answers:
            with Path(args.answers).open("a") as f:
                for (q, keys), a, ok in zip(questions, said, right, strict=True):
                    row = {"model": name, "question": q, "keywords": keys, "answer": a, "right": ok}
                    f.write(json.dumps(row) + "\n")
    return 0
