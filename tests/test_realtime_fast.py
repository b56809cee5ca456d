"""``ttt serve``'s Realtime protocol on scripted parts: a real WebSocket server and client, fake hearing and voice.

Every server event is checked against the ``openai`` package's own types of the GA dialect.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import numpy as np
import pytest
import soxr
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.dialogue import INTERRUPTED_NOTE
from agent.events import MonotonicClock
from agent.realtime import SessionParts
from agent.realtime_audio import decode_pcm16, encode_pcm16
from agent.serve import FairLock, RealtimeServer, ServeError, check_config
from agent.settings import ServeSettings
from tests.fakes import WORD_AUDIO_S, FakeVoice, ToneScript, tone_listener

SCRIPT = ToneScript(["what is the weather like", "tell me about trains", "tell me a story"])
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


def answer(messages):
    last = messages[-1]
    if last["role"] == "tool":
        return f"It is {json.loads(last['content'])['sky']} there"
    if "weather" in last["content"] and "tool" in messages[0]["content"]:
        return '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    if "story" in last["content"]:
        return " ".join(f"word{i}" for i in range(20))
    return "it is sunny"


class Harness:
    """The server on fakes; ``voices`` are the sessions' voices in order."""

    def __init__(self, word_s=0.02, **config):
        self.server = RealtimeServer(ServeSettings(port=0, **config))
        self.word_s = word_s  # the fake voice's compute per word
        self.voices: list[FakeVoice] = []
        self.listeners = []

    def parts(self) -> SessionParts:
        voice = FakeVoice(MonotonicClock(), answer, think_s=0.1, word_s=self.word_s)
        listener = tone_listener(SCRIPT, likely_speech=True)
        self.voices.append(voice)
        self.listeners.append(listener)
        count = lambda m: len(m["content"].split()) + 4  # noqa: E731
        return SessionParts(listener, voice, count, "fake", "You are a test.", 1024, close=listener.close)

    async def __aenter__(self):
        await self.server.start()
        self.server.make_parts = self.parts
        return self

    async def __aexit__(self, *exc):
        await self.server.close()

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.server.port}/v1/realtime?model=ttt-test"


class Client:
    """A raw Realtime client that checks every server event against the openai types."""

    def __init__(self, ws):
        self.ws = ws
        self.events: list[dict] = []
        self.ids: set[str] = set()

    async def send(self, type_, **fields):
        await self.ws.send(json.dumps({"type": type_, **fields}))

    async def next(self, timeout=10.0) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        SERVER_EVENT.validate_python(event)  # a strict client's view: GA types, required fields
        assert event["event_id"] not in self.ids
        self.ids.add(event["event_id"])
        self.events.append(event)
        return event

    async def until(self, type_, timeout=10.0) -> dict:
        while True:
            event = await self.next(timeout)
            if event["type"] == type_:
                return event

    async def speak(self, i, silence_s=1.0, chunk_s=0.1):
        """Utterance i as 24 kHz PCM16, then silence, sent in chunks as fast as possible."""
        audio = np.concatenate([SCRIPT.speech(i), np.zeros(round(silence_s * 16000), np.float32)])
        wire = soxr.resample(audio, 16000, 24000)
        step = round(chunk_s * 24000)
        for start in range(0, len(wire), step):
            await self.send("input_audio_buffer.append", audio=encode_pcm16(wire[start : start + step]))

    async def type_and_ask(self, text):
        """A typed user message, then a request for the reply."""
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        await self.send("conversation.item.create", item=item)
        await self.send("response.create")

    def types(self):
        return [e["type"] for e in self.events]


async def open_client(harness, **kw) -> Client:
    kw.setdefault("subprotocols", ["realtime"])
    ws = await connect(harness.url, **kw)
    client = Client(ws)
    created = await client.next()
    assert created["type"] == "session.created"
    return client


def audio_seconds(events) -> float:
    return sum(len(decode_pcm16(e["delta"])) for e in events if e["type"] == "response.output_audio.delta") / 24000


async def test_a_spoken_question_gets_its_transcript_then_a_spoken_answer_in_protocol_order():
    async with Harness() as h:
        client = await open_client(h)
        assert client.ws.subprotocol == "realtime"
        await client.send("session.update", session={"type": "realtime", "instructions": "You are a test."})
        assert (await client.until("session.updated"))["session"]["audio"]["input"]["turn_detection"]["type"]
        await client.speak(0)
        done = await client.until("response.done")
        types = client.types()
        order = [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_audio_transcript.delta",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ]
        assert [types.index(t) for t in order] == sorted(types.index(t) for t in order), types
        completed = next(e for e in client.events if e["type"].endswith("transcription.completed"))
        assert completed["transcript"] == SCRIPT.texts[0]
        started = next(e for e in client.events if e["type"] == "input_audio_buffer.speech_started")
        assert started["item_id"] == completed["item_id"] and 0 <= started["audio_start_ms"] < 100
        assert done["response"]["status"] == "completed"
        transcript = next(e for e in client.events if e["type"] == "response.output_audio_transcript.done")
        assert transcript["transcript"].strip() == "it is sunny"
        assert audio_seconds(client.events) == pytest.approx(3 * WORD_AUDIO_S, abs=0.01)
        assert done["response"]["output"][0]["content"][0]["transcript"].strip() == "it is sunny"
        session = next(iter(h.server.sessions))
        assert session.history.messages == [
            {"role": "user", "content": SCRIPT.texts[0]},
            {"role": "assistant", "content": "it is sunny"},
        ]
        await client.ws.close()


async def test_audio_goes_out_at_the_pace_the_client_plays_it():
    async with Harness() as h:
        client = await open_client(h)
        await client.type_and_ask("tell me a story")
        loop = asyncio.get_running_loop()
        arrivals = []
        while (event := await client.next())["type"] != "response.done":
            if event["type"] == "response.output_audio.delta":
                arrivals.append((loop.time(), len(decode_pcm16(event["delta"])) / 24000))
        sent = np.cumsum([d for _, d in arrivals])
        elapsed = np.array([t for t, _ in arrivals]) - arrivals[0][0]
        assert sent[-1] == pytest.approx(20 * WORD_AUDIO_S, abs=0.01)
        assert np.all(sent - elapsed <= 0.3 + 0.04 + 0.05)  # never more than the lead ahead of playback
        assert elapsed[-1] >= sent[-1] - 0.3 - 0.05
        await client.ws.close()


async def test_manual_commits_and_response_create_with_metadata():
    async with Harness() as h:
        client = await open_client(h)
        await client.send("session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        updated = await client.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await client.speak(1, silence_s=0.3)
        await asyncio.sleep(0.5)
        assert "input_audio_buffer.speech_started" not in client.types()
        await client.send("input_audio_buffer.commit")
        completed = await client.until("conversation.item.input_audio_transcription.completed")
        assert completed["transcript"] == SCRIPT.texts[1]
        with pytest.raises(TimeoutError):
            await client.until("response.created", timeout=0.5)
        await client.send("response.create", response={"metadata": {"client_event_id": "abc"}})
        created = await client.until("response.created")
        assert created["response"]["metadata"] == {"client_event_id": "abc"}
        assert (await client.until("response.done"))["response"]["status"] == "completed"
        await client.send("input_audio_buffer.commit")
        assert (await client.until("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
        await client.ws.close()


async def test_a_text_only_session_answers_a_typed_message_in_text():
    async with Harness() as h:
        client = await open_client(h)
        await client.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
        await client.until("session.updated")
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}
        await client.send("conversation.item.create", item=item)
        assert (await client.until("conversation.item.added"))["item"]["role"] == "user"
        await client.send("response.create")
        done = await client.until("response.done")
        assert done["response"]["output"][0]["content"][0] == {"type": "output_text", "text": " it is sunny"}
        assert "response.output_text.delta" in client.types()
        assert "response.output_audio.delta" not in client.types()
        await client.ws.close()


async def test_a_client_tool_is_called_back_and_its_output_continues_the_reply():
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    async with Harness() as h:
        client = await open_client(h)
        await client.send("session.update", session={"type": "realtime", "tools": [tool]})
        assert (await client.until("session.updated"))["session"]["tools"][0]["name"] == "get_weather"
        await client.speak(0)
        call = await client.until("response.function_call_arguments.done")
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
        first = await client.until("response.done")
        assert [o["type"] for o in first["response"]["output"]] == ["function_call"]
        assert "response.output_audio.delta" not in client.types()  # the call was never voiced
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": json.dumps({"sky": "cloudy"})}
        await client.send("conversation.item.create", item=output)
        await client.send("response.create")
        second = await client.until("response.done")
        assert second["response"]["id"] != first["response"]["id"]
        assert second["response"]["output"][0]["content"][0]["transcript"].strip() == "It is cloudy there"
        prompt = h.voices[0].prompts[-1]
        assert prompt[-1] == {"role": "tool", "content": '{"sky": "cloudy"}'}
        assert "get_weather" in prompt[0]["content"]  # the client's tool is in the system prompt
        await client.ws.close()


async def test_truncate_cuts_the_reply_where_the_client_stopped_playing_it():
    async with Harness() as h:
        client = await open_client(h)
        await client.type_and_ask("tell me a story")
        delta = await client.until("response.output_audio.delta")
        await asyncio.sleep(0.5)
        await client.send("conversation.item.truncate", item_id=delta["item_id"], content_index=0, audio_end_ms=700)
        truncated = await client.until("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 700
        done = await client.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        await asyncio.sleep(0.1)
        session = next(iter(h.server.sessions))
        assert session.history.messages[1:] == [
            {"role": "assistant", "content": "word0 word1"},  # 0.7 s of 0.3 s words
            {"role": "system", "content": INTERRUPTED_NOTE},
        ]
        await client.ws.close()


async def test_a_reply_truncated_after_it_played_keeps_only_the_heard_words_in_the_history():
    async with Harness() as h:
        client = await open_client(h)
        await client.type_and_ask("hi")
        done = await client.until("response.done")
        item_id = done["response"]["output"][0]["id"]
        await asyncio.sleep(0.1)
        await client.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=400)
        await client.until("conversation.item.truncated")
        session = next(iter(h.server.sessions))
        assert session.history.messages[1:] == [
            {"role": "assistant", "content": "it"},
            {"role": "system", "content": INTERRUPTED_NOTE},
        ]
        await client.send("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=1)
        assert (await client.until("error"))["error"]["code"] == "item_not_found"
        await client.ws.close()


async def test_speech_over_the_reply_cuts_it_and_reports_turn_detected():
    async with Harness() as h:
        client = await open_client(h)
        await client.type_and_ask("tell me a story")
        await client.until("response.output_audio.delta")
        await client.speak(1, silence_s=1.0)
        done = await client.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        assert "input_audio_buffer.speech_started" in client.types()
        second = await client.until("response.done")  # the interruption is answered
        assert second["response"]["status"] == "completed"
        await client.ws.close()


async def test_response_cancel_stops_the_reply_and_a_second_create_while_busy_is_refused():
    async with Harness() as h:
        client = await open_client(h)
        await client.type_and_ask("tell me a story")
        await client.until("response.created")
        await client.send("response.create")
        assert (await client.until("error"))["error"]["code"] == "conversation_already_has_active_response"
        await client.send("response.cancel")
        done = await client.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await asyncio.sleep(0.1)
        await client.send("response.cancel")
        assert (await client.until("error"))["error"]["code"] == "response_cancel_not_active"
        await client.ws.close()


async def test_garbage_gets_errors_then_the_door_and_other_sessions_never_notice():
    async with Harness(max_message_bytes=64 * 1024) as h:
        good = await open_client(h)
        bad = await open_client(h)
        await bad.ws.send("{not json")
        assert (await bad.until("error"))["error"]["code"] == "invalid_json"
        await bad.send("session.explode")
        assert (await bad.until("error"))["error"]["code"] == "unknown_event_type"
        await bad.send("input_audio_buffer.append", audio="###not base64###", event_id="evt_1")
        error = (await bad.until("error"))["error"]
        assert error["code"] == "invalid_audio" and error["event_id"] == "evt_1"
        await bad.send("input_audio_buffer.append", audio=base64.b64encode(b"odd").decode())
        assert (await bad.until("error"))["error"]["code"] == "invalid_audio"
        await bad.ws.send(b"\x00\x01")
        assert (await bad.until("error"))["error"]["code"] == "invalid_message"
        await bad.ws.send(json.dumps([1, 2]))
        assert (await bad.until("error"))["error"]["code"] == "invalid_event"
        await bad.send("session.update", session={"type": "realtime", "audio": {"input": {"format": {"type": "g711"}}}})
        assert (await bad.until("error"))["error"]["code"] == "unsupported_format"
        await bad.send("input_audio_buffer.append", audio="A" * (100 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            await bad.until("never")
        assert closed.value.rcvd.code == 1009  # message too big
        flood = await open_client(h)
        for _ in range(8):
            await flood.ws.send("nope")
        with pytest.raises(ConnectionClosed) as closed:
            await flood.until("never")
        assert closed.value.rcvd.code == 1008
        await good.speak(0)
        done = await good.until("response.done")
        assert done["response"]["status"] == "completed" and "error" not in good.types()
        await good.ws.close()


async def test_audio_sent_far_ahead_of_real_time_is_refused_and_the_session_goes_on():
    async with Harness() as h:
        client = await open_client(h)
        session = next(iter(h.server.sessions))
        session.source.max_queued_s = 1.0  # (30 s by default)
        # 3 s in one message: more than may wait to be heard (a client far ahead of real time)
        await client.send("input_audio_buffer.append", audio=encode_pcm16(np.zeros(3 * 24000, np.float32)))
        error = (await client.until("error"))["error"]
        assert error["code"] == "input_audio_buffer_overflow" and "real time" in error["message"]
        await client.type_and_ask("hi")
        assert (await client.until("response.done"))["response"]["status"] == "completed"
        await client.ws.close()


async def test_two_sessions_at_once_keep_their_own_conversations():
    async with Harness() as h:
        a, b = await open_client(h), await open_client(h)
        await asyncio.gather(a.speak(0), b.speak(1))
        await asyncio.gather(a.until("response.done"), b.until("response.done"))
        heard = {s.history.messages[0]["content"] for s in h.server.sessions}
        assert heard == set(SCRIPT.texts[:2])
        assert all(len(s.history.messages) == 2 for s in h.server.sessions)
        await a.ws.close()
        await b.ws.close()


async def test_a_disconnect_frees_the_session_at_once():
    async with Harness(word_s=0.5) as h:
        client = await open_client(h)
        await client.type_and_ask("tell me a story")
        await client.until("response.output_audio.delta")
        await client.ws.close()
        for _ in range(50):
            if not h.server.sessions:
                break
            await asyncio.sleep(0.02)
        assert not h.server.sessions
        await asyncio.sleep(0.1)
        assert h.voices[0].cancelled == 1  # the reply stopped being generated
        assert h.listeners[0]._eot_worker._shutdown


async def test_the_token_is_required_by_header_or_subprotocol_and_foreign_pages_are_refused():
    async with Harness(token="s3cret") as h:
        with pytest.raises(InvalidStatus) as refused:
            await connect(h.url)
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            await connect(h.url, additional_headers={"Authorization": "Bearer wrong"})
        client = await open_client(h, additional_headers={"Authorization": "Bearer s3cret"})
        await client.ws.close()
        client = await open_client(h, subprotocols=["realtime", "openai-insecure-api-key.s3cret"])
        assert client.ws.subprotocol == "realtime"
        await client.ws.close()
        with pytest.raises(InvalidStatus) as refused:
            await connect(h.url, additional_headers={"Authorization": "Bearer s3cret"}, origin="http://evil.example")
        assert refused.value.response.status_code == 403


async def test_healthz_waits_for_the_models_and_the_page_is_served():
    import urllib.request

    server = RealtimeServer(ServeSettings(port=0))
    await server.start()
    base = f"http://127.0.0.1:{server.port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(None, get, "/healthz")
    assert status == 503 and json.loads(body)["status"] == "loading"
    server.make_parts = Harness().parts
    status, body = await loop.run_in_executor(None, get, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, page = await loop.run_in_executor(None, get, "/")
    assert status == 200
    for needed in ("getUserMedia", "echoCancellation", "noiseSuppression", "autoGainControl", "audioWorklet"):
        assert needed in page
    assert (await loop.run_in_executor(None, get, "/nothing"))[0] == 404
    await server.close()


def test_binding_beyond_loopback_needs_a_token():
    with pytest.raises(ServeError, match="--token"):
        check_config(ServeSettings(host="0.0.0.0"))
    check_config(ServeSettings(host="0.0.0.0", token="t"))
    check_config(ServeSettings(host="::1"))


def test_the_fair_lock_makes_two_busy_users_take_turns():
    lock, order = FairLock(), []
    both = threading.Barrier(2)

    def user(name):
        both.wait()
        for _ in range(30):
            with lock:
                order.append(name)
                time.sleep(0.001)  # a forward pass (it lets the other thread queue)

    threads = [threading.Thread(target=user, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs, longest = 1, 1
    for previous, current in zip(order, order[1:], strict=False):
        runs = runs + 1 if current == previous else 1
        longest = max(longest, runs)
    # Once both are waiting, each release hands the lock to the other: runs stay short.
    assert longest <= 3, "".join(order)


def test_a_scheduled_talker_takes_a_turn_per_forward_pass_and_says_the_same():
    import torch
    from transformers import AutoTokenizer

    from agent.serve import ScheduledTalker
    from model.assets import llm_source
    from model.generate import GenerationOptions, stream
    from tests.test_talker import MESSAGES, FakeCodec, _summary, tiny_talker

    class CountingLock(FairLock):
        entered = 0

        def __enter__(self):
            CountingLock.entered += 1
            return super().__enter__()

    talker = tiny_talker(AutoTokenizer.from_pretrained(llm_source()))
    options = GenerationOptions(max_new_tokens=8, temperature=1.0, seed=3)
    lock = CountingLock()
    with torch.inference_mode():
        direct = list(talker.stream(MESSAGES, FakeCodec(), options=options))
        scheduled = list(stream(ScheduledTalker(talker, lock), MESSAGES, FakeCodec(), options=options))
    assert _summary(scheduled) == _summary(direct)
    assert CountingLock.entered >= 8  # every text step (and every unmasking pass) asked for its turn
