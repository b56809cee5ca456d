"""The agent loop on scripted parts and the virtual clock: events in, events and a recording out."""

from __future__ import annotations

import asyncio

import pytest

from agent.dialogue import INTERRUPTED_NOTE, History
from agent.events import (
    AgentStateChanged,
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    Interruption,
    Mute,
    PlaybackFinished,
    PlaybackStarted,
    ReplyFinished,
    ReplyStarted,
    Say,
    TurnMetrics,
    TurnResumed,
    Unmute,
)
from agent.loop import Agent
from agent.playback import Segment, heard_text
from audio_io.virtual import VirtualClock, VirtualMicrophone, VirtualSpeaker, stereo_recording
from tests.fakes import WORD_AUDIO_S, FakeVoice, ToneScript, babble, loud_runs, room, tone_listener

SCRIPT = ToneScript(["what is the weather like today", "stop please tell me about trains", "", "thanks a lot"])
LONG_REPLY = " ".join(f"word{i}" for i in range(20))  # 20 words, 6 s of audio
SHORT_REPLY = "it is sunny and warm"


def converse(
    pieces,
    answer=lambda messages: SHORT_REPLY,
    tail_s=4.0,
    voice_cls=FakeVoice,
    during=None,
    config=None,
    resume_s=0.0,
    unfinished=lambda text: False,
    **voice_kw,
):
    """Run the agent over the scripted microphone; returns (agent, voice, stereo recording)."""
    clock = VirtualClock()
    mic = VirtualMicrophone(clock, [(t, SCRIPT.speech(i)) for t, i in pieces], tail_s=tail_s)
    speaker = VirtualSpeaker(clock)
    voice = voice_cls(clock, answer, **voice_kw)
    listener = tone_listener(SCRIPT, unfinished, likely_speech=True, resume_s=resume_s)
    agent = Agent(listener, voice, speaker, clock, History("You are a test."), config)

    async def main():
        if during is not None:
            asyncio.get_running_loop().create_task(during(agent, clock))
        await agent.run(mic)

    asyncio.run(main())
    return agent, voice, stereo_recording(mic, speaker)


def of(agent, kind):
    return [e for e in agent.bus.history if isinstance(e, kind)]


def speech_end(start, i):
    return start + len(SCRIPT.speech(i)) / 16000


def test_a_question_gets_a_spoken_answer_that_starts_after_the_user_stopped():
    from agent.loop import AgentConfig

    agent, voice, rec = converse([(0.5, 0)], config=AgentConfig(preempt_wait_s=0.0))  # nothing written ahead
    user_end = speech_end(0.5, 0)
    (turn,) = of(agent, EndOfTurn)
    (metrics,) = of(agent, TurnMetrics)
    (started,) = of(agent, PlaybackStarted)
    (finished,) = of(agent, PlaybackFinished)
    states = [e.new_state for e in of(agent, AgentStateChanged)]
    assert states == ["listening", "thinking", "speaking", "listening"]
    # Cached before the first turn, and again once the reply joined the history, before the next turn.
    system = {"role": "system", "content": "You are a test."}
    assert voice.primed == [[system], [system, *agent.history.messages]]
    assert turn.text == SCRIPT.texts[0]
    assert not finished.interrupted and finished.heard_text == SHORT_REPLY
    assert finished.position_s == pytest.approx(5 * WORD_AUDIO_S)
    assert agent.history.messages == [
        {"role": "user", "content": SCRIPT.texts[0]},
        {"role": "assistant", "content": SHORT_REPLY},
    ]
    # The latency on the recording is the one the events report: turn wait (250 ms) + thinking (300 ms).
    (agent_audio,) = loud_runs(rec[:, 1])
    assert agent_audio[0] == pytest.approx(started.t, abs=0.002)
    assert agent_audio[0] - user_end == pytest.approx(metrics.voice_to_voice_s, abs=0.035)
    assert metrics.voice_to_voice_s == pytest.approx(
        metrics.turn_wait_s + metrics.first_text_s + metrics.first_audio_s + metrics.playout_s
    )
    assert 0.25 <= metrics.turn_wait_s <= 0.3
    assert metrics.first_text_s == pytest.approx(0.3, abs=0.07)  # 32 ms clock ticks
    assert agent_audio[1] - agent_audio[0] == pytest.approx(5 * WORD_AUDIO_S, abs=0.01)


def test_barge_in_stops_playback_fast_and_keeps_only_the_heard_words():
    barge_at = speech_end(0.5, 0) + 2.0  # the reply started playing about 0.55 s after the question
    agent, voice, rec = converse(
        [(0.5, 0), (barge_at, 1)], answer=lambda m: LONG_REPLY if len(m) == 2 else "ok", word_s=WORD_AUDIO_S
    )
    (interruption,) = of(agent, Interruption)
    cut = of(agent, PlaybackFinished)[0]
    assert cut.interrupted and interruption.reason == "user_speech"
    # On the recording: the agent's sound ends within 150 ms of the user's speech (here at its first
    # speech-like chunk, a few 32 ms frames, before the VAD confirms it).
    runs = loud_runs(rec[:, 1])
    first_reply_end = runs[0][1]
    assert barge_at < first_reply_end <= barge_at + 0.100, runs
    # The history holds the words played before the cut, and says the reply was cut.
    # (The recording also holds the short gaps where the sink waited for the next word: at most a
    # tick per word.)
    started = of(agent, PlaybackStarted)[0].t
    assert 0 <= (first_reply_end - started) - cut.position_s <= 0.032 * (1 + cut.position_s / WORD_AUDIO_S)
    played_words = int(cut.position_s / WORD_AUDIO_S)
    heard = " ".join(LONG_REPLY.split()[:played_words])
    assert cut.heard_text == heard and 0 < played_words < 20
    assert agent.history.messages[1:3] == [
        {"role": "assistant", "content": heard},
        {"role": "system", "content": INTERRUPTED_NOTE},
    ]
    assert voice.cancelled == 1  # the generation was cancelled, not left running
    # The model is then asked about the interrupting turn, with the note in its prompt.
    assert agent.history.messages[3] == {"role": "user", "content": SCRIPT.texts[1]}
    assert voice.prompts[1][-2:] == [{"role": "system", "content": INTERRUPTED_NOTE}, agent.history.messages[3]]
    assert of(agent, PlaybackFinished)[-1].heard_text == "ok"


def test_a_cough_over_the_agent_pauses_it_and_it_resumes():
    import numpy as np

    cough_at = speech_end(0.5, 0) + 1.5
    # 150 ms: long enough for the VAD (96 ms), shorter than a barge-in (300 ms); heard as no words.
    t = np.arange(int(0.15 * 16000)) / 16000
    cough = (0.3 * np.sin(2 * np.pi * SCRIPT.freq(2) * t)).astype(np.float32)
    clock = VirtualClock()
    mic = VirtualMicrophone(clock, [(0.5, SCRIPT.speech(0)), (cough_at, cough)], tail_s=8.0)
    speaker = VirtualSpeaker(clock)
    listener = tone_listener(SCRIPT, likely_speech=True)
    agent = Agent(listener, FakeVoice(clock, lambda m: LONG_REPLY), speaker, clock, History("s"))
    asyncio.run(agent.run(mic))
    assert not of(agent, Interruption)
    (finished,) = of(agent, PlaybackFinished)
    assert not finished.interrupted and finished.heard_text == LONG_REPLY
    assert finished.position_s == pytest.approx(20 * WORD_AUDIO_S)
    runs = loud_runs(stereo_recording(mic, speaker)[:, 1])
    assert len(runs) == 2  # paused once...
    assert cough_at < runs[0][1] <= cough_at + 0.150
    assert runs[1][0] - runs[0][1] < 0.7  # ...and resumed once the cough was over
    total = sum(end - start for start, end in runs)
    assert total == pytest.approx(20 * WORD_AUDIO_S, abs=0.02)  # nothing lost, nothing repeated


def test_say_is_spoken_and_answered_with_its_id_without_touching_the_history():
    async def during(agent, clock):
        await clock.wait_until(0.5)
        agent.send(Say(clock.now(), "the laundry is done", "say-1"))

    agent, _, rec = converse([], tail_s=4.0, during=during)
    (finished,) = of(agent, PlaybackFinished)
    assert finished.reply_id == "say-1" and finished.heard_text == "the laundry is done"
    assert agent.history.messages == []
    # Thinking takes 0.3 s; a waiting task wakes a few 32 ms microphone frames late on the virtual clock.
    assert 0.8 <= loud_runs(rec[:, 1])[0][0] <= 0.8 + 0.13


def test_interrupt_command_cuts_the_reply():
    async def during(agent, clock):
        while not of(agent, PlaybackStarted):
            await clock.wait_until(clock.now() + 0.05)
        await clock.wait_until(clock.now() + 1.0)
        agent.send(Interrupt(clock.now()))

    agent, _, _ = converse([(0.5, 0)], answer=lambda m: LONG_REPLY, during=during)
    (interruption,) = of(agent, Interruption)
    assert interruption.reason == "command"
    cut = of(agent, PlaybackFinished)[0]
    assert cut.interrupted and 2 <= len(cut.heard_text.split()) <= 4


def test_muted_microphone_is_not_heard_until_unmuted():
    async def during(agent, clock):
        agent.send(Mute(clock.now()))
        await clock.wait_until(3.5)
        agent.send(Unmute(clock.now()))

    agent, voice, _ = converse([(0.5, 0), (4.0, 3)], during=during)
    assert [e.text for e in of(agent, EndOfTurn)] == [SCRIPT.texts[3]]
    assert len(voice.prompts) == 1


class UnprimableVoice(FakeVoice):
    def prime(self, messages):
        raise RuntimeError("no memory for the cache")


def test_a_voice_that_cannot_prime_still_answers():
    agent, _, _ = converse([(0.5, 0)], voice_cls=UnprimableVoice)
    errors = of(agent, ErrorEvent)  # at start, and after the reply (priming the next turn)
    assert len(errors) == 2 and all(e.component == "voice" and "no memory for the cache" in e.message for e in errors)
    assert of(agent, PlaybackFinished)[0].heard_text == SHORT_REPLY


class BrokenVoice(FakeVoice):
    def reply(self, messages, cancel):
        self.prompts.append(messages)
        if len(self.prompts) == 1:
            return self._fail()
        return super().reply(messages, cancel)

    async def _fail(self):
        raise RuntimeError("the voice fell over")
        yield


def test_a_failing_voice_is_reported_and_the_conversation_goes_on():
    agent, voice, _ = converse([(0.5, 0), (4.0, 3)], voice_cls=BrokenVoice)
    (error,) = of(agent, ErrorEvent)
    assert error.component == "voice" and "fell over" in error.message
    assert len(of(agent, ReplyFinished)) == 2
    assert of(agent, PlaybackFinished)[-1].heard_text == SHORT_REPLY


def test_heard_text_counts_whole_words_of_the_segment_being_played():
    segments = [Segment(0.0, 1.0, " one two"), Segment(1.0, 2.0, " three four five six")]
    assert heard_text(segments, 0.0) == ""
    assert heard_text(segments, 0.6) == "one"
    assert heard_text(segments, 1.0) == "one two"
    assert heard_text(segments, 1.5) == "one two three four"
    assert heard_text(segments, 9.0) == "one two three four five six"


def test_history_is_trimmed_oldest_first_keeping_the_system_prompt():
    history = History("system prompt", max_tokens=60)
    for i in range(100):
        history.add_user(f"question number {i} about something")
        history.add_reply(f"answer number {i}", interrupted=i % 7 == 0)
    assert history.tokens <= 60
    chat = history.chat()
    assert chat[0] == {"role": "system", "content": "system prompt"}
    assert chat[1]["role"] == "user" and chat[-1]["content"] in ("answer number 99",)
    assert history.dropped > 150 and len(history.messages) < 12


def test_history_trims_in_blocks_so_the_prompt_start_stays_put_for_several_turns():
    history = History("system prompt", 200, lambda message: len(message["content"].split()) + 4)  # as chat.py does
    starts = []
    for i in range(60):
        history.add_user(f"question number {i} about something")
        history.add_reply(f"answer number {i}", interrupted=False)
        starts.append(history.messages[0]["content"])
        assert history.tokens <= 200
    changes = sum(a != b for a, b in zip(starts, starts[1:], strict=False))
    assert 0 < changes <= len(starts) / 4  # the oldest message changes in steps, not at every turn


class SpeakingVoice(FakeVoice):
    """A fake voice whose words sound like speech (broadband, in syllables), not like one tone."""

    def word_audio(self):
        return 2.0 * babble(WORD_AUDIO_S, seed=len(self.prompts))


def echo_conversation(guard, barge_at=None):
    from agent.echo import EchoCancelledSource, EchoCanceller

    clock = VirtualClock()
    pieces = [(0.5, SCRIPT.speech(0))] + ([(barge_at, SCRIPT.speech(1))] if barge_at else [])
    mic = VirtualMicrophone(clock, pieces, tail_s=8.0)
    speaker = VirtualSpeaker(clock)
    # The agent's voice reaches the microphone 30 ms late, through a reverberant room.
    mic.hear_speaker(speaker, delay_s=0.03, gain=0.5, room=room(0.0, seed=1))
    source = EchoCancelledSource(mic, EchoCanceller(speaker.render)) if guard else mic
    voice = SpeakingVoice(clock, lambda m: LONG_REPLY if len(m) == 2 else "ok")
    agent = Agent(tone_listener(SCRIPT, likely_speech=True), voice, speaker, clock, History("s"))
    asyncio.run(agent.run(source))
    return agent


def test_the_agents_own_echo_does_not_barge_in():
    unguarded = echo_conversation(guard=False)
    # Without the canceller the agent hears itself: its own voice pauses it, again and again.
    assert len([e for e in unguarded.bus.history if e.kind == "speech_likely"]) > 3
    agent = echo_conversation(guard=True)
    assert not of(agent, Interruption)
    assert not [e for e in agent.bus.history if e.kind == "speech_likely" and e.t > 2.5]  # not one pause
    (finished,) = of(agent, PlaybackFinished)
    assert not finished.interrupted and finished.heard_text == LONG_REPLY
    assert [e.text for e in of(agent, EndOfTurn)] == [SCRIPT.texts[0]]  # nor is it heard as a user turn


def test_the_user_still_barges_in_over_the_echo():
    # After about two seconds of the agent's voice the canceller has learned the room (half duplex before).
    barge_at = speech_end(0.5, 0) + 3.0
    agent = echo_conversation(guard=True, barge_at=barge_at)
    (interruption,) = of(agent, Interruption)
    assert barge_at - 0.032 <= interruption.speech_start <= barge_at + 0.064  # the VAD chunk it starts in
    assert [e.text for e in of(agent, EndOfTurn)] == [SCRIPT.texts[0], SCRIPT.texts[1]]


def test_a_click_over_the_agent_pauses_it_only_for_a_moment():
    import numpy as np

    click_at = speech_end(0.5, 0) + 1.5
    t = np.arange(int(0.03 * 16000)) / 16000  # 30 ms: speech-like, too short for the VAD to confirm
    click = (0.3 * np.sin(2 * np.pi * SCRIPT.freq(2) * t)).astype(np.float32)
    clock = VirtualClock()
    mic = VirtualMicrophone(clock, [(0.5, SCRIPT.speech(0)), (click_at, click)], tail_s=8.0)
    speaker = VirtualSpeaker(clock)
    listener = tone_listener(SCRIPT, likely_speech=True)
    agent = Agent(listener, FakeVoice(clock, lambda m: LONG_REPLY), speaker, clock, History("s"))
    asyncio.run(agent.run(mic))
    assert not of(agent, Interruption) and not [e for e in agent.bus.history if e.kind == "speech_start"][1:]
    (finished,) = of(agent, PlaybackFinished)
    assert finished.heard_text == LONG_REPLY
    runs = loud_runs(stereo_recording(mic, speaker)[:, 1])
    assert len(runs) == 2 and runs[1][0] - runs[0][1] < 0.3  # a short gap, then the rest of the reply
    assert sum(end - start for start, end in runs) == pytest.approx(20 * WORD_AUDIO_S, abs=0.02)


def test_a_turn_the_user_goes_on_with_drops_the_unheard_reply_and_answers_the_whole_turn():
    first_end = speech_end(0.5, 0)
    agent, voice, _ = converse([(0.5, 0), (first_end + 0.45, 3)], resume_s=0.6)
    whole = f"{SCRIPT.texts[0]} {SCRIPT.texts[3]}"
    (resumed,) = of(agent, TurnResumed)
    early, final = of(agent, EndOfTurn)
    assert early.text == SCRIPT.texts[0] and resumed.ended_at == early.t and final.text == whole
    # The reply to the early end was dropped before a sound of it played; only the whole turn was answered.
    assert len(of(agent, PlaybackStarted)) == 1 and of(agent, PlaybackStarted)[0].t > final.t
    assert voice.prompts[-1][-1] == {"role": "user", "content": whole}
    assert agent.history.messages == [
        {"role": "user", "content": whole},
        {"role": "assistant", "content": SHORT_REPLY},
    ]


def _agent_over(pieces, preempt_wait_s, unfinished=lambda text: False):
    from agent.loop import AgentConfig

    agent, voice, _ = converse(pieces, config=AgentConfig(preempt_wait_s=preempt_wait_s), unfinished=unfinished)
    return agent, voice


def test_a_reply_written_ahead_plays_sooner_and_leaves_the_same_conversation():
    ahead, _ = _agent_over([(0.5, 0)], preempt_wait_s=0.5)
    after, _ = _agent_over([(0.5, 0)], preempt_wait_s=0.0)
    (fast,), (slow,) = of(ahead, TurnMetrics), of(after, TurnMetrics)
    # Written from the speech end's transcript, not from the end of turn (250 ms later).
    assert fast.voice_to_voice_s <= slow.voice_to_voice_s - 0.05
    assert fast.first_text_s < slow.first_text_s
    assert ahead.history.messages == after.history.messages
    # Nothing of it was published before the end of turn it answers.
    kinds = [e.kind for e in ahead.bus.history if e.kind not in ("partial", "speech_likely")]
    assert kinds.index("end_of_turn") < kinds.index("reply_started") < kinds.index("reply_text_delta")
    (turn,) = of(ahead, EndOfTurn)
    assert all(e.t >= turn.t for e in ahead.bus.history if e.kind.startswith("reply_"))


def test_a_reply_written_ahead_is_dropped_unseen_when_the_user_goes_on():
    first_end = speech_end(0.5, 0)
    agent, voice = _agent_over([(0.5, 0), (first_end + 0.2, 3)], preempt_wait_s=0.5)
    whole = f"{SCRIPT.texts[0]} {SCRIPT.texts[3]}"
    assert [p[-1]["content"] for p in voice.prompts] == [SCRIPT.texts[0], whole]  # written ahead, then again
    (started,) = of(agent, ReplyStarted)
    assert {e.reply_id for e in agent.bus.history if hasattr(e, "reply_id")} == {started.reply_id}
    assert len(of(agent, PlaybackStarted)) == 1
    assert agent.history.messages == [{"role": "user", "content": whole}, {"role": "assistant", "content": SHORT_REPLY}]


def test_a_reply_written_ahead_is_dropped_when_the_score_says_the_turn_goes_on():
    agent, voice = _agent_over([(0.5, 0)], preempt_wait_s=0.5, unfinished=lambda text: text.endswith("today"))
    (turn,) = of(agent, EndOfTurn)
    assert turn.silence > 1.0  # the score asked for the long wait, and no more speech came
    # Written ahead from the transcript, dropped at the score, written again at the end of turn.
    assert [p[-1]["content"] for p in voice.prompts] == [SCRIPT.texts[0], SCRIPT.texts[0]]
    (started,) = of(agent, ReplyStarted)
    assert started.t >= turn.t
    (metrics,) = of(agent, TurnMetrics)
    assert metrics.first_text_s == pytest.approx(0.3, abs=0.07)  # thought from the end of turn: nothing was kept
