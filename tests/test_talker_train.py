"""The talker's data and training pipeline on real parts: teacher audio, codec alignment, SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

from training.eval_chat import is_right, read_questions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["Good morning to you.", "Set a timer for five minutes.", "Yes, please.", "Call Anna back at noon."]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, teacher):
    from training.align import align_corpus
    from training.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("talker_data")
    synthesize(root / "corpus", SynthConfig(workers=1, shard_size=4), texts=TEXTS)
    manifest = align_corpus(root / "corpus", root / "aligned")
    return root / "aligned", manifest


@pytest.mark.slow
def test_alignment_covers_every_frame(aligned):
    from model.chunks import chunk_words
    from model.codec.codec import PHONEMES
    from training.align import SILENCE, read_aligned
    from training.synth import read_corpus

    folder, manifest = aligned
    assert manifest["items"] == len(TEXTS) and manifest["groups"] == 8
    assert manifest["aligned_by"] == {"teacher": len(TEXTS), "ctc": 0}  # the corpus has Piper's timing
    said = {it.id: it.phonemes for it in read_corpus(folder.parent / "corpus")}  # Piper's own phonemes
    for item in read_aligned(folder):
        assert [c["text"] for c in item.chunks] == [" ".join(c) for c in chunk_words(item.text.split())]
        assert sum(c["frames"] for c in item.chunks) == len(item.codes) and min(c["frames"] for c in item.chunks) >= 1
        onsets = [c["onset"] for c in item.chunks]
        assert onsets == sorted(onsets)
        # every frame is labelled silence or one of the clip's own phonemes (ours per chunk, or the teacher's
        # per sentence: "to" may be tuː in a chunk and tə in the sentence), and most frames are speech
        assert item.phones is not None and len(item.phones) == len(item.codes)
        spelled = "".join(chunk["phonemes"] for chunk in item.chunks) + said[item.id]
        own = {PHONEMES.index(c) + 1 for c in spelled if c in PHONEMES}
        assert set(item.phones.tolist()) <= own | {SILENCE}
        assert (item.phones != SILENCE).mean() > 0.5


@pytest.mark.slow
def test_train_resume_export_and_speak(aligned, tmp_path):
    from safetensors.torch import load_file

    from agent.settings import Settings
    from model.assets import AssetError
    from model.codec import load_codec
    from model.say import say
    from model.talker import load_talker
    from training.train_talker import TrainConfig, train

    folder, _ = aligned
    run = tmp_path / "run"
    cfg = TrainConfig(
        positions_per_step=150, row_length=256, val_every=2, warmup=2, log_every=1, speech_every=4, text_dropout=0.5
    )
    first = train(str(folder), str(run), minutes=5, steps=2, cfg=cfg)
    reported = {"audio_t1", "audio_t1_shuffled", "text_gap", "val_text_kl", "val_phone", "phone_t1_acc"}
    reported |= {"audio_t1_null", "null_gap"}  # the text hidden (the run trains for guidance)
    assert first["step"] == 2 and reported <= set(first)
    for name in ("last.pt", "last.safetensors", "log.jsonl"):
        assert (run / name).is_file(), name
    second = train(str(folder), str(run), minutes=5, steps=4, cfg=cfg)
    assert second["step"] == 4  # resumed at 2, did 2 more
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_audio" in r] == [2, 4]
    listened = [r for r in records if "wer_single_span" in r]  # the listening test, on the held-out clip
    assert [r["step"] for r in listened] == [4] and listened[0]["wer_codec"] <= 50
    assert listened[0]["speech_text"] in TEXTS and listened[0]["wer_say"] >= 0
    assert (run / "loss.png").is_file()
    seeded = tmp_path / "seeded"  # a new run seeded from the first one's weights, before any step
    train(str(folder), str(seeded), minutes=0, cfg=cfg, init=str(run / "last.safetensors"))
    before, after = load_file(run / "last.safetensors"), load_file(seeded / "last.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    on = train(str(folder), str(seeded), minutes=5, steps=6, cfg=cfg)  # counts on from the seed's step 4
    assert on["step"] == 6
    seeded_log = [json.loads(line) for line in (seeded / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in seeded_log if "val_audio" in r] == [6]
    curve = torch.load(seeded / "last.pt", weights_only=False)["history"]
    assert [r["step"] for r in curve if "val_audio" in r] == [2, 4, 6]  # the seed's curve, continued
    with pytest.raises(AssetError, match="--init"):
        train(str(folder), str(tmp_path / "none"), minutes=0, cfg=cfg, init=str(tmp_path / "missing.safetensors"))
    codec = load_codec()
    talker, trained = load_talker(Settings(), codec, checkpoint=run / "last.safetensors")
    assert trained
    result = say(talker, codec, "Good morning.")
    assert result.audio_s > 0 and torch.isfinite(torch.as_tensor(result.samples)).all()

    from model.generate import GenerationOptions
    from training.eval_tts import evaluate_tts
    from training.evaluate import DevSet, Transcriber

    transcriber = Transcriber.load(threads=1)
    dev = DevSet.voice(["Good morning to you.", "Yes, please."], transcriber)
    rows: list[dict] = []
    png = tmp_path / "spec.png"
    metrics = evaluate_tts(talker, codec, dev, transcriber, GenerationOptions(), rows, png=str(png))
    assert metrics["sentences"] == 2 and metrics["wer_teacher"] <= 20 and metrics["wer_codec"] <= 50
    assert {"wer_say", "wer_gap", "wer_single_span", "first_audio_s_median", "rtf_median"} <= set(metrics)
    assert len(rows) == 2 and png.is_file()


def test_data_align_refuses_a_missing_corpus(tmp_path):
    from training.align import align_corpus

    with pytest.raises(FileNotFoundError, match="ttt data synth"):
        align_corpus(tmp_path / "none", tmp_path / "out")


def test_chat_answers_are_scored_by_whole_keywords():
    assert is_right("The capital of France is Paris.", ["paris"])
    assert is_right("A week has 7 days.", ["seven", "7"])
    assert not is_right("Parisians love bread.", ["paris"])
    questions = read_questions()
    assert len(questions) == 50 and all(keys for _, keys in questions)
