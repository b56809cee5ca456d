"""The MQTT bridge: the agent's events out and its commands in, in Hermes (Rhasspy/Snips) where Hermes has a word.

Out (JSON, camelCase keys):

- ``hermes/asr/textCaptured`` {text, likelihood, seconds, siteId} at each end of a user turn;
- ``hermes/tts/sayFinished`` {id, siteId} once a ``say`` has played;
- ``hermes/error/<component>`` {error, siteId} when something failed and the agent went on;
- ``ttt/<siteId>/<kind>`` every event of the bus, as ``Event.to_json`` writes it (``agent_state_changed``
  {oldState, newState}, ``metrics`` one per turn, ``playback_finished`` with the heard text, ...).

In: ``hermes/tts/say`` {text, id, siteId}, ``hermes/asr/toggleOff`` / ``toggleOn`` {siteId} (mute,
unmute) and ``ttt/<siteId>/interrupt``; messages for another site are ignored.

Tools backed by MQTT (:func:`agent.tools.mqtt_tool`): a call is an MQTT 5 request, a JSON-RPC
``tools/call`` body published to the tool's topic with a Response Topic (``ttt/<siteId>/tool_response``)
and Correlation Data; the answer is the message on that topic carrying the same Correlation Data.

The agent never waits for the broker: when it is down or goes away, events are dropped and the
bridge reconnects with exponential backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from agent.events import (
    EndOfTurn,
    ErrorEvent,
    Event,
    EventBus,
    Interrupt,
    Mute,
    PlaybackFinished,
    Say,
    SpeechStarted,
    Unmute,
)

log = logging.getLogger("ttt.mqtt")


@dataclass
class MqttConfig:
    """Where the broker is and who we are on it."""

    host: str = "127.0.0.1"
    port: int = 1883
    site_id: str = "default"  # Hermes siteId: this agent's messages carry it, others' are ignored
    username: str | None = None
    password: str | None = None
    tls: bool = False  # connect with TLS (port 8883 by convention)
    ca_file: str | None = None  # CA certificates for TLS (default: the system's)
    min_backoff_s: float = 0.5  # first wait before reconnecting; doubles up to max_backoff_s
    max_backoff_s: float = 10.0

    @classmethod
    def parse(cls, address: str, **kwargs: Any) -> MqttConfig:
        """``HOST[:PORT]`` plus the other fields."""
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
        if not host:
            raise ValueError(f"--mqtt expects HOST[:PORT], got {address!r}")
        if port and not port.isdigit():
            raise ValueError(f"--mqtt expects HOST[:PORT] with a numeric port, got {address!r}")
        default = 8883 if kwargs.get("tls") else 1883
        return cls(host=host, port=int(port) if port else default, **kwargs)


class MqttBridge:
    """Publishes ``bus`` events and feeds commands to ``send`` (an Agent's ``send``) until the bus closes."""

    def __init__(self, config: MqttConfig, bus: EventBus, send: Any, now: Any):
        self.config = config
        self.bus = bus
        self.send = send  # called with each inbound Command
        self.now = now  # the session clock's now()
        self.connected = asyncio.Event()
        self.connections = 0  # successful connections so far (1 + reconnects)
        self._say_ids: set[str] = set()  # say commands in flight: their PlaybackFinished answers with sayFinished
        self._turn_start: float | None = None  # first speech start of the current user turn
        self._client: Any = None  # the connected aiomqtt client, None while disconnected
        self._requests: dict[bytes, asyncio.Future] = {}  # tool calls waiting for their answer, by correlation
        self._request_ids = itertools.count(1)

    @property
    def response_topic(self) -> str:
        """Where tool answers come back."""
        return f"ttt/{self.site}/tool_response"

    @property
    def site(self) -> str:
        """The agent's Hermes siteId."""
        return self.config.site_id

    def _new_client(self) -> Any:
        import aiomqtt

        tls = None
        if self.config.tls:
            tls = ssl.create_default_context(cafile=self.config.ca_file)
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            username=self.config.username,
            password=self.config.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=tls,
            timeout=5,
        )

    async def run(self) -> None:
        """Stay connected (reconnecting with backoff) until the bus closes."""
        import aiomqtt

        queue = self.bus.subscribe()
        backoff = self.config.min_backoff_s
        closed = asyncio.Event()
        while not closed.is_set():
            try:
                async with self._new_client() as client:
                    for topic in ("hermes/tts/say", "hermes/asr/toggleOff", "hermes/asr/toggleOn"):
                        await client.subscribe(topic)
                    await client.subscribe(f"ttt/{self.site}/interrupt")
                    await client.subscribe(self.response_topic)
                    self._client = client
                    self.connections += 1
                    self.connected.set()
                    backoff = self.config.min_backoff_s
                    log.info("connected to the MQTT broker %s:%s", self.config.host, self.config.port)
                    while not queue.empty():  # what happened while disconnected is stale
                        if queue.get_nowait() is None:
                            return
                    receiver = asyncio.create_task(self._receive(client))
                    try:
                        await self._publish_all(client, queue, closed)
                    finally:
                        self._client = None
                        receiver.cancel()
                        await asyncio.gather(receiver, return_exceptions=True)
            except aiomqtt.MqttError as exc:
                self._client = None
                self.connected.clear()
                log.warning(
                    "MQTT broker %s:%s: %s; retrying in %.1f s", self.config.host, self.config.port, exc, backoff
                )
                await self._wait_or_close(queue, closed, backoff)
                backoff = min(2 * backoff, self.config.max_backoff_s)
        self.connected.clear()

    async def _wait_or_close(self, queue: asyncio.Queue, closed: asyncio.Event, seconds: float) -> None:
        """Sleep ``seconds``, dropping events meanwhile, unless the bus closes first."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                return
            if event is None:
                closed.set()
                return
            self._track(event)

    async def _publish_all(self, client: Any, queue: asyncio.Queue, closed: asyncio.Event) -> None:
        while (event := await queue.get()) is not None:
            for topic, payload in self.messages(event):
                await client.publish(topic, json.dumps(payload))
        closed.set()

    def _track(self, event: Event) -> None:
        """Bookkeeping that must follow every event, published or not."""
        if isinstance(event, SpeechStarted) and self._turn_start is None:
            self._turn_start = event.t
        elif isinstance(event, EndOfTurn):
            self._turn_start = None
        elif isinstance(event, PlaybackFinished):
            self._say_ids.discard(event.reply_id)

    def messages(self, event: Event) -> list[tuple[str, dict[str, Any]]]:
        """The (topic, payload) pairs ``event`` is published as."""
        out = [(f"ttt/{self.site}/{event.kind}", {**event.to_json(), "siteId": self.site})]
        if isinstance(event, EndOfTurn):
            start = self._turn_start if self._turn_start is not None else event.t - event.silence
            seconds = max(0.0, event.t - event.silence - start)
            out.append(
                (
                    "hermes/asr/textCaptured",
                    {
                        "text": event.text,
                        "likelihood": round(event.likelihood, 4),
                        "seconds": round(seconds, 3),
                        "siteId": self.site,
                    },
                )
            )
        elif isinstance(event, PlaybackFinished) and event.reply_id in self._say_ids:
            out.append(("hermes/tts/sayFinished", {"id": event.reply_id, "siteId": self.site}))
        elif isinstance(event, ErrorEvent):
            out.append((f"hermes/error/{event.component}", {"error": event.message, "siteId": self.site}))
        self._track(event)
        return out

    async def call_tool(self, topic: str, name: str, arguments: dict[str, Any]) -> str:
        """Call the tool served on ``topic``: an MQTT 5 request with a JSON-RPC ``tools/call`` body; its text result.

        Raises ConnectionError while the broker is unreachable and RuntimeError for an error answer;
        the caller's timeout bounds the wait.
        """
        import paho.mqtt.packettypes
        import paho.mqtt.properties

        client = self._client
        if client is None:
            raise ConnectionError(f"the MQTT broker {self.config.host}:{self.config.port} is not connected")
        number = next(self._request_ids)
        correlation = f"{self.site}-{number}".encode()
        properties = paho.mqtt.properties.Properties(paho.mqtt.packettypes.PacketTypes.PUBLISH)
        properties.ResponseTopic = self.response_topic
        properties.CorrelationData = correlation
        body = {
            "jsonrpc": "2.0",
            "id": number,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
        answer = asyncio.get_running_loop().create_future()
        self._requests[correlation] = answer
        try:
            await client.publish(topic, json.dumps(body), qos=1, properties=properties)
            response = await answer
        finally:
            self._requests.pop(correlation, None)
        if "error" in response:
            raise RuntimeError(str(response["error"].get("message", response["error"])))
        result = response.get("result")
        if isinstance(result, dict) and "content" in result:  # the MCP shape: a list of content parts
            text = " ".join(str(part.get("text", "")) for part in result["content"] if isinstance(part, dict))
            if result.get("isError"):
                raise RuntimeError(text or "the tool reported an error")
            return text
        return result if isinstance(result, str) else json.dumps(result)

    def _answer(self, message: Any) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        future = self._requests.get(bytes(correlation)) if correlation else None
        if future is None or future.done():
            return  # an answer nobody waits for (any more)
        try:
            response = json.loads(message.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            response = {"error": {"message": f"the tool answered with something that is not JSON: {message.payload!r}"}}
        future.set_result(response if isinstance(response, dict) else {"result": response})

    async def _receive(self, client: Any) -> None:
        async for message in client.messages:
            if str(message.topic) == self.response_topic:
                self._answer(message)
                continue
            command = self.command(str(message.topic), message.payload)
            if command is not None:
                if isinstance(command, Say):
                    self._say_ids.add(command.id)
                self.send(command)

    def command(self, topic: str, payload: bytes | str | Any) -> Event | None:
        """The command an inbound message asks for; None for another site or a malformed message."""
        try:
            data = json.loads(payload or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignoring a message on %s that is not JSON: %r", topic, payload)
            return None
        if not isinstance(data, dict):
            return None
        if topic == f"ttt/{self.site}/interrupt":
            return Interrupt(self.now())
        if data.get("siteId", "default") != self.site:
            return None
        if topic == "hermes/tts/say":
            text = str(data.get("text", "")).strip()
            if not text:
                log.warning("ignoring hermes/tts/say without text: %r", data)
                return None
            return Say(self.now(), text, str(data.get("id") or f"say-{len(self._say_ids) + 1}"))
        if topic == "hermes/asr/toggleOff":
            return Mute(self.now())
        if topic == "hermes/asr/toggleOn":
            return Unmute(self.now())
        return None
