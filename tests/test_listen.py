from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import soundfile as sf

from agent.bench import BENCH_SENTENCES, PAUSED_TURN, listen_file
from agent.cli import main
from agent.events import EndOfTurn, PartialTranscript, SpeechEnded, SpeechStarted
from agent.settings import Settings
from training.teacher import write_conversation
from training.wer import word_error_rate


@pytest.fixture(scope="module")
def listener(one_torch_thread):
    from agent.listen import Listener

    listener = Listener.from_settings(Settings())
    yield listener
    listener.close()


@pytest.mark.slow
def test_twelve_sentences_give_twelve_turns(listener, teacher, tmp_path):
    path = tmp_path / "twelve.wav"
    spans = write_conversation(BENCH_SENTENCES, path, voice=teacher)
    result = listen_file(listener, path)
    seen = [(e.kind, round(e.t, 3), getattr(e, "text", "")) for e in result.events if e.kind != "partial"]
    assert len(result.turns) == 12, seen
    assert word_error_rate(BENCH_SENTENCES, [t.text for t in result.turns]) <= 0.08, seen
    # Turn i is sentence i, and ends after its speech (how long after is the benchmark's business).
    for i, (turn, (_, end)) in enumerate(zip(result.turns, spans, strict=True)):
        assert turn.t > end, (i, seen)
        # Aligned: the turn is nearer its own sentence than any other (tiny.en may mishear a word or two).
        errors = [word_error_rate([sentence], [turn.text]) for sentence in BENCH_SENTENCES]
        assert min(range(len(errors)), key=errors.__getitem__) == i, (i, errors, seen)
    starts = [e.t for e in result.events if isinstance(e, SpeechStarted)]
    assert all(any(abs(s - start) < 0.15 for s in starts) for start, _ in spans)


@pytest.mark.slow
@pytest.mark.parametrize("pause_s", [0.7, 1.0])
def test_pause_inside_an_unfinished_phrase_keeps_one_turn(listener, teacher, tmp_path, pause_s):
    path = tmp_path / "paused.wav"
    spans = write_conversation([PAUSED_TURN], path, pause_s=pause_s, voice=teacher)
    result = listen_file(listener, path)
    seen = [e.to_json() for e in result.events if not isinstance(e, PartialTranscript)]
    ends = [e for e in result.events if isinstance(e, SpeechEnded)]
    assert len(ends) >= 2, seen  # the VAD did hear the pause...
    assert len(result.turns) == 1, seen  # ...and the turn detector waited through it
    turn = result.turns[0]
    assert "table" in turn.text.lower() and "tomorrow" in turn.text.lower()
    assert turn.t > spans[0][1]


@pytest.mark.slow
def test_silence_only_gives_no_events(listener):
    from audio_io.sources import ArraySource

    rng = np.random.default_rng(1)
    quiet = np.concatenate([np.zeros(16000 * 2, np.float32), rng.normal(0, 0.002, 16000 * 2).astype(np.float32)])

    async def hear():
        return [e async for e in listener.events(ArraySource(quiet))]

    assert asyncio.run(hear()) == []


@pytest.mark.slow
def test_realtime_source_stamps_events_on_its_clock(listener, teacher):
    from audio_io.resample import to_mono_16k
    from audio_io.sources import ArraySource
    from training.teacher import trim_silence

    utterance = teacher.speak("Please water the tomatoes in the garden this evening.")
    speech = to_mono_16k(trim_silence(utterance.samples), utterance.sample_rate)
    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000 * 2, np.float32)])
    source = ArraySource(audio, realtime=True)

    async def hear():
        seen = []
        async for event in listener.events(source):
            seen.append((event, source.now()))
        return seen

    seen = asyncio.run(hear())
    turns = [(e, now) for e, now in seen if isinstance(e, EndOfTurn)]
    assert len(turns) == 1
    turn, now = turns[0]
    speech_end = 0.5 + len(speech) / 16000
    assert speech_end < turn.t <= now + 1e-6  # stamped when produced, never in the future
    assert "tomatoes" in turn.text.lower()
    partials = [e for e, _ in seen if isinstance(e, PartialTranscript)]
    assert partials
    for earlier, later in zip(partials, partials[1:], strict=False):
        assert later.stable.startswith(earlier.stable)


def _write(path, samples, rate):
    sf.write(str(path), samples, rate, subtype="FLOAT")
    return str(path)


def test_cli_refuses_an_empty_file(tmp_path, capsys):
    path = _write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    assert main(["listen", "--input", path, "--json"]) == 2
    err = capsys.readouterr().err
    assert "ttt listen: error" in err and "no audio" in err


def test_cli_refuses_nan_samples(tmp_path, capsys):
    samples = np.zeros(16000, np.float32)
    samples[100:200] = np.nan
    path = _write(tmp_path / "nan.wav", samples, 16000)
    assert main(["listen", "--input", path]) == 2
    assert "NaN" in capsys.readouterr().err


def test_cli_names_a_missing_asset_package(tmp_path, capsys, monkeypatch):
    import model.assets

    path = _write(tmp_path / "speech.wav", np.zeros(16000, np.float32), 16000)
    monkeypatch.setattr(model.assets, "package_dir", lambda module: None)
    assert main(["listen", "--input", path]) == 2
    err = capsys.readouterr().err
    assert "is not installed" in err and "`pip install silero-vad`" in err  # the first asset loaded


@pytest.mark.slow
def test_cli_json_on_a_48k_stereo_file(teacher, tmp_path, capsys):
    import soxr

    from training.teacher import trim_silence

    text = "Could you book me a taxi to the airport for six in the morning?"
    utterance = teacher.speak(text)
    speech = soxr.resample(trim_silence(utterance.samples), utterance.sample_rate, 48000).astype(np.float32)
    mono = np.concatenate([np.zeros(24000, np.float32), speech, np.zeros(48000 * 2, np.float32)])
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    path = _write(tmp_path / "stereo48k.wav", stereo, 48000)
    assert main(["listen", "--input", path, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "speech_start" and kinds[-1] == "end_of_turn"
    assert kinds.count("end_of_turn") == 1
    for line in lines:
        assert isinstance(line["t"], float | int) and round(line["t"], 3) == line["t"]
        assert ("text" in line) == (
            line["event"] in ("partial", "turn_transcribed", "turn_scored", "turn_resumed", "end_of_turn")
        )
    assert word_error_rate([text], [lines[-1]["text"]]) <= 0.15
    speech_end = 0.5 + len(speech) / 48000
    assert lines[-1]["t"] > speech_end


@pytest.mark.slow
def test_source_ending_mid_speech_ends_the_turn(listener, teacher):
    from audio_io.resample import to_mono_16k
    from audio_io.sources import ArraySource
    from training.teacher import trim_silence

    utterance = teacher.speak("Remind me to buy stamps at the post office.")
    speech = to_mono_16k(trim_silence(utterance.samples), utterance.sample_rate)
    audio = np.concatenate([np.zeros(8000, np.float32), speech])  # no silence after the speech

    async def hear():
        return [e async for e in listener.events(ArraySource(audio))]

    events = asyncio.run(hear())
    kinds = [e.kind for e in events if not isinstance(e, PartialTranscript)]
    ending = ["speech_end", "turn_transcribed", "turn_scored", "end_of_turn"]
    assert kinds[0] == "speech_start" and kinds[-4:] == ending, kinds
    assert "stamps" in events[-1].text.lower()
    assert events[-1].t >= len(audio) / 16000 - 0.05
