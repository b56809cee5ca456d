"""``ttt serve`` with the real models, talked to by independent clients: the ``openai`` package and Chromium.

One server process (``--reply piper``, as ``auto`` is while no trained talker ships) serves the module;
questions are voiced by the Piper teacher and streamed in real time, as microphones would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.realtime_client import ask, chromium, serve_process, wait_page

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"


@pytest.fixture(scope="module")
def server():
    with serve_process("--reply", "piper") as served:
        yield served.port


@pytest.fixture(scope="module")
def speech(teacher):
    from audio_io.resample import to_mono_16k
    from training.teacher import trim_silence

    def voiced(text):
        utterance = teacher.speak(text)
        return to_mono_16k(trim_silence(utterance.samples), utterance.sample_rate)

    return voiced


@pytest.fixture(scope="module")
def whisper():
    from agent.asr import WhisperAsr

    return WhisperAsr()


def heard_reply(whisper, turn):
    """What whisper hears in the reply's audio (24 kHz back to 16 kHz)."""
    import soxr

    return whisper.transcribe(soxr.resample(turn.reply_audio, 24_000, 16_000))


def check_reply(turn, whisper, question_words):
    from training.wer import word_error_rate

    assert turn.status == "completed", turn.types()
    assert all(word in turn.user_transcript.lower() for word in question_words), turn.user_transcript
    assert len(turn.reply_transcript.split()) >= 2, turn.reply_transcript
    assert len(turn.reply_audio) / 24_000 > 0.5
    heard = heard_reply(whisper, turn)
    # The audio voices the transcript the server sent with it (Piper through the 16 kHz pipeline).
    assert word_error_rate([turn.reply_transcript], [heard]) < 0.35, (turn.reply_transcript, heard)
    assert "error" not in turn.types()
    assert turn.voice_to_voice_s is not None and 0 < turn.voice_to_voice_s < 8


def test_the_openai_client_speaks_a_question_and_gets_transcript_and_audio(server, speech, whisper):
    turn = asyncio.run(ask(server, speech("What is the capital of France?")))
    check_reply(turn, whisper, ["capital", "france"])
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.committed", "response.created"]
    assert [turn.types().index(t) for t in order] == sorted(turn.types().index(t) for t in order)
    partials = [e["delta"] for e in turn.events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    # The live transcript: the partials' stable words, as they are decided, then the final one.
    assert partials and turn.user_transcript.startswith("".join(partials)), (partials, turn.user_transcript)
    print(
        f"openai client: {turn.user_transcript!r} -> {turn.reply_transcript!r}, "
        f"voice to voice {1000 * turn.voice_to_voice_s:.0f} ms at the client"
    )


def test_two_clients_at_once_get_their_replies_while_a_third_sending_garbage_is_cut_off(server, speech, whisper):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def garbage():
        errors, closed = [], None
        async with connect(f"ws://127.0.0.1:{server}/v1/realtime") as ws:
            json.loads(await ws.recv())  # session.created
            for junk in [
                "{oops",
                json.dumps({"type": "no.such.event"}),
                json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}),
                json.dumps([1]),
            ] * 2:
                await ws.send(junk)
            try:
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "error":
                        errors.append(event["error"]["code"])
            except ConnectionClosed as exc:
                closed = exc.rcvd.code if exc.rcvd else None
        return errors, closed

    async def oversized():
        async with connect(f"ws://127.0.0.1:{server}/v1/realtime") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (2 << 20)}))
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

    async def main():
        one = ask(server, speech("How many days are in a week?"))
        two = ask(server, speech("What color is the sky?"), lead_s=0.6)

        async def bad_later():
            await asyncio.sleep(1.0)  # while both are talking
            return await garbage(), await oversized()

        return await asyncio.gather(one, two, bad_later())

    first, second, ((errors, closed), too_big) = asyncio.run(main())
    assert closed == 1008 and set(errors) == {"invalid_json", "unknown_event_type", "invalid_audio", "invalid_event"}
    assert too_big == 1009
    check_reply(first, whisper, ["days", "week"])
    check_reply(second, whisper, ["color", "sky"])
    print(
        f"two at once, voice to voice at the clients: {1000 * first.voice_to_voice_s:.0f} ms and "
        f"{1000 * second.voice_to_voice_s:.0f} ms"
    )


def test_the_browser_page_hears_a_spoken_question_and_plays_a_transcribed_reply(server, speech, tmp_path):
    question = speech("What is the capital of France?")
    mic = tmp_path / "mic.wav"
    sf.write(mic, np.concatenate([np.zeros(8000, np.float32), question, np.zeros(16000 * 10, np.float32)]), 16000)

    def answered(state):
        agent = [t for t in state["turns"] if t["who"] == "agent" and t["text"].strip()]
        return agent and state["latencies"] and state["state"] == "listening" and state["playedSamples"] > 0

    with chromium(mic) as driver:
        driver.get(f"http://127.0.0.1:{server}/")
        driver.find_element("id", "start").click()
        state = wait_page(driver, answered)
        shot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(shot))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "serve_page.png")
        page_text = driver.find_element("id", "log").text
    users = [t["text"] for t in state["turns"] if t["who"] == "you"]
    agents = [t["text"] for t in state["turns"] if t["who"] == "agent"]
    assert any("capital of france" in u.lower() for u in users), state
    assert agents and len(agents[0].split()) >= 2, state
    assert state["playedSamples"] / 24_000 > 0.5, state  # the reply was played through the AudioWorklet
    assert state["latencies"] and 0 < state["latencies"][0] < 8000, state
    assert not state["errors"], state
    assert "agent:" in page_text and "voice to voice" in page_text
    print(f"page: {page_text!r}, {state['partials']} partial pieces; screenshot {ARTIFACTS / 'serve_page.png'}")
