"""The web page's own logic in a real browser (headless Chromium), on the server's scripted parts.

Barge-in from the page: the user speaks over a long reply; the page flushes its playback buffer and
reports what it played (``conversation.item.truncate``), and the history keeps just those words.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from agent.dialogue import INTERRUPTED_NOTE
from tests.fakes import WORD_AUDIO_S
from tests.realtime_client import chromium, wait_page
from tests.test_realtime_fast import SCRIPT, Harness

pytestmark = pytest.mark.slow  # a real browser, though the models are scripted

STORY = [f"word{i}" for i in range(20)]


async def test_speaking_over_the_reply_flushes_the_page_and_the_history_keeps_what_it_played(tmp_path):
    mic = tmp_path / "mic.wav"
    pieces = [np.zeros(8000, np.float32), SCRIPT.speech(2), np.zeros(40000, np.float32), SCRIPT.speech(1)]
    sf.write(mic, np.concatenate([*pieces, np.zeros(16000 * 6, np.float32)]), 16000)
    loop = asyncio.get_running_loop()
    async with Harness() as h:

        def browse():
            def done(state):
                return state["truncated"] and len(state["latencies"]) >= 2 and state["state"] == "listening"

            with chromium(mic) as driver:
                driver.get(f"http://127.0.0.1:{h.server.port}/")
                driver.find_element("id", "start").click()
                state = wait_page(driver, done, 30)
                histories = [list(s.history.messages) for s in h.server.sessions]  # before the page goes
                return state, driver.find_element("id", "log").text, histories

        state, text, session_history = await loop.run_in_executor(None, browse)
    assert state["truncated"], state
    cut = state["truncated"][0]["audio_end_ms"]
    assert 500 < cut < 20 * WORD_AUDIO_S * 1000, state  # it was cut while it played
    heard = " ".join(STORY[: int(cut / 1000 / WORD_AUDIO_S)])
    (messages,) = session_history
    assert messages[:3] == [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": heard},
        {"role": "system", "content": INTERRUPTED_NOTE},
    ], messages
    assert messages[3] == {"role": "user", "content": "tell me about trains"}
    assert "[interrupted]" in text and "it is sunny" in text, text
