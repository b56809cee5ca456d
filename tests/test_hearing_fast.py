"""Hearing as a state machine: scripted VAD, recognizer and scorer in, the event list out (no models)."""

from __future__ import annotations

import asyncio

import pytest

from agent.events import (
    EndOfTurn,
    PartialTranscript,
    SpeechEnded,
    SpeechStarted,
    TurnResumed,
    TurnScored,
    TurnTranscribed,
)
from audio_io.frames import FRAME_SAMPLES
from tests.fakes import WORD_S, ChunkedSource, ToneScript, place, tone_listener

SCRIPT = ToneScript(["turn on the kitchen lights please", "book a table for", "four people tomorrow"])


def hear(audio, frame_samples=FRAME_SAMPLES, unfinished=lambda text: text.endswith("for"), resume_s=0.0):
    listener = tone_listener(SCRIPT, unfinished, resume_s=resume_s)

    async def run():
        return [e async for e in listener.events(ChunkedSource(audio, frame_samples))]

    try:
        return asyncio.run(run())
    finally:
        listener.close()


def edges(events):
    return [(e.kind, round(e.t, 3), getattr(e, "text", "")) for e in events if not isinstance(e, PartialTranscript)]


def test_one_utterance_gives_start_end_and_its_turn():
    speech = SCRIPT.speech(0)
    end = 0.5 + len(speech) / 16000
    events = hear(place([(0.5, speech)], end + 1.5))
    kinds = [e.kind for e in events if not isinstance(e, PartialTranscript)]
    assert kinds == ["speech_start", "speech_end", "turn_transcribed", "turn_scored", "end_of_turn"]
    start, stop, transcribed, scored, turn = (e for e in events if not isinstance(e, PartialTranscript))
    assert isinstance(start, SpeechStarted) and abs(start.t - 0.5) <= 0.032
    assert isinstance(stop, SpeechEnded) and abs(stop.t - end) <= 0.032
    # The transcript is known first (a reply can be written from it), then its score.
    assert isinstance(transcribed, TurnTranscribed) and transcribed.speech_end == stop.t
    assert transcribed.text == SCRIPT.texts[0] and stop.t < transcribed.t < scored.t
    # The scored candidate says what the turn will wait for, before it ends.
    assert isinstance(scored, TurnScored) and scored.speech_end == stop.t and scored.text == SCRIPT.texts[0]
    assert scored.wait == pytest.approx(0.25) and scored.t <= turn.t
    assert isinstance(turn, EndOfTurn) and turn.text == SCRIPT.texts[0]
    # A sure end of turn waits turn.min_silence_ms (250 ms) after the speech end, and not much more.
    assert 0.25 <= turn.t - stop.t <= 0.25 + 0.04
    partials = [e for e in events if isinstance(e, PartialTranscript)]
    assert partials and all(p.t < turn.t for p in partials)
    for earlier, later in zip(partials, partials[1:], strict=False):
        assert later.stable.startswith(earlier.stable)


def test_a_pause_after_an_unfinished_phrase_keeps_one_turn():
    first, second = SCRIPT.speech(1), SCRIPT.speech(2)
    second_at = 0.5 + len(first) / 16000 + 0.9
    audio = place([(0.5, first), (second_at, second)], second_at + len(second) / 16000 + 1.5)
    events = hear(audio)
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    assert [e.kind for e in events if isinstance(e, SpeechEnded)] == ["speech_end", "speech_end"]
    assert len(turns) == 1
    assert turns[0].text == "book a table for four people tomorrow"


def _two_parts(pause_s: float):
    """'turn on the kitchen lights please' (which reads as finished), a pause, then 'four people tomorrow'."""
    first, second = SCRIPT.speech(0), SCRIPT.speech(2)
    second_at = 0.5 + len(first) / 16000 + pause_s
    return place([(0.5, first), (second_at, second)], second_at + len(second) / 16000 + 1.5), second_at


def test_speech_soon_after_an_end_of_turn_resumes_that_turn():
    audio, second_at = _two_parts(0.45)  # longer than the 250 ms wait, within the 600 ms resume window
    events = hear(audio, resume_s=0.6)
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    resumed = [e for e in events if isinstance(e, TurnResumed)]
    assert len(turns) == 2 and len(resumed) == 1, edges(events)
    first, whole = turns
    assert first.text == SCRIPT.texts[0] and resumed[0].text == first.text and resumed[0].ended_at == first.t
    assert first.t < resumed[0].t and abs(resumed[0].t - second_at) <= 0.032
    assert whole.text == f"{SCRIPT.texts[0]} {SCRIPT.texts[2]}"  # the whole turn, first words included
    # Without the window (and with a pause past it) the second part is a turn of its own.
    for kwargs, audio_ in (({"resume_s": 0.0}, audio), ({"resume_s": 0.6}, _two_parts(0.9)[0])):
        events = hear(audio_, **kwargs)
        assert [e.text for e in events if isinstance(e, EndOfTurn)] == [SCRIPT.texts[0], SCRIPT.texts[2]]
        assert not any(isinstance(e, TurnResumed) for e in events)


def test_silence_gives_no_events():
    assert hear(place([], 3.0)) == []


def test_a_cough_shorter_than_min_speech_is_not_speech():
    cough = SCRIPT.speech(0)[: int(0.04 * 16000)]  # touches two 32 ms chunks: 64 ms < vad.min_speech_ms (96)
    assert hear(place([(0.5, cough)], 2.0)) == []


@pytest.mark.parametrize("frame_samples", [160, 512, 700, 2048])
def test_the_event_log_does_not_depend_on_the_frame_size(frame_samples):
    audio = place([(0.4, SCRIPT.speech(0)), (4.0, SCRIPT.speech(1)), (5.7, SCRIPT.speech(2))], 9.0)
    reference = edges(hear(audio))
    # Frame boundaries move the speech edges by less than one VAD chunk; the turns stay the same.
    got = edges(hear(audio, frame_samples))
    assert [(k, text) for k, _, text in got] == [(k, text) for k, _, text in reference]
    for (_, a, _), (_, b, _) in zip(got, reference, strict=True):
        assert abs(a - b) <= 0.032 + 1e-6


def test_events_before_a_time_do_not_change_when_more_audio_follows():
    audio = place([(0.4, SCRIPT.speech(0)), (4.0, SCRIPT.speech(1)), (5.7, SCRIPT.speech(2))], 9.0)
    full = edges(hear(audio))
    cut = 3.5  # the first turn is over, the second not begun
    prefix = edges(hear(audio[: int(cut * 16000)]))
    assert prefix == [e for e in full if e[1] < cut]
    assert len(prefix) == 5 and prefix[-1][2] == SCRIPT.texts[0]


def test_source_ending_mid_speech_ends_the_turn():
    speech = SCRIPT.speech(0)
    events = hear(place([(0.5, speech)], 0.5 + len(speech) / 16000))
    kinds = [e.kind for e in events if not isinstance(e, PartialTranscript)]
    assert kinds == ["speech_start", "speech_end", "turn_transcribed", "turn_scored", "end_of_turn"]
    assert events[-1].text == SCRIPT.texts[0]


def test_tone_asr_reads_back_the_words_heard_so_far():
    from tests.fakes import ToneAsr

    asr = ToneAsr(SCRIPT)
    speech = SCRIPT.speech(0)
    assert asr.transcribe(speech) == SCRIPT.texts[0]
    assert asr.transcribe(speech[: int(2 * WORD_S * 16000)]) == "turn on"
