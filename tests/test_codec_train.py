"""Codec training mechanics on a tiny real corpus: losses, checkpoints, resume, export."""

from __future__ import annotations

import json

import pytest

from model.codec import CodecConfig, load_codec
from training.synth import SynthConfig, synthesize
from training.train_codec import TrainConfig, phoneme_ids, train


def test_phoneme_ids_drop_stress_and_punctuation():
    vocab = CodecConfig().phonemes
    ids = phoneme_ids("həlˈoʊ, wˈɜːld!", vocab)
    assert len(ids) == len("həloʊwɜːld") and min(ids) >= 1


@pytest.mark.slow
def test_train_resume_and_export(tmp_path, teacher):
    corpus = tmp_path / "corpus"
    texts = ["Good morning.", "Set a timer for five minutes.", "What is the weather like?", "Yes, please."]
    synthesize(corpus, SynthConfig(workers=1, shard_size=4), texts=texts)
    small = CodecConfig(enc_dim=64, dec_dim=64, dec_mel_dim=32, voc_dim=32, enc_blocks=1, dec_blocks=1)
    cfg = TrainConfig(batch=2, val_items=1, val_stride=2, val_every=2, voc_crop=3200)
    run, export = tmp_path / "run", tmp_path / "export"
    first = train(str(corpus), str(run), minutes=5, steps=2, cfg=cfg, codec_cfg=small, export=str(export))
    assert first["step"] == 2 and (run / "last.pt").is_file()
    second = train(str(corpus), str(run), minutes=5, steps=4, cfg=cfg, export=str(export))
    assert second["step"] == 4  # resumed at 2, did 2 more
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "val_mel_l1" in r] == [2, 4]
    assert all(len(r["code_ppl"]) == small.groups for r in logged if "code_ppl" in r)
    if (export / "codec.safetensors").is_file():  # exported only when the codes did not collapse
        assert load_codec(export / "codec.safetensors").config.enc_dim == 64
