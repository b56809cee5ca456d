"""``ttt serve``: the agent over the OpenAI Realtime protocol (WebSocket), plus a browser page.

One process, one copy of each model, any number of sessions (up to ``max_sessions``):

- ``GET /``: the web page (``agent/web/index.html``): microphone in, the agent's voice out, live text.
- ``GET /healthz``: 200 once the models are loaded (503 before).
- ``/v1/realtime[?model=...]``: the Realtime WebSocket (:mod:`agent.realtime`).

Sharing: every session has its own conversation, VAD state, text generator (its own KV cache) and
loop; they share the recognizer, the end-of-turn scorer, the LLM or talker weights and Piper.
The LLM (or talker) runs one forward pass at a time, granted first come first served
(:class:`FairLock`): two sessions generating at once take turns step by step, so neither waits for
the other's whole reply. Piper runs on one thread for all, clause by clause, in order.

Security: binds to 127.0.0.1 by default; binding elsewhere needs ``--token``, which every
WebSocket client must then present (``Authorization: Bearer TOKEN``, or the subprotocol entry
``openai-insecure-api-key.TOKEN`` that browsers use). A browser page from another origin is
refused. Messages over ``max_message_bytes`` close the connection (code 1009); bad events get an
``error`` event, and a client that keeps sending them is disconnected. Nothing a client sends can
reach another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import ipaddress
import json
import logging
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.realtime import RealtimeSession, SessionParts
from agent.settings import ServeSettings, Settings

log = logging.getLogger("ttt.serve")

PAGE = Path(__file__).parent / "web" / "index.html"
KEY_PROTOCOL = "openai-insecure-api-key."  # a browser's way to present the token
REALTIME_PATH = "/v1/realtime"


class ServeError(ValueError):
    """A server that cannot be started as asked (the message says what to change)."""


def check_config(config: ServeSettings) -> None:
    """ServeError when serving as ``config`` says would be unsafe or impossible."""
    if not is_loopback(config.host) and not config.token:
        raise ServeError(
            f"binding to {config.host} exposes the agent to the network; give --token TOKEN (clients send it as "
            "'Authorization: Bearer TOKEN'), or bind to 127.0.0.1"
        )
    if config.max_sessions < 1 or config.max_message_bytes < 1024:
        raise ServeError("--max-sessions must be >= 1 and --max-message-bytes >= 1024")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FairLock:
    """A lock granted in the order it was asked for (a ticket lock), so alternating users take turns."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the next ticket to hand out
        self._serving = 0  # the ticket that holds the lock

    def __enter__(self) -> FairLock:
        with self._cond:
            ticket = self._next
            self._next += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class ScheduledModel:
    """A shared torch model whose every forward pass waits for its turn on ``lock``."""

    def __init__(self, model: Any, lock: FairLock):
        self._model = model
        self._lock = lock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward pass, in turn."""
        with self._lock:
            return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class ScheduledTalker(ScheduledModel):
    """The shared talker; its forward passes (``hidden``) take turns on the lock.

    Each session's wrapper keeps its own prompt cache: sessions' histories share no prefix worth
    one cache, and taking turns with it would make every turn prefill its whole history again.
    """

    def __init__(self, model: Any, lock: FairLock):
        super().__init__(model, lock)
        self.prompt_cache: Any = None  # model.generate.PromptCache of this session's last prompt
        self.cache_lock = threading.Lock()

    def hidden(self, *args: Any, **kwargs: Any) -> Any:
        """The talker's forward pass, in turn."""
        with self._lock:
            return self._model.hidden(*args, **kwargs)

    def prime(self, messages: list[dict]) -> None:
        """Compute the prompt cache of ``messages`` for this session only."""
        from model.generate import prime

        prime(self, messages)

    def astream(self, messages: list[dict], codec: Any = None, **kwargs: Any) -> Any:
        """The talker's streaming generation, with this wrapper as the model it calls."""
        from model.generate import astream

        return astream(self, messages, codec, **kwargs)


class Models:
    """Everything loaded once and shared by the sessions; ``parts()`` builds one session's share."""

    def __init__(self, settings: Settings, reply: str | None = None):
        from agent.chat import agent_config, build_voice, token_counter
        from agent.listen import Listener

        self.settings = settings
        self.listener = Listener.from_settings(settings, likely_speech=True)
        self.voice, self.voice_name, tokenizer = build_voice(settings, reply)
        self.count_tokens = token_counter(tokenizer)
        self.agent_config = agent_config(settings)
        self.lock = FairLock()

    def session_voice(self) -> Any:
        """A voice of its own for one session (its own text cache), on the shared weights."""
        from agent.voices import CascadeVoice, TalkerVoice, TextStreamer

        voice = self.voice
        if isinstance(voice, CascadeVoice):
            model = ScheduledModel(voice.text.model, self.lock)
            backbone = SimpleNamespace(model=model, tokenizer=voice.text.tokenizer)
            text = TextStreamer(backbone, voice.text.max_new_tokens, voice.text.prompt_tokens)
            return CascadeVoice(
                text, voice.teacher, voice.min_words, voice.max_words, voice.first_words, synth=voice.synth
            )
        if isinstance(voice, TalkerVoice):
            return TalkerVoice(ScheduledTalker(voice.talker, self.lock), voice.codec, voice.options)
        return voice

    def parts(self) -> SessionParts:
        """One session's parts: its own VAD state and threads, the shared models."""
        from agent.listen import Listener

        shared = self.listener
        vad = copy.copy(shared.vad)  # the same onnx session, its own recurrent state
        vad.reset()
        listener = Listener(vad, shared.asr, shared.turns, shared.partial_interval_ms, likely_speech=True)
        return SessionParts(
            listener=listener,
            voice=self.session_voice(),
            count_tokens=self.count_tokens,
            voice_name=self.voice_name,
            system_prompt=self.settings.agent.system_prompt,
            max_history_tokens=self.settings.agent.max_history_tokens,
            agent=self.agent_config,
            close=listener.close,
        )


class RealtimeServer:
    """The HTTP + WebSocket server; ``make_parts`` builds a session's parts once the models are in."""

    def __init__(self, config: ServeSettings):
        check_config(config)
        self.config = config
        self.make_parts: Callable[[], SessionParts] | None = None  # set once the models are loaded
        self.voice_name = ""
        self.sessions: set[RealtimeSession] = set()
        self.port: int | None = None
        self._server: Any = None

    @property
    def ready(self) -> bool:
        """Whether the models are loaded."""
        return self.make_parts is not None

    async def start(self) -> None:
        """Listen (the models may still be loading: /healthz says when they are in)."""
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._session,
            self.config.host,
            self.config.port,
            process_request=self._http,
            select_subprotocol=_select_subprotocol,
            max_size=self.config.max_message_bytes,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and end every session."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # --- HTTP ------------------------------------------------------------------------------------

    def _http(self, connection: Any, request: Any) -> Any:
        path = urlsplit(request.path).path
        if path == "/healthz":
            status = HTTPStatus.OK if self.ready else HTTPStatus.SERVICE_UNAVAILABLE
            state = "ok" if self.ready else "loading"
            body = {"status": state, "sessions": len(self.sessions), "voice": self.voice_name}
            return _json_response(connection, status, body)
        if path in ("/", "/index.html") and "upgrade" not in request.headers.get("Connection", "").lower():
            response = connection.respond(HTTPStatus.OK, PAGE.read_text())
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            return response
        if path != REALTIME_PATH:
            where = f"nothing at {path}; the Realtime API is at {REALTIME_PATH}\n"
            return connection.respond(HTTPStatus.NOT_FOUND, where)
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
            return connection.respond(HTTPStatus.FORBIDDEN, "a page from another origin may not talk to this agent\n")
        if self.config.token and not _presents(request, self.config.token):
            return connection.respond(
                HTTPStatus.UNAUTHORIZED,
                "this server needs its token: send 'Authorization: Bearer TOKEN' or the subprotocol "
                f"'{KEY_PROTOCOL}TOKEN'\n",
            )
        if not self.ready:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the models are still loading; retry shortly\n")
        if len(self.sessions) >= self.config.max_sessions:
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"{self.config.max_sessions} sessions are running; retry later\n"
            )
        return None

    # --- one WebSocket session -------------------------------------------------------------------

    async def _session(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        assert self.make_parts is not None
        query = parse_qs(urlsplit(connection.request.path).query)
        session = RealtimeSession(self.make_parts(), model=query.get("model", ["ttt"])[0])
        self.sessions.add(session)
        log.info("session %s opened (%d running)", session.sid, len(self.sessions))
        writer = asyncio.create_task(_write(connection, session))
        runner = asyncio.create_task(session.run())
        try:
            async for message in connection:
                try:
                    keep = session.receive(message)
                except Exception as exc:  # a bug must cost this session, not the server
                    log.exception("session %s failed on a client event", session.sid)
                    session.error("server_error", f"{type(exc).__name__}: {exc}")
                    keep = True
                if not keep:
                    await asyncio.sleep(0.05)  # let the last error event go out
                    await connection.close(1008, "too many invalid events")
                    break
                if runner.done():
                    break
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            runner.cancel()  # the loop cuts the reply and stops hearing
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
            await session.close()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            log.info("session %s closed (%d running)", session.sid, len(self.sessions))


async def _write(connection: Any, session: RealtimeSession) -> None:
    """Send the session's server events in order, until it ends."""
    while (event := await session.outbox.get()) is not None:
        await connection.send(json.dumps(event))


def _select_subprotocol(connection: Any, offered: Any) -> Any:
    """Take ``realtime`` when offered (browsers need one chosen); the token entry is only read."""
    return "realtime" if "realtime" in offered else None


def _presents(request: Any, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    return any(p.startswith(KEY_PROTOCOL) and hmac.compare_digest(p[len(KEY_PROTOCOL) :], token) for p in offered)


def _json_response(connection: Any, status: HTTPStatus, body: dict) -> Any:
    response = connection.respond(status, json.dumps(body) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response


def run_serve(settings: Settings, reply: str | None = None) -> int:
    """``ttt serve`` as ``settings.serve`` says: listen at once, load the models, serve until interrupted."""
    config = settings.serve
    server = RealtimeServer(config)
    handler = logging.StreamHandler(sys.stdout)  # sessions opening and closing, each turn's latencies
    handler.setFormatter(logging.Formatter("ttt serve: %(message)s"))
    for name in ("ttt.serve", "ttt.realtime"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)

    async def main() -> None:
        try:
            await server.start()
        except OSError as exc:
            raise ServeError(f"cannot listen on {config.host}:{config.port} ({exc}); pick another --port") from None
        url = f"http://{config.host}:{server.port}"
        print(f"ttt serve: listening on {url} (page {url}/, Realtime ws://{config.host}:{server.port}{REALTIME_PATH})")
        print("ttt serve: loading the models...", file=sys.stderr, flush=True)
        sys.stdout.flush()
        models = await asyncio.get_running_loop().run_in_executor(None, Models, settings, reply)
        server.voice_name = models.voice_name
        server.make_parts = models.parts
        print(f"ttt serve: ready, the agent answers with the {models.voice_name} voice", flush=True)
        try:
            await asyncio.Future()
        finally:
            await server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0
