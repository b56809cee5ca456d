"""An independent Realtime client for the slow tests and the latency benchmark: the official ``openai`` package.

``serve_process`` starts ``ttt serve`` as its own process (the real deployment shape) and waits for
/healthz; ``ask`` speaks a question to it in real time, as a microphone would, and records what comes
back, with the client's own clock: voice to voice is the first reply audio received minus the moment
the last sample of the question's speech was sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

WIRE_RATE = 24_000
CHUNK_S = 0.05  # a microphone's message every 50 ms


@dataclass(frozen=True)
class Served:
    """A running ``ttt serve`` process."""

    port: int
    pid: int
    output: list[str]  # the server's output lines so far (each answered turn's latencies among them)

    def turn_metrics(self) -> list[dict]:
        """The server's own per-turn latencies (its ``metrics`` events), in order."""
        return [json.loads(line.split(" turn ", 1)[1]) for line in list(self.output) if " turn {" in line]

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (Linux /proc)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve_process(*args: str, timeout_s: float = 240.0) -> Iterator[Served]:
    """``ttt serve --port 0 ARGS`` in a subprocess; yields it once /healthz says the models are in."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "agent.cli", "serve", "--port", "0", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        port = None
        lines = []
        deadline = time.monotonic() + timeout_s
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("ttt serve exited:\n" + "".join(lines))
            lines.append(line)
            if "listening on http://" in line:
                port = int(line.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ttt serve did not get ready:\n" + "".join(lines) + (proc.stdout.read() or ""))
            time.sleep(0.5)
        drain = _Drain(proc)
        drain.start()
        yield Served(port, proc.pid, drain.lines)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Drain:
    """Keeps reading the server's output so its pipe never fills."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)


@contextlib.contextmanager
def chromium(microphone_wav: str | os.PathLike) -> Iterator[object]:
    """Headless Debian Chromium (selenium) whose microphone plays ``microphone_wav`` once."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        raise RuntimeError("the browser tests need Debian's chromium and chromium-driver: run .ci/run to install them")
    options = Options()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",  # grant the microphone
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait_page(driver: object, done, timeout_s: float = 60.0) -> dict:
    """Poll the page's ``window.ttt`` until ``done(state)`` or the timeout; returns the last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = driver.execute_script("return window.ttt")
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def to_wire(samples16k: np.ndarray) -> np.ndarray:
    """16 kHz float32 -> 24 kHz float32."""
    import soxr

    return soxr.resample(samples16k, 16_000, WIRE_RATE)


def pcm16(samples: np.ndarray) -> str:
    """float32 -> base64 PCM16 (little-endian), as the API carries audio."""
    return base64.b64encode(np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes()).decode()


@dataclass
class Turn:
    """What one spoken question got back."""

    events: list[dict] = field(default_factory=list)
    user_transcript: str = ""
    reply_transcript: str = ""
    reply_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 24 kHz
    speech_end_sent: float | None = None  # client clock: the question's last speech sample went out
    first_audio_at: float | None = None  # client clock: the first reply audio arrived
    status: str = ""

    @property
    def voice_to_voice_s(self) -> float | None:
        """First reply audio received minus the end of the question's speech, on the client's clock."""
        if self.first_audio_at is None or self.speech_end_sent is None:
            return None
        return self.first_audio_at - self.speech_end_sent

    def types(self) -> list[str]:
        """The server event types, in order."""
        return [e["type"] for e in self.events]


async def ask(port: int, speech: np.ndarray, lead_s: float = 0.3, tail_s: float = 4.0, timeout_s: float = 60.0) -> Turn:
    """Speak ``speech`` (16 kHz, trimmed) after ``lead_s`` of silence, then silence; return what came back."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(
        api_key="local", base_url=f"http://127.0.0.1:{port}/v1", websocket_base_url=f"ws://127.0.0.1:{port}/v1"
    )
    lead, tail = np.zeros(round(lead_s * WIRE_RATE), np.float32), np.zeros(round(tail_s * WIRE_RATE), np.float32)
    audio = np.concatenate([lead, to_wire(speech), tail])
    speech_end = len(lead) + round(len(speech) * WIRE_RATE / 16_000)
    turn = Turn()
    pieces: list[np.ndarray] = []
    async with client.realtime.connect(model="ttt") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": WIRE_RATE},
                        "turn_detection": {"type": "server_vad"},
                    }
                },
            }
        )

        async def microphone() -> None:
            step = round(CHUNK_S * WIRE_RATE)
            start = time.monotonic()
            for offset in range(0, len(audio), step):
                await asyncio.sleep(max(0.0, start + offset / WIRE_RATE - time.monotonic()))
                await conn.input_audio_buffer.append(audio=pcm16(audio[offset : offset + step]))
                if turn.speech_end_sent is None and offset + step >= speech_end:
                    # this message carries the speech's last sample, captured (speech_end - offset) samples in
                    turn.speech_end_sent = time.monotonic() - (offset + step - speech_end) / WIRE_RATE
            while True:  # a live microphone goes on hearing silence until the reply is over
                await asyncio.sleep(CHUNK_S)
                await conn.input_audio_buffer.append(audio=pcm16(np.zeros(step, np.float32)))

        mic = asyncio.create_task(microphone())
        try:
            async with asyncio.timeout(timeout_s):
                async for event in conn:
                    data = json.loads(event.to_json()) if hasattr(event, "to_json") else dict(event)
                    turn.events.append(data)
                    kind = data["type"]
                    if kind == "conversation.item.input_audio_transcription.completed":
                        turn.user_transcript = data["transcript"]
                    elif kind == "response.output_audio.delta":
                        if turn.first_audio_at is None:
                            turn.first_audio_at = time.monotonic()
                        raw = base64.b64decode(data["delta"])
                        pieces.append(np.frombuffer(raw, "<i2").astype(np.float32) / 32768)
                    elif kind == "response.output_audio_transcript.done":
                        turn.reply_transcript = data["transcript"]
                    elif kind == "response.done":
                        turn.status = data["response"]["status"]
                        break
        finally:
            mic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mic
    turn.reply_audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return turn
