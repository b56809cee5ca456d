"""The cascade baseline's parts on the real SmolLM2 and Piper voice."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from agent.settings import Settings

pytestmark = pytest.mark.slow

QUESTION = [
    {"role": "system", "content": Settings().agent.system_prompt},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def backbone(one_torch_thread):
    from model.backbone import load_backbone

    return load_backbone()


@pytest.fixture(scope="module")
def streamer(backbone):
    from agent.voices import TextStreamer

    return TextStreamer(backbone, max_new_tokens=24)


def test_streamed_text_is_hugging_face_greedy_decoding(backbone, streamer):
    import torch

    streamer._prefix = None
    text = "".join(streamer.stream(QUESTION, threading.Event()))
    ids = streamer.prompt_ids(QUESTION)
    with torch.inference_mode():
        out = backbone.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    expected = backbone.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert text == expected
    assert "Paris" in text  # the default system prompt keeps the answer short and on topic


def test_a_long_prompt_prefilled_in_chunks_is_still_greedy_decoding(backbone, streamer):
    import torch

    from model.kv_cache import PREFILL_CHUNK_TOKENS

    turns = [("Tell me about the weather in spring.", "Spring brings mild days and some rain.")] * 12
    long = [QUESTION[0]]
    for question, answer in turns:
        long += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    long.append(QUESTION[1])
    ids = streamer.prompt_ids(long)
    assert len(ids) > 2 * PREFILL_CHUNK_TOKENS
    streamer._prefix = None
    text = "".join(streamer.stream(long, threading.Event()))
    with torch.inference_mode():
        out = backbone.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    assert text == backbone.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_the_reused_prefix_cache_gives_the_same_reply_as_a_fresh_one(streamer):
    follow = [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    streamer._prefix = None
    list(streamer.stream(QUESTION, threading.Event()))  # leaves the first prompt's cache behind
    reused = "".join(streamer.stream(follow, threading.Event()))
    streamer._prefix = None
    fresh = "".join(streamer.stream(follow, threading.Event()))
    assert reused == fresh and reused


def test_cancel_stops_the_text_at_the_next_token(streamer):
    cancel = threading.Event()
    pieces = []
    for piece in streamer.stream(QUESTION, cancel):
        pieces.append(piece)
        cancel.set()
    assert len(pieces) == 1


def test_cascade_voices_the_text_as_it_is_written(streamer, teacher):
    from agent.voices import CascadeVoice
    from model.generate import AudioChunk, TextDelta

    voice = CascadeVoice(streamer, teacher)

    async def run():
        return [out async for out in voice.reply(QUESTION, threading.Event())]

    outputs = asyncio.run(run())
    assert isinstance(outputs[0], TextDelta)
    audio = [o for o in outputs if isinstance(o, AudioChunk)]
    assert audio and all(o.sample_rate == 16_000 and len(o.samples) for o in audio)
    text = "".join(o.text for o in outputs if isinstance(o, TextDelta))
    seconds = sum(len(o.samples) for o in audio) / 16_000
    assert 0.2 * len(text.split()) < seconds < 1.0 * len(text.split())  # about a word every 0.3-0.5 s
    assert np.isfinite(np.concatenate([o.samples for o in audio])).all()


def test_a_clause_of_punctuation_alone_is_shown_but_not_voiced():
    import asyncio
    import threading

    import numpy as np

    from agent.voices import CascadeVoice
    from model.generate import AudioChunk, TextDelta

    class Text:  # the LLM's text, ending with a full stop the clause splitter leaves on its own
        def stream(self, messages, cancel):
            yield from ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen", "."]

    class Teacher:
        said: list[str] = []

        def speak(self, text):
            if not any(c.isalnum() for c in text):
                raise ValueError(f"the teacher voice has nothing to say for {text!r}")
            self.said.append(text)
            return type("Utterance", (), {"samples": np.full(1600, 0.5, np.float32), "sample_rate": 16_000})()

    async def run():
        voice = CascadeVoice(Text(), Teacher(), first_words=14)
        return [out async for out in voice.reply([], threading.Event())]

    outs = asyncio.run(run())
    assert "".join(o.text for o in outs if isinstance(o, TextDelta)).endswith("fourteen.")
    assert sum(isinstance(o, AudioChunk) for o in outs) == 1 and Teacher.said == [
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    ]


def test_the_talker_voice_starts_at_its_first_sound_and_closes_the_talker_stream():
    import contextlib

    import torch

    from agent.voices import TalkerVoice
    from model.generate import AudioChunk, TextDelta

    rate = 16_000
    tone = (0.3 * np.sin(np.arange(800) / 3)).astype(np.float32)
    pause = np.zeros(1600, np.float32)
    chunks = [pause, np.concatenate([pause, tone]), np.concatenate([pause, tone])]  # silent, late start, inner pause
    closed = []

    class Talker:
        async def astream(self, messages, codec, text=None, options=None, cancel=None):
            try:
                yield TextDelta("hello")
                for samples in chunks:
                    yield AudioChunk(torch.zeros(1, 8, dtype=torch.long), samples, rate)
            finally:
                closed.append(True)

    async def run(limit):
        stream = TalkerVoice(Talker(), codec=None).reply([], threading.Event())
        outs = []
        async with contextlib.aclosing(stream):
            async for out in stream:
                outs.append(out)
                if len(outs) == limit:
                    break
        return outs

    outs = asyncio.run(run(limit=None))
    assert isinstance(outs[0], TextDelta)
    silent, first, later = (o.samples for o in outs[1:])
    assert len(silent) == 0  # all silence before the first sound
    loud = np.flatnonzero(np.abs(first) > 0.01)[0]
    assert loud == rate // 100 and np.array_equal(first[loud:], tone[np.flatnonzero(np.abs(tone) > 0.01)[0] :])
    assert np.array_equal(later, chunks[2])  # pauses once the reply sounds are the reply's own
    assert closed == [True]
    asyncio.run(run(limit=2))  # a consumer that stops early closes the talker's stream too
    assert closed == [True, True]
