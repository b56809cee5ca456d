"""The talker on the real SmolLM2-135M backbone and the real codec (untrained until a checkpoint ships)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from model.generate import AudioChunk, TextDelta

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="session")
def untrained_talker():
    from model.backbone import load_backbone
    from model.codec import load_codec
    from model.talker import Talker, default_config

    codec = load_codec()
    talker = Talker.from_backbone(load_backbone(), default_config(codec)).eval()
    return talker, codec


def test_first_chunks_equal_plain_greedy_decoding(untrained_talker):
    """Untrained LoRA is the identity and the first chunk's text comes before any inserted position:
    the first chunk, and the token that opens the second, are what Hugging Face's greedy generate writes."""
    talker, codec = untrained_talker
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}]
    prompt = torch.tensor([talker.prompt_ids(messages)])
    with torch.inference_mode():
        reference = talker.lm.generate(prompt, max_new_tokens=8, do_sample=False)[0, prompt.shape[1] :].tolist()
        events = []
        for event in talker.stream(messages, codec):
            events.append(event)
            if isinstance(event, AudioChunk):
                break
    first, second = events[0], events[1]
    assert isinstance(first, TextDelta) and first.tokens == reference[: len(first.tokens)]
    assert isinstance(second, TextDelta) and second.tokens[0] == reference[len(first.tokens)]
    assert isinstance(events[-1], AudioChunk) and 1 <= len(events[-1].codes) <= talker.config.max_span


def test_ttt_say_json_and_wav(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "say.wav"
    text = "Hello, this is a test of the talker."
    assert main(["say", text, "--output", str(out), "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert set(result) == {"first_audio_s", "audio_s", "rtf", "text"} and result["text"] == text
    audio, rate = sf.read(out)
    assert rate == 16000 and abs(len(audio) / rate - result["audio_s"]) < 1e-3
    assert 0 < result["first_audio_s"] < result["rtf"] * result["audio_s"]  # first sound before the end
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert main(["say", "  ", "--output", str(out)]) == 2  # nothing to say: a clear error, no traceback
    assert "non-empty" in capsys.readouterr().err
