"""The MQTT bridge: the agent's events out and its commands in, in Hermes (Rhasspy/Snips) where Hermes has a word.

Out (JSON, camelCase keys):

- ``hermes/asr/textCaptured`` {text, likelihood, seconds, siteId} at each end of a user turn;
- ``hermes/tts/sayFinished`` {id, siteId} once a ``say`` has played;
- ``hermes/error/<component>`` {error, siteId} when something failed and the agent went on;
- ``ttt/<siteId>/<kind>`` every event of the bus, as ``Event.to_json`` writes it (``agent_state_changed``
  {oldState, newState}, ``metrics`` one per turn, ``playback_finished`` with the heard text, ...).

In: ``hermes/tts/say`` {text, id, siteId}, ``hermes/asr/toggleOff`` / ``toggleOn`` {siteId} (mute,
unmute) and ``ttt/<siteId>/interrupt``; messages for another site are ignored.

The agent never waits for the broker: when it is down or goes away, events are dropped and the
bridge reconnects with exponential backoff.
"""

from __future__ import annotations

import asyncio
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

    @property
    def site(self) -> str:
        """The agent's Hermes siteId."""
        return self.config.site_id

    def _client(self) -> Any:
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
                async with self._client() as client:
                    for topic in ("hermes/tts/say", "hermes/asr/toggleOff", "hermes/asr/toggleOn"):
                        await client.subscribe(topic)
                    await client.subscribe(f"ttt/{self.site}/interrupt")
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
                        receiver.cancel()
                        await asyncio.gather(receiver, return_exceptions=True)
            except aiomqtt.MqttError as exc:
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

    async def _receive(self, client: Any) -> None:
        async for message in client.messages:
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
