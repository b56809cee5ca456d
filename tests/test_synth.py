"""The synthetic corpus: texts, dev-set filtering, shards, manifest and resuming."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from training import synth
from training.synth import DevFilter, SynthConfig, Timing, read_corpus, split_sentences, synthesize, template_sentence


def test_dev_filter_rejects_exact_and_near_duplicates(tmp_path):
    dev = tmp_path / "dev.txt"
    dev.write_text("Please set a timer for ten minutes.\nThe meeting has been moved to Thursday afternoon.\n")
    f = DevFilter(dev)
    assert not f.allows("Please set a timer for ten minutes.")
    assert not f.allows("please, set a timer for TEN minutes!")
    assert not f.allows("The meeting has been moved to Thursday afternoon again.")
    assert f.allows("Please add milk and eggs to my shopping list.")


def test_split_sentences_keeps_clean_spoken_sentences():
    reply = "**Tips:**\n1. Drink water every day.\n2. Sleep well!\nThis one is cut off because the reply"
    assert split_sentences(reply) == ["Drink water every day.", "Sleep well!"]
    assert split_sentences("Hi.") == []  # one word: too short
    assert split_sentences(" ".join(["word"] * 30) + ".") == []  # too long


def test_templates_are_varied_and_bounded():
    rng = random.Random(3)
    texts = [template_sentence(rng) for _ in range(300)]
    assert len(set(texts)) > 250
    assert all(2 <= len(t.split()) <= 25 for t in texts)
    assert any("?" in t for t in texts) and any(c.isdigit() for t in texts for c in t)


@pytest.mark.slow
def test_synth_builds_shards_and_resumes(tmp_path, monkeypatch, teacher):
    texts = ["Hello there.", "It is 3:45 pm on Monday.", "Do you want tea, coffee or water?"]
    config = SynthConfig(workers=1, shard_size=2)
    manifest = synthesize(tmp_path, config, texts=texts)
    assert manifest["items"] == 3 and len(manifest["shards"]) == 2
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert 0.0003 < manifest["hours"] < 0.01
    items = read_corpus(tmp_path)
    assert [it.text for it in items] == texts
    for it in items:
        assert it.audio.dtype == np.float32 and np.abs(it.audio).max() > 0.05  # real speech, 16 kHz
        assert 0.5 < len(it.audio) / 16000 < 6
        assert sum(ch.isalpha() for ch in it.phonemes) >= 3  # espeak phonemes came along
    # every line carries the teacher's timing of its symbols, which covers exactly its audio
    lines = [json.loads(line) for jsonl in sorted(tmp_path.glob("shard_*.jsonl")) for line in jsonl.open()]
    for line, it in zip(lines, items, strict=True):
        timing = line["timing"]
        assert it.timing == Timing(timing["symbols"], timing["ends"])
        assert len(timing["symbols"]) == len(timing["ends"]) and timing["ends"][-1] == line["samples"]
        assert np.all(np.diff([0] + timing["ends"]) >= 0) and timing["ends"][-2] < line["samples"]
        # Piper's symbols are the line's phonemes, each sentence between "^" and "$"
        assert "".join(timing["symbols"]).replace("$^", " ").strip("^$") == line["phonemes"]

    # a second run finds every shard finished and voices nothing
    def fail(job):
        raise AssertionError(f"shard {job[1]} was voiced again")

    monkeypatch.setattr(synth, "_voice_shard", fail)
    assert synthesize(tmp_path, config, texts=texts) == manifest
    # a missing shard is redone, and only that one
    (tmp_path / "shard_00001.jsonl").unlink()
    monkeypatch.undo()
    calls = []
    original = synth._voice_shard
    monkeypatch.setattr(synth, "_voice_shard", lambda job: calls.append(job[1]) or original(job))
    assert synthesize(tmp_path, config, texts=texts)["items"] == 3
    assert calls == [1]


def test_timing_is_kept_in_16k_samples_and_optional():
    timing = Timing.at_16k([("^", 2205), ("h", 4410), ("$", 2205)], 22_050, 6400)  # 0.1 s, 0.2 s, 0.1 s
    assert timing == Timing(["^", "h", "$"], [1600, 4800, 6400])
    assert Timing.at_16k([("^", 2205), ("h", 4410), ("$", 2205)], 22_050, 6399).ends == [1600, 4800, 6399]
    assert Timing.from_json(json.loads(json.dumps(timing.as_json()))) == timing
    assert Timing.from_json(None) is None  # a corpus voiced without timing


def test_default_filter_keeps_dev_and_heldout_sentences_out_of_training():
    from training.synth import DEV_SENTENCES, HELDOUT_SENTENCES

    f = DevFilter()
    assert HELDOUT_SENTENCES.is_file()  # in the repo; the dev set lives outside it, in ../shared
    for path in (p for p in (DEV_SENTENCES, HELDOUT_SENTENCES) if p.is_file()):
        first = path.read_text().splitlines()[0]
        assert not f.allows(first), path


def test_written_sentences_come_first_once_and_extend_a_finished_corpus(tmp_path):
    from training.synth import HELDOUT_SENTENCES, build_texts

    heldout = HELDOUT_SENTENCES.read_text().splitlines()[0]
    written = tmp_path / "written.txt"
    quokka = "The quokka nibbled clover by the fjord."
    written.write_text(f"{quokka}\n\n{heldout}\n{quokka}\n")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    config = SynthConfig(hours=0.01, llm_fraction=0.0, sentences=str(written))
    texts = build_texts(config, corpus)
    assert texts[0] == {"id": 0, "text": quokka, "source": "written"}
    assert all(t["source"] == "template" for t in texts[1:]) and len(texts) > 3  # templates fill the hours
    assert heldout not in [t["text"] for t in texts]  # the evaluation filter applies to written text too

    before = (corpus / "texts.jsonl").read_text()
    assert build_texts(config, corpus) == texts and (corpus / "texts.jsonl").read_text() == before
    written.write_text("Saffron and sumac scented the bazaar.\n")  # the hours are reached: only this is added
    grown = build_texts(config, corpus)
    assert grown[:-1] == texts and grown[-1]["text"] == "Saffron and sumac scented the bazaar."

    config.sentences = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="one sentence per line"):
        build_texts(config, corpus)
