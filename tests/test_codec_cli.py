"""The shipped codec through the CLI: round trips of real speech at other rates, and its quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from agent.cli import main
from model.codec import CHECKPOINT, load_codec


@pytest.fixture(scope="module")
def speech(teacher):
    return teacher.speak("Could you turn the lights off in the kitchen at nine thirty?")


def _roundtrip(capsys, src, out) -> dict:
    assert main(["codec", "roundtrip", str(src), str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(line)


@pytest.mark.slow
def test_roundtrip_cli_on_piper_file_at_22k(tmp_path, capsys, speech):
    src = tmp_path / "in.wav"
    sf.write(src, speech.samples, speech.sample_rate)
    stats = _roundtrip(capsys, src, tmp_path / "out.wav")
    seconds = len(speech.samples) / speech.sample_rate
    assert set(stats) == {"frames", "frame_rate", "codes_per_frame", "bitrate_bps", "encode_s", "decode_s"}
    assert stats["frames"] == int(np.ceil(seconds * 16000 / 1280))
    assert stats["frame_rate"] == 12.5 and stats["codes_per_frame"] >= 1
    assert 0 < stats["bitrate_bps"] <= 2000 and stats["encode_s"] > 0 and stats["decode_s"] > 0
    out, rate = sf.read(tmp_path / "out.wav")
    assert rate == 16000 and abs(len(out) / 16000 - seconds) < 0.01
    assert np.sqrt(np.mean(out**2)) > 0.01  # sound came out, not silence


@pytest.mark.slow
def test_roundtrip_cli_on_48k_stereo(tmp_path, capsys, speech):
    import soxr

    mono = soxr.resample(speech.samples, speech.sample_rate, 48000)
    src = tmp_path / "in48.wav"
    sf.write(src, np.stack([mono, 0.5 * mono], 1), 48000)
    stats = _roundtrip(capsys, src, tmp_path / "out.wav")
    assert stats["frames"] == int(np.ceil(len(mono) / 3 / 1280))
    assert sf.info(tmp_path / "out.wav").samplerate == 16000


def test_roundtrip_cli_bad_input(tmp_path, capsys):
    (tmp_path / "x.wav").write_bytes(b"not audio")
    assert main(["codec", "roundtrip", str(tmp_path / "x.wav"), str(tmp_path / "o.wav")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_codec_resynthesis_is_close_to_the_voice(speech):
    """The trained codec must beat an untrained one by far on mel distance (it sounds like the voice)."""
    from audio_io.resample import to_mono_16k
    from training.evaluate import mel_distance, roundtrip

    assert CHECKPOINT.is_file(), "the trained codec must ship in model/checkpoints/"
    audio = to_mono_16k(speech.samples, speech.sample_rate)
    trained, _ = roundtrip(load_codec(), audio)
    torch.manual_seed(0)
    untrained, _ = roundtrip(load_codec("/nonexistent/codec.safetensors", allow_untrained=True), audio)
    assert mel_distance(audio, trained) < 0.5 * mel_distance(audio, untrained)


@pytest.mark.slow
def test_eval_codec_compares_checkpoints_on_shared_dev_audio(tmp_path, capsys):
    sentences = tmp_path / "dev.txt"
    sentences.write_text("Please set a timer for ten minutes.\nThe library closes at eight on weekdays.\n")
    transcripts = tmp_path / "transcripts.jsonl"
    args = ["eval", "codec", "--sentences", str(sentences), "--no-timing", "--transcripts", str(transcripts)]
    assert main([*args, "--checkpoint", str(CHECKPOINT), str(CHECKPOINT)]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["checkpoint"] for r in results] == [str(CHECKPOINT)] * 2
    assert results[0] == results[1]  # the same weights on the same (steady) audio
    assert (
        results[0]["sentences"] == 2
        and results[0]["wer_original"] <= 20
        and results[0]["wer_gap_se"] >= 0
        and "stream_decode_rtf_chunk1" not in results[0]
    )
    rows = [json.loads(line) for line in transcripts.read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["text"] == "Please set a timer for ten minutes."
    assert "timer" in rows[0]["original"].lower()


def test_eval_codec_bad_checkpoint_fails_before_voicing(tmp_path, capsys):
    sentences = tmp_path / "dev.txt"
    sentences.write_text("Please set a timer for ten minutes.\n")
    args = ["eval", "codec", "--sentences", str(sentences)]
    assert main([*args, "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
