"""Codec training mechanics on a tiny real corpus: losses, checkpoints, resume, export."""

from __future__ import annotations

import json

import pytest

from model.codec import CodecConfig, load_codec
from training.synth import SynthConfig, synthesize
from training.train_codec import TrainConfig, phoneme_ids, train

TINY_SIZES = dict(enc_dim=32, dec_dim=32, dec_mel_dim=16, voc_dim=16, enc_blocks=1, dec_blocks=1)
# one step that changes no weight (lr 0), so a run's weights are exactly what it started from
FROZEN_STEP = dict(batch=2, val_items=1, val_stride=2, val_every=100, voc_crop=3200, lr=0.0)


def train_and_load(corpus, run, cfg: TrainConfig, steps: int, **kwargs) -> dict:
    """Train ``run`` (resuming it if it exists) up to ``steps``; return the ``last.pt`` it saved."""
    import torch

    train(str(corpus), str(run), minutes=5, steps=steps, cfg=cfg, **kwargs)
    return torch.load(run / "last.pt", weights_only=False)


@pytest.fixture
def tiny_corpus(tmp_path, teacher):
    """Four short utterances voiced into a one-shard corpus."""
    corpus = tmp_path / "corpus"
    texts = ["Good morning.", "Yes, please.", "Call Anna.", "No."]
    synthesize(corpus, SynthConfig(workers=1, shard_size=4), texts=texts)
    return corpus


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


def test_vocoder_trains_only_every_nth_step():
    import torch

    from model.codec import SpeechCodec
    from training.train_codec import codec_losses

    torch.manual_seed(0)
    codec = SpeechCodec(CodecConfig(**TINY_SIZES))
    audio = 0.1 * torch.randn(2, 1280 * 4)
    lengths, targets = torch.tensor([1280 * 4, 1280 * 3]), [[1, 2, 3], [4, 5]]
    cfg = TrainConfig(voc_every=2, voc_crop=1600)
    skipped = codec_losses(codec, audio, lengths, targets, cfg, step=1)
    assert "voc_stft" not in skipped
    skipped["loss"].backward()
    assert all(p.grad is None for p in codec.vocoder.parameters())
    trained = codec_losses(codec, audio, lengths, targets, cfg, step=2)
    trained["loss"].backward()
    assert all(p.grad is not None for p in codec.vocoder.parameters())


@pytest.mark.slow
def test_new_run_starts_from_init_weights(tmp_path, tiny_corpus):
    import torch

    from model.codec import SpeechCodec
    from model.codec.codec import save_codec

    torch.manual_seed(1)
    start = SpeechCodec(CodecConfig(**TINY_SIZES))
    save_codec(start, tmp_path / "start.safetensors")
    init = str(tmp_path / "start.safetensors")
    state = train_and_load(tiny_corpus, tmp_path / "run", TrainConfig(**FROZEN_STEP), 1, init=init)
    assert state["codec_config"]["enc_dim"] == 32
    for name, value in start.state_dict().items():
        torch.testing.assert_close(state["model"][name], value.half().float())


@pytest.mark.slow
def test_vocoder_moves_between_codecs_of_any_groups(tmp_path, tiny_corpus):
    import torch

    from model.codec import SpeechCodec
    from model.codec.codec import save_codec

    torch.manual_seed(2)
    donor = SpeechCodec(CodecConfig(groups=4, **TINY_SIZES))
    save_codec(donor, tmp_path / "donor.safetensors")
    cfg, codec_cfg = TrainConfig(**FROZEN_STEP), CodecConfig(groups=2, **TINY_SIZES)
    donor_path = str(tmp_path / "donor.safetensors")
    state = train_and_load(tiny_corpus, tmp_path / "run", cfg, 1, codec_cfg=codec_cfg, vocoder_from=donor_path)
    assert state["codec_config"]["groups"] == 2
    for name, value in donor.vocoder.state_dict().items():
        torch.testing.assert_close(state["model"]["vocoder." + name], value.half().float())


@pytest.mark.slow
def test_validation_and_snapshots_use_the_resumed_weight_average(tmp_path, tiny_corpus):
    import torch
    from safetensors.torch import load_file

    cfg = TrainConfig(**(FROZEN_STEP | dict(lr=1e-2, warmup=1, val_every=2, snapshot_every=2, ema_decay=0.5)))
    run = tmp_path / "run"
    state = train_and_load(tiny_corpus, run, cfg, 2, codec_cfg=CodecConfig(**TINY_SIZES))
    assert int(state["ema"]["n_averaged"]) == 2
    snapshot = load_file(run / "ema_step2.safetensors")
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    for name, value in snapshot.items():
        torch.testing.assert_close(value, averaged[name].half())
    assert any(not torch.equal(averaged[k], state["model"][k]) for k in snapshot)  # the average, not the raw
    for name, value in load_file(run / "last.safetensors").items():  # the run's end: the average too
        torch.testing.assert_close(value, averaged[name].half())

    resumed = train_and_load(tiny_corpus, run, cfg, 3)
    assert int(resumed["ema"]["n_averaged"]) == 3  # the average carried on across the resume


@pytest.mark.slow
def test_adversarial_run_keeps_its_discriminator_across_a_resume(tmp_path, tiny_corpus):
    import torch

    cfg = TrainConfig(**(FROZEN_STEP | dict(lr=1e-3, warmup=1, adv_weight=0.1, adv_frames=32, adv_after=1)))
    run = tmp_path / "run"
    disc = train_and_load(tiny_corpus, run, cfg, 2, codec_cfg=CodecConfig(**TINY_SIZES))["adversary"]["disc"]
    resumed = train_and_load(tiny_corpus, run, cfg, 4)
    assert resumed["adversary"]["opt"]["state"][0]["step"] == 4  # the optimiser carried on, not restarted
    assert any(not torch.equal(disc[k], v) for k, v in resumed["adversary"]["disc"].items())
