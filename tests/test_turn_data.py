from __future__ import annotations

import random

import pytest

from training.synth import normalise
from training.turn_data import (
    CONVERSATION_QUESTIONS,
    OPEN_WORDS,
    TURN_SHORT_QUESTIONS,
    build_examples,
    cuts,
    dev_sets,
    read_pause_cases,
    read_turns,
)


@pytest.fixture(scope="module")
def examples():
    return build_examples(written=400, templates=200, numbers=200, short=200, questions=200)


def test_examples_have_both_labels_and_whisper_style(examples):
    complete = [e for e in examples if e.complete]
    unfinished = [e for e in examples if not e.complete]
    assert len(unfinished) > len(complete) > 800
    # Cut after the words that cannot end an utterance, often with whisper's full stop.
    endings = [e.text.rstrip(".,").split()[-1].lower() for e in unfinished]
    assert sum(w in OPEN_WORDS for w in endings) > len(unfinished) / 3
    assert sum(e.text.endswith(".") for e in unfinished) > len(unfinished) / 3
    assert any(any(c.isdigit() for c in e.text) for e in unfinished)
    assert any(len(e.text.split()) == 1 for e in complete)  # one-word answers


def test_held_out_sets_stay_out_of_training(examples):
    heldout = {normalise(f + " " + c) for f, c in read_pause_cases()} | {normalise(t) for t in read_turns()}
    heldout |= {normalise(f) for f, _ in read_pause_cases()}
    pauses, completes = dev_sets()
    heldout |= {normalise(f + " " + c) for f, c in pauses} | {normalise(t) for t in completes}
    heldout |= {normalise(t) for t in read_turns(TURN_SHORT_QUESTIONS) + read_turns(CONVERSATION_QUESTIONS)}
    texts = {normalise(e.text) for e in build_examples()}
    assert not texts & heldout


def test_short_questions_are_complete_turns_and_their_cuts_are_not(examples):
    questions = [e for e in examples if e.complete and e.text.endswith("?") and len(e.text.split()) <= 8]
    assert len(questions) > 100
    # "What do owls eat?" is whole, "What do owls" is not: both forms are in the data.
    stems = {" ".join(e.text.split()[:3]) for e in examples if not e.complete}
    assert sum(" ".join(q.text.split()[:3]) in stems for q in questions) > len(questions) / 4


def test_cuts_are_prefixes_at_word_boundaries():
    sentence = "Please send the report to Anna before Friday."
    for prefix, weight in cuts(sentence, random.Random(0), 6):
        bare = prefix.rstrip(".,").removesuffix("..")
        assert sentence.startswith(bare) and bare != sentence.rstrip(".")
        assert weight == (1.0 if bare.split()[-1].lower() in OPEN_WORDS else 0.5)
    assert cuts("Yes.", random.Random(0), 3) == []


def test_eval_sets_are_big_enough_and_well_formed(tmp_path):
    assert len(read_pause_cases()) >= 50 and len(read_turns()) >= 50
    pauses, completes = dev_sets()
    assert len(pauses) == 40 and len(completes) == 40
    bad = tmp_path / "bad.txt"
    bad.write_text("a fragment without its continuation\n")
    with pytest.raises(ValueError, match="fragment \\| continuation"):
        read_pause_cases(bad)


def test_comma_sentences_have_a_comma_after_three_words():
    from training.synth import read_sentence_file
    from training.turn_data import HELDOUT_SENTENCES, comma_sentences

    held_out = set(read_sentence_file(HELDOUT_SENTENCES, "held-out sentence file"))
    sentences = comma_sentences()
    assert len(sentences) >= 30 and set(sentences) <= held_out
    for sentence in sentences:
        assert "," in " ".join(sentence.split()[2:-1]), sentence


def test_voiced_examples_are_what_whisper_wrote_for_fragments_and_whole_sentences():
    from types import SimpleNamespace

    import numpy as np

    from training.turn_data import VOICED_GROUP_BASE, voiced_examples

    class Voice:  # says each text as its length in samples, so the recognizer can tell them apart
        sample_rate = 16_000

        def speak(self, text):
            return SimpleNamespace(samples=np.full(160 * len(text), 0.5, np.float32))

    spoken: list[int] = []

    class Asr:
        def decode(self, samples):
            spoken.append(len(samples))
            return SimpleNamespace(confident=f"heard {len(samples)}.")

    examples = voiced_examples(Voice(), Asr(), count=20)
    fragments = [e for e in examples if not e.complete]
    assert len(fragments) == 20 and all(e.weight == 1.0 for e in fragments)
    assert 5 <= sum(e.complete for e in examples) <= 20  # every second source sentence, voiced whole
    assert [e.text for e in examples] == [f"heard {n}." for n in spoken]  # whisper's words, not ours
    assert all(e.group >= VOICED_GROUP_BASE for e in examples)
    # A fragment is the start of its sentence: shorter than the sentence voiced whole.
    length = {(e.group, e.complete): int(e.text.split()[1].rstrip(".")) for e in examples}
    pairs = [(length[g, False], length[g, True]) for g, done in length if done and (g, False) in length]
    assert pairs and all(fragment < whole for fragment, whole in pairs)
