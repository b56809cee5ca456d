"""``ttt chat --input --record --metrics`` end to end on the real models, in real time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from agent.cli import main
from tests.fakes import loud_runs
from training.teacher import write_conversation

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "How many days are in a week?"]


def test_chat_answers_each_question_after_it_ends_and_records_both_sides(teacher, tmp_path, capsys):
    user, rec, metrics = tmp_path / "user.wav", tmp_path / "rec.wav", tmp_path / "metrics.jsonl"
    spans = write_conversation(QUESTIONS, user, gap_s=6.0, voice=teacher)
    args = ["chat", "--input", str(user), "--record", str(rec), "--metrics", str(metrics), "--reply", "piper"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "user:  What is the capital of France?" in out.out
    assert "voice to voice p50" in out.err

    audio, rate = sf.read(str(rec), dtype="float32")
    assert rate == 16_000 and audio.ndim == 2 and audio.shape[1] == 2
    mic, agent = audio[:, 0], audio[:, 1]
    heard, _ = sf.read(str(user), dtype="float32")
    assert len(mic) >= len(heard) * 16_000 / 22_050 - 16_000 * 0.05  # the whole input is on the left

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(lines) == 2 and all(line["event"] == "metrics" for line in lines)
    replies = [run for run in loud_runs(agent, gap_s=0.4) if run[1] - run[0] > 0.2]
    for (start, end), line in zip(spans, lines, strict=True):
        # The agent's first sound after this question: never while the user still talks.
        first = min(s for s, _ in replies if s > start)
        assert first > end, (spans, replies)
        # The latency on the recording is the one the metrics report (the VAD's speech end is
        # within a chunk or two of the trimmed speech end).
        assert first - end == pytest.approx(line["voiceToVoiceS"], abs=0.12)
        assert line["voiceToVoiceS"] == pytest.approx(
            line["turnWaitS"] + line["firstTextS"] + line["firstAudioS"] + line["playoutS"], abs=1e-3
        )
    assert np.abs(agent).max() > 0.1
