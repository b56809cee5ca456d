"""The Hermes MQTT bridge against a real mosquitto broker, checked with mosquitto_sub / mosquitto_pub.

The agent runs on scripted hearing and voice parts in real time (the broker and its clients live
in wall time); the Hermes payloads sent are written by hand here, not by our code.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from agent.dialogue import History
from agent.events import PlaybackFinished
from agent.loop import Agent
from agent.mqtt import MqttBridge, MqttConfig
from audio_io.virtual import VirtualClock, VirtualMicrophone, VirtualSpeaker
from tests.fakes import FakeVoice, ToneScript, tone_listener

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None or shutil.which("mosquitto_sub") is None,
    reason="needs the mosquitto broker and clients: apt-get install mosquitto mosquitto-clients (.ci/run does)",
)
SCRIPT = ToneScript(["turn on the kitchen lights", "what time is it"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto on a free loopback port, started and stopped by the test."""

    def __init__(self, tmp_path, extra: str = ""):
        self.port = free_port()
        self.config = tmp_path / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{extra}")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.kill()


def make_certificates(folder) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) paths."""
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr, ext = folder / "server.crt", folder / "server.key", folder / "server.csr", folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    quiet = {"check": True, "capture_output": True}
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1"]
        + ["-subj", "/CN=ttt test CA"],
        **quiet,
    )
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        **quiet,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert]
        + ["-days", "1", "-extfile", ext],
        **quiet,
    )
    return str(ca), str(cert), str(key)


def subscriber(port: int, seconds: int, cafile: str | None = None) -> subprocess.Popen:
    """An independent client printing "topic payload" for every hermes/# and ttt/# message."""
    args = [
        "mosquitto_sub",
        *(["--cafile", cafile] if cafile else []),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        "hermes/#",
        "-t",
        "ttt/#",
        "-v",
        "-W",
        str(seconds),
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def received(sub: subprocess.Popen) -> list[tuple[str, dict]]:
    sub.terminate()
    out, _ = sub.communicate(timeout=5)
    pairs = []
    for line in out.splitlines():
        topic, _, payload = line.partition(" ")
        pairs.append((topic, json.loads(payload)))
    return pairs


async def publish(port: int, topic: str, payload: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", payload
    )
    assert await process.wait() == 0


def run_agent(port, pieces, tail_s, during, **mqtt):
    clock = VirtualClock(realtime=True)
    mic = VirtualMicrophone(clock, [(t, SCRIPT.speech(i)) for t, i in pieces], tail_s=tail_s)
    agent = Agent(tone_listener(SCRIPT), FakeVoice(clock, lambda m: "done"), VirtualSpeaker(clock), clock, History("s"))
    config = MqttConfig("127.0.0.1", port, min_backoff_s=0.2, max_backoff_s=0.5, **mqtt)
    bridge = MqttBridge(config, agent.bus, agent.send, clock.now)

    async def main():
        task = asyncio.create_task(bridge.run())
        await asyncio.wait_for(bridge.connected.wait(), 5)
        helper = asyncio.create_task(during(agent, bridge, clock))
        await agent.run(mic)
        await helper
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    return agent, bridge


@needs_mosquitto
def test_hermes_say_text_captured_and_ttt_topics(broker):
    sub = subscriber(broker.port, 30)
    time.sleep(0.3)  # let the subscriber connect

    async def during(agent, bridge, clock):
        await clock.wait_until(4.0)  # after the user's turn has been answered
        say = '{"text": "the laundry is done", "id": "t1", "siteId": "default"}'
        await publish(broker.port, "hermes/tts/say", say)
        await publish(broker.port, "hermes/tts/say", '{"text": "not for us", "id": "t2", "siteId": "kitchen"}')

    agent, _ = run_agent(broker.port, [(0.5, 0)], tail_s=5.0, during=during)
    messages = received(sub)
    topics = [t for t, _ in messages]
    captured = [p for t, p in messages if t == "hermes/asr/textCaptured"]
    assert len(captured) == 1
    assert captured[0]["text"] == SCRIPT.texts[0] and captured[0]["siteId"] == "default"
    assert captured[0]["seconds"] == pytest.approx(len(SCRIPT.speech(0)) / 16000, abs=0.07)
    assert 0 < captured[0]["likelihood"] <= 1
    finished = [p for t, p in messages if t == "hermes/tts/sayFinished"]
    assert finished == [{"id": "t1", "siteId": "default"}]  # the other site's say was ignored
    spoken = [e for e in agent.bus.history if isinstance(e, PlaybackFinished) and e.reply_id == "t1"]
    assert spoken and spoken[0].heard_text == "the laundry is done"
    states = [p for t, p in messages if t == "ttt/default/agent_state_changed"]
    assert states[0] == {**states[0], "oldState": "initializing", "newState": "listening"} or states
    assert {"oldState", "newState"} <= set(states[-1])
    (metrics,) = [p for t, p in messages if t == "ttt/default/metrics"]
    assert metrics["voiceToVoiceS"] > 0 and "turnWaitS" in metrics and "firstAudioS" in metrics
    assert "ttt/default/playback_finished" in topics and "ttt/default/end_of_turn" in topics


@needs_mosquitto
def test_the_bridge_speaks_hermes_over_tls(tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    # Run as this user: as root, mosquitto would switch to its own user, which cannot read the key here.
    tls = f"user {getpass.getuser()}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    broker = Broker(tmp_path, tls)
    broker.start()
    try:
        sub = subscriber(broker.port, 20, cafile=ca)
        time.sleep(0.3)

        async def during(agent, bridge, clock):
            await clock.wait_until(2.5)

        run_agent(broker.port, [(0.5, 0)], tail_s=3.0, during=during, tls=True, ca_file=ca)
        captured = [p for t, p in received(sub) if t == "hermes/asr/textCaptured"]
        assert [p["text"] for p in captured] == [SCRIPT.texts[0]]
        # Without the test CA the broker's certificate is refused: no silent fallback to trust.
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(
                socket.create_connection(("127.0.0.1", broker.port), timeout=5), server_hostname="127.0.0.1"
            )
    finally:
        broker.kill()


@needs_mosquitto
def test_toggle_off_mutes_and_interrupt_cuts(broker):
    async def during(agent, bridge, clock):
        await publish(broker.port, "hermes/asr/toggleOff", '{"siteId": "default", "reason": "test"}')
        await clock.wait_until(2.5)
        await publish(broker.port, "hermes/asr/toggleOn", '{"siteId": "default"}')

    agent, _ = run_agent(broker.port, [(0.5, 0), (3.5, 1)], tail_s=3.0, during=during)
    turns = [e.text for e in agent.bus.history if e.kind == "end_of_turn"]
    assert turns == [SCRIPT.texts[1]]  # the first turn was spoken while muted


@needs_mosquitto
def test_the_conversation_goes_on_while_the_broker_is_down_and_the_bridge_reconnects(broker):
    async def during(agent, bridge, clock):
        await clock.wait_until(1.0)
        broker.kill()  # mid-conversation: the first turn is being spoken
        await clock.wait_until(4.0)
        assert not bridge.connected.is_set()
        broker.start()
        await asyncio.wait_for(bridge.connected.wait(), 5)
        sub = subscriber(broker.port, 20)
        await asyncio.sleep(0.3)
        during.sub = sub

    agent, bridge = run_agent(broker.port, [(0.5, 0), (6.0, 1)], tail_s=4.0, during=during)
    assert bridge.connections == 2
    answers = [e for e in agent.bus.history if isinstance(e, PlaybackFinished)]
    assert [a.heard_text for a in answers] == ["done", "done"]  # both turns answered
    captured = [p["text"] for t, p in received(during.sub) if t == "hermes/asr/textCaptured"]
    assert captured == [SCRIPT.texts[1]]  # published after the reconnection


class Responder:
    """An independent paho-mqtt client serving one tool: it answers JSON-RPC tools/call on its Response Topic."""

    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as paho

        self.requests: list[dict] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        request = json.loads(message.payload)
        self.requests.append(request)
        reply = Properties(PacketTypes.PUBLISH)
        reply.CorrelationData = message.properties.CorrelationData
        city = request["params"]["arguments"]["city"]
        body = {
            "jsonrpc": "2.0",
            "id": request["id"],
            "result": {"content": [{"type": "text", "text": f"rain in {city}"}]},
        }
        client.publish(message.properties.ResponseTopic, json.dumps(body), qos=1, properties=reply)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


@needs_mosquitto
def test_a_tool_served_over_mqtt_request_response(broker):
    from agent.events import ToolCallEnded
    from agent.tools import Toolbox, mqtt_tool

    weather = mqtt_tool("get_weather", "The weather in a city.", {"city": str}, topic="home/weather/call", timeout_s=3)
    silent = mqtt_tool("get_time", "The time.", {"city": str}, topic="home/nobody/call", timeout_s=1)
    responder = Responder(broker.port, "home/weather/call")
    asks = iter(["get_weather", "get_time"])

    def answer(messages):
        if messages[-1]["role"] == "tool":
            return "here you go"
        return f'<tool_call>{{"name": "{next(asks)}", "arguments": {{"city": "Oslo"}}}}</tool_call>'

    clock = VirtualClock(realtime=True)
    mic = VirtualMicrophone(clock, [(0.5, SCRIPT.speech(0)), (5.0, SCRIPT.speech(1))], tail_s=4.0)
    toolbox = Toolbox([weather, silent])
    agent = Agent(
        tone_listener(SCRIPT), FakeVoice(clock, answer), VirtualSpeaker(clock), clock, History("s"), tools=toolbox
    )
    bridge = MqttBridge(MqttConfig("127.0.0.1", broker.port), agent.bus, agent.send, clock.now)
    toolbox.bind_mqtt(bridge)

    async def main():
        task = asyncio.create_task(bridge.run())
        await asyncio.wait_for(bridge.connected.wait(), 5)
        await agent.run(mic)
        await asyncio.wait_for(task, 5)

    try:
        asyncio.run(main())
    finally:
        responder.stop()
    ended = [e for e in agent.bus.history if isinstance(e, ToolCallEnded)]
    assert [(e.name, e.status) for e in ended] == [("get_weather", "ok"), ("get_time", "timeout")]
    assert ended[0].output == "rain in Oslo"
    (request,) = responder.requests
    assert request["method"] == "tools/call" and request["params"] == {
        "name": "get_weather",
        "arguments": {"city": "Oslo"},
    }
    heard = [e.heard_text for e in agent.bus.history if isinstance(e, PlaybackFinished)]
    assert heard == ["here you go", "Sorry, I could not do that."]
