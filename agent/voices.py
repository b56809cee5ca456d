"""The two voices the loop can speak with, behind one interface (:class:`agent.loop.Voice`).

- :class:`TalkerVoice`: the unified transformer writes the reply text and diffuses its audio
  (``Talker.astream``), decoded by the codec span by span.
- :class:`CascadeVoice`: the baseline to compare it with. The same backbone writes the text
  (greedy, token by token), and the Piper teacher voices it clause by clause as the text arrives.

Both yield the talker's own output types: :class:`TextDelta` and :class:`AudioChunk`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from audio_io.frames import SAMPLE_RATE
from audio_io.resample import to_mono_16k
from model.generate import AudioChunk, GenerationOptions, TextDelta
from model.talker import SAY_MESSAGES

LEADING_SILENCE = 0.01  # amplitude below which a reply's first samples are cut (10 ms before the first louder one kept)
CLAUSE_END = re.compile(r"[.!?;:,]\s*$")  # a text piece ending like this can be voiced on its own
CACHE_SLACK_TOKENS = 64  # the history's token count is an estimate; the cache grows if it is exceeded


def cut_leading_silence(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """``samples`` from 10 ms before the first one louder than LEADING_SILENCE; empty if none is.

    Silence before a reply's first sound only adds to its latency.
    """
    loud = np.flatnonzero(np.abs(samples) > LEADING_SILENCE)
    return samples[max(0, loud[0] - sample_rate // 100) :] if len(loud) else samples[:0]


async def _from_first_sound(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``stream`` with the silence before its first sound cut (text deltas pass through)."""
    sounding = False
    async with contextlib.aclosing(stream):  # closing this closes the voice's stream (its cancel and cache)
        async for out in stream:
            if not sounding and isinstance(out, AudioChunk) and len(out.samples):
                out = dataclasses.replace(out, samples=cut_leading_silence(out.samples, out.sample_rate))
                sounding = len(out.samples) > 0
            yield out


class TalkerVoice:
    """The unified talker and its codec."""

    def __init__(self, talker: Any, codec: Any, options: GenerationOptions | None = None):
        self.talker = talker
        self.codec = codec
        self.options = options

    def prime(self, messages: list[dict]) -> None:
        """Compute the KV cache of ``messages``' prompt now, so the first reply prefills only what follows."""
        self.talker.prime(messages)

    def reply(self, messages: list[dict], cancel: threading.Event) -> AsyncIterator[Any]:
        """Text and audio of the talker's reply to ``messages``."""
        return _from_first_sound(self.talker.astream(messages, self.codec, options=self.options, cancel=cancel))

    def say(self, text: str, cancel: threading.Event) -> AsyncIterator[Any]:
        """``text`` forced, its audio diffused."""
        stream = self.talker.astream(SAY_MESSAGES, self.codec, text=text, options=self.options, cancel=cancel)
        return _from_first_sound(stream)


@dataclass
class _Prefix:
    ids: list[int]  # the tokens whose keys and values ``cache`` holds
    cache: Any  # a model.kv_cache.PreallocatedCache


class TextStreamer:
    """Greedy reply text from a chat LLM, token by token, reusing the KV cache of the last prompt's prefix.

    A conversation's prompt mostly repeats the previous one, so only the new messages are
    prefilled: an hour of talk costs the same per turn as the first minute (until the history is
    trimmed and the prefix changes once). The cache is allocated once, for the whole prompt budget,
    so the memory of a long conversation does not creep up (model/kv_cache.py).
    """

    def __init__(self, backbone: Any, max_new_tokens: int = 96, prompt_tokens: int = 1024):
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self.max_new_tokens = max_new_tokens  # cap on reply tokens (spoken replies are short)
        self.prompt_tokens = prompt_tokens  # the history's budget: the cache is sized for it plus a reply
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop = {t for t in (end, self.tokenizer.eos_token_id) if t is not None}
        self._prefix: _Prefix | None = None
        self._lock = threading.Lock()  # one generation at a time owns the cache

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` up to the start of the assistant's reply."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def prime(self, messages: list[dict]) -> None:
        """Compute the KV cache of ``messages``' prompt now, so the first reply prefills only what follows."""
        import torch

        with self._lock, torch.inference_mode():
            ids = self.prompt_ids(messages)
            cache, _ = self._prefill(ids)
            self._prefix = _Prefix(ids, cache)

    def _prefill(self, ids: list[int]) -> tuple[Any, Any]:
        """Put ``ids`` in a cache (reusing the last prompt's common prefix); (the cache, the last position's output)."""
        import torch

        from model.kv_cache import PREFILL_CHUNK_TOKENS, PreallocatedCache, common_prefix_length

        prefix = self._prefix
        common = 0
        if prefix is not None:
            common = min(common_prefix_length(prefix.ids, ids), len(ids) - 1)  # at least one new token to run
        if prefix is not None and common > 0:
            cache = prefix.cache
            if cache.get_seq_length() > common:
                cache.crop(common - cache.get_seq_length())
        else:
            capacity = self.prompt_tokens + self.max_new_tokens + CACHE_SLACK_TOKENS
            cache, common = PreallocatedCache(self.model.config, capacity), 0
        self._prefix = None  # the cache is being changed: invalid until this generation ends
        for start in range(common, len(ids), PREFILL_CHUNK_TOKENS):
            chunk = torch.tensor([ids[start : start + PREFILL_CHUNK_TOKENS]])
            out = self.model(chunk, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, out

    def stream(self, messages: list[dict], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply's text pieces (blocking; run it on a worker thread)."""
        import torch

        ids = self.prompt_ids(messages)
        with self._lock, torch.inference_mode():
            cache, out = self._prefill(ids)
            reply: list[int] = []
            shown = ""
            while len(reply) < self.max_new_tokens and not cancel.is_set():
                token = int(out.logits[0, -1].argmax())
                if token in self.stop:
                    break
                reply.append(token)
                text = self.tokenizer.decode(reply, skip_special_tokens=True)
                if text != shown and not text.endswith("\ufffd"):  # a split multi-byte character waits
                    yield text[len(shown) :]
                    shown = text
                out = self.model(torch.tensor([[token]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
            # Keep the prompt's part of the cache: the next turn's prompt starts with it.
            extra = cache.get_seq_length() - len(ids)
            if extra > 0:
                cache.crop(-extra)
            self._prefix = _Prefix(ids, cache)


class CascadeVoice:
    """The cascade baseline: LLM text, then the Piper teacher voicing it clause by clause."""

    def __init__(
        self,
        text: TextStreamer,
        teacher: Any,
        min_words: int = 3,
        max_words: int = 14,
        first_words: int = 3,
        synth: ThreadPoolExecutor | None = None,
    ):
        self.text = text
        self.teacher = teacher  # a training.teacher.TeacherVoice
        self.min_words = min_words  # a clause shorter than this waits for more (Piper sounds odd on one word)
        self.max_words = max_words  # a clause this long is voiced even without punctuation
        self.first_words = first_words  # ...and the first one already at this length, so sound starts soon
        # The one thread that runs Piper; voices sharing a teacher share it (espeak-ng keeps global state).
        self.synth = synth or ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttt-piper")

    def prime(self, messages: list[dict]) -> None:
        """Compute the LLM's KV cache of ``messages``' prompt now, so the first reply prefills only what follows."""
        self.text.prime(messages)

    def reply(self, messages: list[dict], cancel: threading.Event) -> AsyncIterator[Any]:
        """The LLM's reply, voiced as it is written."""
        return self._voice(lambda: self.text.stream(messages, cancel), cancel)

    def say(self, text: str, cancel: threading.Event) -> AsyncIterator[Any]:
        """``text`` voiced by Piper."""
        return self._voice(lambda: iter(re.findall(r"\S+\s*", text)), cancel)

    def speak(self, clause: str) -> np.ndarray:
        """One clause as 16 kHz samples (blocking), without Piper's leading silence (it would only add latency)."""
        utterance = self.teacher.speak(clause)
        return cut_leading_silence(to_mono_16k(utterance.samples, utterance.sample_rate), SAMPLE_RATE)

    async def _voice(self, pieces: Callable[[], Iterator[str]], cancel: threading.Event) -> AsyncIterator[Any]:
        import torch

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def work() -> None:
            try:
                for piece in pieces():
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except BaseException as exc:  # raised on the consumer's side
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        no_codes = torch.zeros(0, 0, dtype=torch.long)
        threading.Thread(target=work, name="ttt-text", daemon=True).start()
        clause = ""
        longest = self.first_words
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is not done:
                    clause += item
                    yield TextDelta(item)
                words = len(clause.split())
                ready = words >= longest or (words >= self.min_words and CLAUSE_END.search(clause))
                if clause.strip() and (ready or item is done):
                    sayable = any(c.isalnum() for c in clause)  # a trailing "." alone has nothing to voice
                    samples = await loop.run_in_executor(self.synth, self.speak, clause.strip()) if sayable else None
                    clause, longest = "", self.max_words
                    if samples is not None:
                        yield AudioChunk(no_codes, samples, SAMPLE_RATE)
                if item is done:
                    return
        finally:
            cancel.set()
