"""Codec mechanics on a randomly initialised codec: FSQ, shapes, streaming == whole, causality, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.assets import AssetError
from model.codec import CodecConfig, SpeechCodec, load_codec, save_codec
from model.codec.codec import GUESS_FADE_SAMPLES
from model.codec.fsq import FSQ


@pytest.fixture(scope="module")
def codec() -> SpeechCodec:
    torch.manual_seed(1)
    return SpeechCodec().eval()


def test_fsq_codes_round_trip():
    fsq = FSQ([8, 5, 5, 5], groups=3)
    codes = torch.randint(0, fsq.codebook_size, (2, 7, 3))
    q = fsq.from_codes(codes)
    assert q.shape == (2, 7, 12) and q.abs().max() <= 1.0
    assert torch.equal(fsq.to_codes(q), codes)
    z = torch.randn(4, 9, 12) * 3
    quant = fsq.quantize(z)
    back = fsq.to_codes(quant)
    assert back.shape == (4, 9, 3) and back.min() >= 0 and back.max() < 1000
    assert torch.allclose(fsq.from_codes(back), quant, atol=1e-6)
    assert len(torch.unique(fsq.to_codes(fsq.quantize(torch.randn(5000, 12) * 2)))) > 500  # codes get used


def test_fsq_straight_through_gradient():
    fsq = FSQ([5, 5], groups=1)
    z = torch.randn(10, 2, requires_grad=True)
    fsq.quantize(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("samples", [1, 1279, 1280, 1281, 16000 + 7])
def test_encode_decode_shapes(codec, samples):
    codes = codec.encode(torch.randn(2, samples) * 0.1)
    frames = math.ceil(samples / 1280)
    assert codes.shape == (2, frames, codec.groups) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < codec.codebook_size
    audio = codec.decode(codes)
    assert audio.shape == (2, frames * 1280) and audio.dtype == torch.float32
    assert codec.sample_rate == 16000 and codec.frame_rate == 12.5


@pytest.mark.parametrize("chunks", [[1] * 23, [3, 10, 10], [23], [2, 7, 1, 13], [5, 5, 5, 5, 3]])
def test_streaming_equals_whole(codec, chunks):
    codes = torch.randint(0, codec.codebook_size, (1, sum(chunks), codec.groups))
    whole = codec.decode(codes)[0].numpy()
    dec = codec.stream_decoder()
    outs, i = [], 0
    for n in chunks:
        outs.append(dec.push(codes[0, i : i + n]))
        i += n
    outs.append(dec.flush())
    streamed = np.concatenate(outs)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    # the lookahead is small and fixed: after pushing F frames, all but 1 frame + 480 samples are out
    assert sum(len(o) for o in outs[:-1]) == (sum(chunks) - 1) * 1280 - 480


@pytest.mark.parametrize("chunks", [[2, 5, 4], [1, 1, 9], [2], [3, 20]])
def test_pushing_ahead_plays_the_guessed_tail_then_rejoins_the_true_stream(codec, chunks):
    codes = torch.randint(0, codec.codebook_size, (1, sum(chunks), codec.groups))
    whole = codec.decode(codes)[0].numpy()
    head = chunks[0] * 1280
    as_if_ended = codec.decode(codes[:, : chunks[0]])[0].numpy()  # the guess: the first chunk decoded alone
    dec = codec.stream_decoder()
    outs = [dec.push(codes[0, : chunks[0]], ahead=True)]
    # all of the first chunk is out at once, but for the 10 ms that will fade into the true samples
    np.testing.assert_allclose(outs[0], as_if_ended[: head - GUESS_FADE_SAMPLES], atol=1e-5)
    i = chunks[0]
    for n in chunks[1:]:
        outs.append(dec.push(codes[0, i : i + n]))
        i += n
    outs.append(dec.flush())
    streamed = np.concatenate(outs)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed[head:], whole[head:], atol=1e-5)
    fade = slice(head - GUESS_FADE_SAMPLES, head)
    ramp = np.linspace(0, 1, GUESS_FADE_SAMPLES + 2)[1:-1]
    np.testing.assert_allclose(streamed[fade], as_if_ended[fade] * (1 - ramp) + whole[fade] * ramp, atol=1e-5)
    if len(chunks) > 1:  # the guess is a guess: the frames after it change the samples before it
        held = slice(max(0, (chunks[0] - 1) * 1280 - 480), head - GUESS_FADE_SAMPLES)
        assert not np.allclose(as_if_ended[held], whole[held], atol=1e-3)


def test_decoder_causal_beyond_lookahead(codec):
    codes = torch.randint(0, codec.codebook_size, (1, 20, codec.groups))
    changed = codes.clone()
    changed[:, 12:] = torch.randint(0, codec.codebook_size, (1, 8, codec.groups))
    a, b = codec.decode(codes)[0], codec.decode(changed)[0]
    final = (12 - 1) * 1280 - 480  # one frame of lookahead, and the overlap-add tail of 30 ms
    assert torch.allclose(a[:final], b[:final], atol=1e-6)
    assert not torch.allclose(a[final:], b[final:], atol=1e-3)


def test_encoder_causal(codec):
    audio = torch.randn(1, 12 * 1280) * 0.1
    changed = audio.clone()
    changed[:, 7 * 1280 :] = torch.randn(1, 5 * 1280) * 0.1
    a, b = codec.encode(audio), codec.encode(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.equal(a[:, 7:], b[:, 7:])


def test_bad_inputs_raise_clear_errors(codec):
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.full((1, 100), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(1, 0))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 1000\)"):
        codec.decode(torch.full((1, 2, codec.groups), 1000))
    with pytest.raises(ValueError, match="codes per frame"):
        codec.decode(torch.zeros(1, 2, codec.groups + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        codec.decode(torch.zeros(1, 2, codec.groups))
    with pytest.raises(ValueError, match=r"\[F >= 1, G\]"):
        codec.stream_decoder().push(torch.zeros(0, codec.groups, dtype=torch.long))


def test_missing_and_corrupt_checkpoints(tmp_path, caplog):
    with pytest.raises(AssetError, match="ttt train codec"):
        load_codec(tmp_path / "codec.safetensors")
    untrained = load_codec(tmp_path / "codec.safetensors", allow_untrained=True)
    assert isinstance(untrained, SpeechCodec) and "UNTRAINED" in caplog.text
    bad = tmp_path / "bad.safetensors"
    save_codec(untrained, bad)
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(AssetError, match="corrupt"):
        load_codec(bad)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AssetError, match="corrupt"):
        load_codec(bad)


def test_save_load_round_trip_and_griffin_lim_fallback(tmp_path, codec):
    path = tmp_path / "codec.safetensors"
    save_codec(codec, path, info={"step": 0})
    loaded = load_codec(path)
    codes = torch.randint(0, codec.codebook_size, (1, 6, codec.groups))
    # weights are stored in fp16: the decode differs from the fp32 original only a little
    assert torch.allclose(loaded.decode(codes), codec.decode(codes), atol=5e-2)
    no_voc = SpeechCodec(CodecConfig(vocoder=False))
    save_codec(no_voc, tmp_path / "gl.safetensors")
    gl = load_codec(tmp_path / "gl.safetensors")
    assert gl.config.vocoder is False
    audio = gl.decode(codes)
    assert audio.shape == (1, 6 * 1280) and torch.isfinite(audio).all()
    dec = gl.stream_decoder()
    streamed = np.concatenate([dec.push(codes[0, :4]), dec.push(codes[0, 4:]), dec.flush()])
    np.testing.assert_allclose(streamed, audio[0].numpy(), atol=1e-5)
