"""The streaming silero VAD on real (Piper) speech: events, timing, silence, chunk-size invariance."""

from __future__ import annotations

import numpy as np
import pytest

from audio_io import SAMPLE_RATE, AudioError, AudioFrame, FileSource, SileroVad, read_audio
from model.assets import AssetError

CHUNK_S = 512 / SAMPLE_RATE
SENTENCES = ["Please turn on the kitchen lights", "What time is it in Tokyo", "I would like a cup of tea"]


@pytest.fixture(scope="module")
def conversation(teacher, tmp_path_factory):
    """A WAV of three sentences (22.05 kHz, as Piper speaks) and each sentence's speech span."""
    from training.teacher import write_conversation

    path = tmp_path_factory.mktemp("vad") / "conversation.wav"
    spans = write_conversation(SENTENCES, path, voice=teacher)
    return path, spans


@pytest.fixture(scope="module")
def vad():
    return SileroVad()


def run(vad: SileroVad, audio: np.ndarray, frame_samples: int) -> list:
    vad.reset()
    events = []
    for i in range(0, len(audio), frame_samples):
        events += vad.process(AudioFrame(audio[i : i + frame_samples], i / SAMPLE_RATE))
    return events + vad.flush()


@pytest.mark.slow
def test_one_start_and_end_per_sentence_at_the_right_times(vad, conversation):
    path, spans = conversation
    events = run(vad, read_audio(path), 512)
    assert [e.kind for e in events] == ["speech_start", "speech_end"] * len(SENTENCES)
    for (start, end), on, off in zip(spans, events[::2], events[1::2], strict=True):
        assert abs(on.t - start) <= 0.1, (on, start)
        assert -0.1 <= off.t - end <= 0.2, (off, end)
        # Back-dated by exactly the hysteresis: min_speech_ms to confirm a start, min_silence_ms an end.
        assert on.detected_at - on.t == pytest.approx(0.096)
        assert off.detected_at - off.t == pytest.approx(0.160)
        assert on.probability >= vad.threshold and off.probability < vad.neg_threshold
    assert not vad.in_speech


@pytest.mark.slow
@pytest.mark.parametrize("frame_samples", [320, 1000])
def test_events_do_not_depend_on_frame_size(vad, conversation, frame_samples):
    audio = read_audio(conversation[0])
    reference = run(vad, audio, 512)
    events = run(vad, audio, frame_samples)
    assert [e.kind for e in events] == [e.kind for e in reference]
    for a, b in zip(events, reference, strict=True):
        assert abs(a.t - b.t) <= CHUNK_S and abs(a.detected_at - b.detected_at) <= CHUNK_S


@pytest.mark.slow
async def test_vad_on_a_file_source_sees_the_speech(vad, conversation):
    path, spans = conversation
    vad.reset()
    events = []
    async for frame in FileSource(path).frames():
        events += vad.process(frame)
        if events and events[-1].kind == "speech_start":
            assert vad.in_speech
    assert len(events) == 2 * len(SENTENCES)
    assert events[0].t == pytest.approx(spans[0][0], abs=0.1)


def test_silence_and_faint_noise_give_no_events(vad):
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(SAMPLE_RATE), 0.003 * rng.standard_normal(2 * SAMPLE_RATE)]).astype(np.float32)
    assert run(vad, audio, 512) == []
    assert not vad.in_speech and vad.last_probability < vad.neg_threshold


@pytest.mark.slow
def test_probabilities_match_silero_reference_wrapper(vad, conversation):
    """The explicit state and 64-sample context reproduce silero's own OnnxWrapper exactly."""
    import torch
    from silero_vad.utils_vad import OnnxWrapper

    from model.assets import VAD, locate

    audio = read_audio(conversation[0])[: 3 * SAMPLE_RATE]
    reference = OnnxWrapper(str(locate(VAD)), force_onnx_cpu=True)
    vad.reset()
    for i in range(0, len(audio) - 511, 512):
        chunk = audio[i : i + 512]
        expected = float(reference(torch.from_numpy(chunk), SAMPLE_RATE))
        assert vad.probability(chunk) == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_reset_forgets_the_state(vad, conversation):
    audio = read_audio(conversation[0])[: 2 * SAMPLE_RATE]
    chunks = [audio[i : i + 512] for i in range(0, len(audio) - 511, 512)]
    vad.reset()
    fresh = [vad.probability(c) for c in chunks]
    carried = [vad.probability(c) for c in chunks]  # same audio, state carried over from the first pass
    assert carried != fresh
    vad.process(AudioFrame(audio[:700], 0.0))
    vad.reset()
    assert [vad.probability(c) for c in chunks] == fresh and not vad.in_speech


def test_bad_input_raises_clear_errors(vad, tmp_path):
    vad.reset()
    with pytest.raises(AudioError, match="NaN"):
        vad.process(AudioFrame(np.array([0.0, np.nan] * 300, np.float32), 0.0))
    with pytest.raises(ValueError, match="neg_threshold <= threshold"):
        SileroVad(threshold=0.3, neg_threshold=0.5)
    with pytest.raises(AssetError, match="does not exist"):
        SileroVad(model_path=tmp_path / "nope.onnx")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(AssetError, match="cannot load the silero VAD model"):
        SileroVad(model_path=bogus)
