"""Streaming generation: the state machine that drives a :class:`model.talker.Talker` span by span.

The network is in :mod:`model.talker`; this file holds what changes while a reply is generated:
the KV cache and the positions in it (:class:`GenerationState`), and the loop that decides text
tokens, span lengths and span codes in the order of the layout (:mod:`model.sequence`)::

    T1 P1 | T2 P2 D1 A1 | T3 P3 D2 A2 | ... | <|im_end|> Dm Am

Text is decoded token by token (or forced, for ``ttt say``). A chunk is complete when the next
token starts a word the chunk has no room for (:func:`model.chunks.closes_chunk`); that token is
held back for the next chunk. Then the previous chunk's span is made: its length from the duration
head at the last text position, its codes by a few unmasking passes over the span alone, on top of
the exact KV cache of everything before it. The decided span joins the cache with the next pass.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.chunks import chunk_tokens, closes_chunk, phonemizer, starts_word
from model.sampler import commit, guess_codes, unmask_counts
from model.sequence import MASK, Positions, allowed


@dataclass
class TextDelta:
    """New reply text, as decided (``text`` appends to what came before)."""

    text: str  # the new characters
    tokens: list[int] = field(default_factory=list)  # their token ids


@dataclass
class AudioChunk:
    """Audio frames just decided, and the samples the codec decoder has made final so far."""

    codes: torch.Tensor  # [F, G] the frames' codes (F may be 0 at the final flush)
    samples: np.ndarray  # float32 mono at ``sample_rate``; may be empty (decoder lookahead)
    sample_rate: int  # the codec's output rate
    final: bool = False  # True for the last chunk of the turn


TalkerEvent = TextDelta | AudioChunk


class Cancelled(Exception):
    """Raised inside generation when its cancel event is set; ``stream`` ends quietly on it."""


@dataclass
class GenerationOptions:
    """Per-call sampling knobs (defaults from ``settings.talker``, see :meth:`from_settings`)."""

    steps: int = 4  # S: unmasking passes per audio span
    first_steps: int = 1  # S of the first span (fewer, so sound starts sooner)
    temperature: float = 0.0  # text sampling temperature; 0 = greedy
    code_temperature: float = 0.0  # audio code sampling temperature; 0 = greedy
    max_new_tokens: int = 256  # cap on reply text tokens
    seed: int | None = None  # seed for sampling (None: nondeterministic when sampling)
    guidance: float = 1.0  # classifier-free guidance on the codes: 1 = none; > 1 needs a talker with text_null

    @classmethod
    def from_settings(cls, talker_settings: Any) -> GenerationOptions:
        """Options from an ``agent.settings.TalkerSettings``."""
        s = talker_settings
        return cls(
            steps=s.diffusion_steps,
            first_steps=s.first_diffusion_steps,
            temperature=s.temperature,
            code_temperature=s.code_temperature,
            max_new_tokens=s.max_new_tokens,
            guidance=s.guidance,
        )


CACHE_POSITIONS = 2048  # a stream's KV cache: a long history plus one reply's text, phonemes and frames (grows past it)
CACHE_WAIT_S = 2.0  # how long a stream waits for another to hand back the prompt cache before prefilling alone


@dataclass
class PromptCache:
    """The KV cache of the last prompt a talker ran, kept for the next prompt that starts with the same tokens.

    A conversation's prompt is the previous one plus the reply and the new user turn; ``say``'s
    prompt never changes. So a stream prefills only the tokens after the longest common prefix,
    and the cost of a turn does not grow with the length of the conversation.
    """

    ids: list[int]  # the prompt tokens whose keys and values ``cache`` holds
    positions: Positions  # their positions
    cache: Any  # a model.kv_cache.PreallocatedCache holding exactly those positions
    last_hidden: torch.Tensor  # hidden state of the last prompt position


class GenerationState:
    """The positions of one generation: those in the KV cache and those decided but not yet computed."""

    def __init__(self, talker: Any, use_cache: bool, cancel: threading.Event | None):
        from model.kv_cache import PreallocatedCache

        self.talker, self.use_cache, self.cancel = talker, use_cache, cancel
        self.cache = PreallocatedCache(talker.lm.config, CACHE_POSITIONS) if use_cache else None
        groups = talker.config.groups
        self.done = Positions(groups)  # in the cache (or, without cache, already final)
        self.pending = Positions(groups)  # final, not computed yet: they ride along the next pass
        self.passes = 0  # forward passes so far (for tests and benchmarks)
        self.prefilled = 0  # prompt positions this stream computed (the rest came from the prompt cache)
        self.last_hidden: torch.Tensor | None = None  # hidden state of the last final position, if computed

    @torch.inference_mode()  # per call, not around the generator: the mode must not leak to the consumer
    def forward(self, extra: Positions | None = None, keep: bool = True) -> torch.Tensor:
        """Run pending + ``extra`` positions; return hidden states [Q, H] of all of them.

        Pending positions always join the cache (they are final); ``extra`` ones only with
        ``keep`` (a diffusion step's guesses are cropped away again).
        """
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled
        extra = extra if extra is not None else Positions(self.done.groups)
        self.passes += 1
        new = self.pending.concat(extra)
        talker, dev = self.talker, self.talker.device
        if self.use_cache:
            past = len(self.done)
            q_pos = torch.arange(past, past + len(new))
            k_pos = torch.arange(past + len(new))
            q_span = torch.tensor(new.span, dtype=torch.long)
            k_span = torch.tensor(self.done.span + new.span, dtype=torch.long)
            mask = allowed(q_pos, k_pos, q_span, k_span)
            rows = {k: v[None] for k, v in new.tensors(dev).items()}
            h = talker.hidden(talker.embed(rows), mask[None, None].to(dev), q_pos[None].to(dev), self.cache)[0]
            if not keep and len(extra):
                self.cache.crop(-len(extra))  # a negative count removes that many
        else:
            everything = self.done.concat(new)
            n = len(everything)
            pos = torch.arange(n)
            span = torch.tensor(everything.span, dtype=torch.long)
            mask = allowed(pos, pos, span, span)
            rows = {k: v[None] for k, v in everything.tensors(dev).items()}
            h = talker.hidden(talker.embed(rows), mask[None, None].to(dev), pos[None].to(dev))[0, n - len(new) :]
        self.done = self.done.concat(self.pending)
        self.pending = Positions(self.done.groups)
        if keep:
            self.done = self.done.concat(extra)
        self.last_hidden = h[-1] if keep or not len(extra) else None
        return h


class UnconditionalBranch:
    """Guidance's second context: the reply's positions with its text hidden, kept in step with the reply's.

    It starts as a copy of the reply's state after the prompt (the prompt stays visible) and, before
    each of its passes, takes on every position the reply has made final since, its text and
    phonemes as :data:`model.sequence.Kind.NULL` (as training hides them). A span's diffusion pass
    then runs in both, and the codes are chosen from ``log p_u + scale * (log p_c - log p_u)``.
    """

    def __init__(self, reply: GenerationState, scale: float):
        talker = reply.talker
        if not talker.config.text_null:
            raise ValueError(
                "guidance needs a talker trained with hidden text (text_null); this checkpoint has none: "
                "set talker.guidance = 1"
            )
        self.scale, self.end_token = scale, talker.end_token
        self.state = GenerationState(talker, reply.use_cache, reply.cancel)
        if reply.use_cache:
            self.state.cache = reply.cache.copy()
        self.state.done = reply.done.concat(Positions(reply.done.groups))
        self.state.pending = reply.pending.concat(Positions(reply.done.groups))

    def logits(self, reply: GenerationState, span: Positions, conditional: torch.Tensor) -> torch.Tensor:
        """Guided code log-probabilities [k, G, K] for ``span`` (the rows the reply just ran), given its logits."""
        mine = len(self.state.done) + len(self.state.pending)  # every row after these belongs to the reply
        new = reply.done.concat(reply.pending).tail(mine).hide_text(0, self.end_token)
        self.state.pending = self.state.pending.concat(new)
        frames = len(span) - 1  # the span's D row, then its frames
        h = self.state.forward(span, keep=False)[-frames:]
        log_c = torch.log_softmax(conditional.float(), dim=-1)
        log_u = torch.log_softmax(self.state.talker.speech.code_logits(h).float(), dim=-1)
        return log_u + self.scale * (log_c - log_u)


def prime(talker: Any, messages: list[dict[str, str]]) -> None:
    """Compute now the KV cache of ``messages``' prompt (``say``'s fixed prompt, a system prompt).

    The next :func:`stream` whose prompt starts with these tokens prefills only the rest: the
    prompt's cost moves from the first-audio path to load time.
    """
    with _prompt_cache(talker, talker.prompt_ids(messages), None):
        pass


@contextmanager
def _prompt_cache(talker: Any, ids: list[int], cancel: threading.Event | None) -> Iterator[GenerationState]:
    """A cached generation state with the prompt ``ids`` prefilled, handed back as the talker's prompt cache.

    Reuses the longest prefix of ``ids`` that the talker's :class:`PromptCache` holds. On leaving,
    the cache is cut back to the prompt and kept for the next stream; after an error inside a forward
    pass (its layers may be half written) it is dropped. Streams take turns: one that finds the cache
    busy for :data:`CACHE_WAIT_S` prefills a cache of its own and keeps nothing.
    """
    from model.kv_cache import PREFILL_CHUNK_TOKENS

    state = GenerationState(talker, use_cache=True, cancel=cancel)
    owned = talker.cache_lock.acquire(timeout=CACHE_WAIT_S)
    prompt: PromptCache | None = None  # what is handed back: the prompt's part of the cache, once computed
    try:
        held = None
        if owned:
            held, talker.prompt_cache = talker.prompt_cache, None  # invalid while this stream changes it
        common = _common_prefix(held, ids)
        if held is not None and common:
            state.cache = held.cache
            state.cache.crop(common - state.cache.get_seq_length())
            state.done = held.positions.head(common)
            if common == len(held.ids):
                state.last_hidden = held.last_hidden
                prompt = PromptCache(ids[:common], state.done, state.cache, state.last_hidden)
        for start in range(common, len(ids), PREFILL_CHUNK_TOKENS):
            chunk = ids[start : start + PREFILL_CHUNK_TOKENS]
            state.pending.add_text(chunk)
            state.forward()
            state.prefilled += len(chunk)
            prompt = PromptCache(ids[: len(state.done)], state.done, state.cache, state.last_hidden)
        yield state
    except (Cancelled, GeneratorExit):
        raise  # raised between forward passes: the cache is whole
    except BaseException:
        prompt = None  # a forward pass may have stopped half way through the layers
        raise
    finally:
        if owned:
            if prompt is not None:
                extra = prompt.cache.get_seq_length() - len(prompt.ids)
                if extra > 0:
                    prompt.cache.crop(-extra)
            talker.prompt_cache = prompt
            talker.cache_lock.release()


def _common_prefix(held: PromptCache | None, ids: list[int]) -> int:
    """How many leading tokens of ``ids`` the cache ``held`` serves: all only if it is this very prompt."""
    from model.kv_cache import common_prefix_length

    if held is None:
        return 0
    common = common_prefix_length(held.ids, ids)
    if common == len(ids) and len(held.ids) != len(ids):
        common -= 1  # the last hidden state kept is of a later position: run the last token again
    return common


def stream(
    talker: Any,
    messages: list[dict[str, str]],
    codec: Any = None,
    *,
    text: str | None = None,
    options: GenerationOptions | None = None,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
    stats: dict[str, Any] | None = None,
    teacher: list[torch.Tensor] | None = None,
) -> Iterator[TalkerEvent]:
    """Generate the reply to ``messages``: yields :class:`TextDelta` and :class:`AudioChunk` events.

    ``text`` forces the reply text (``ttt say``); otherwise it is decoded autoregressively.
    ``codec`` (a SpeechCodec) turns each span's frames into samples as soon as the span is
    decided; without one, chunks carry codes and no samples. Setting ``cancel`` stops the
    generation before its next forward pass. ``use_cache=False`` recomputes the whole sequence
    at every pass (a slow reference for tests). ``teacher`` (true frames [k, G] of every span, with
    ``text``) makes each span a prediction from the true spans before it: the span is diffused at
    its true length and yielded, but the true frames join the context (the single-span measurement).
    ``stats`` receives ``passes`` (forward passes), ``prefilled`` (prompt positions computed, the
    rest taken from the talker's :class:`PromptCache`) and ``positions`` (every position of the
    turn, as :func:`model.sequence.build_reply` lays it out).
    """
    options = options or GenerationOptions()
    forced = None
    if text is not None:
        forced = chunk_tokens(talker.tokenizer, text)
        if not forced:
            raise ValueError("the text to say is empty; give at least one word")
    if teacher is not None and (forced is None or len(teacher) != len(forced)):
        raise ValueError(f"teacher spans need the text and one span per chunk ({len(forced or [])} chunks)")
    ids = talker.prompt_ids(messages)
    if use_cache:
        context = _prompt_cache(talker, ids, cancel)
    else:
        uncached = GenerationState(talker, use_cache=False, cancel=cancel)
        uncached.pending.add_text(ids)
        uncached.prefilled = len(ids)  # every pass computes the whole prompt again
        context = nullcontext(uncached)
    state: GenerationState | None = None
    try:
        with context as state:
            yield from _reply(talker, state, codec, forced, options, teacher)
    except Cancelled:
        return
    finally:
        if stats is not None and state is not None:
            stats["passes"] = state.passes
            stats["prefilled"] = state.prefilled
            stats["positions"] = state.done.concat(state.pending)


async def astream(
    talker: Any,
    messages: list[dict[str, str]],
    codec: Any = None,
    *,
    cancel: threading.Event | None = None,
    **kwargs: Any,
) -> AsyncIterator[TalkerEvent]:
    """:func:`stream` in a worker thread, yielding through an asyncio queue (never blocks the loop).

    Leaving the ``async for`` early (or cancelling the task) sets ``cancel``, which stops the
    worker before its next forward pass.
    """
    cancel = cancel or threading.Event()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def work() -> None:
        try:
            with torch.inference_mode():
                for event in stream(talker, messages, codec, cancel=cancel, **kwargs):
                    put(event)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            put(done)

    threading.Thread(target=work, name="talker", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        cancel.set()


@dataclass
class _Failure:
    error: BaseException


def _forced_chunks(state: GenerationState, forced: list[tuple[str, list[int]]]):
    """(tokens, hidden at the last token or None, is last) of each given chunk, its tokens made pending."""
    for i, (_, tokens) in enumerate(forced):
        state.pending.add_text(tokens)
        yield tokens, None, i == len(forced) - 1


def _generated_chunks(talker: Any, state: GenerationState, options: GenerationOptions, generator):
    """(tokens, hidden at the last token, is last) of each chunk the model writes.

    The token that opens the next chunk was predicted from the last token of this one; it is held
    back and joins the positions only after this chunk's phonemes and the owed span.
    """
    tokenizer, written = talker.tokenizer, 0
    held: int | None = None
    first = True
    while True:
        tokens: list[int] = []
        words, word, after_space = 0, "", False
        if held is not None:
            tokens, words, word = [held], 1, tokenizer.decode([held]).strip()
            state.pending.add_text([held])
            held = None
        while True:
            fresh = len(state.pending) or state.last_hidden is None
            h = state.forward()[-1] if fresh else state.last_hidden
            token = _pick(talker.text_logits(h), options.temperature, generator)
            if token in talker.stop_tokens or written >= options.max_new_tokens:
                yield tokens, h, True
                return
            piece = tokenizer.decode([token])
            new_word = bool(tokens) and (starts_word(piece) or (after_space and bool(piece.strip())))
            if new_word and closes_chunk(word, words, first):
                held = token
                yield tokens, h, False
                first = False
                break
            if not tokens or new_word:
                words, word = words + 1, piece.strip()
            else:
                word += piece.strip()
            after_space = piece.isspace() or (after_space and not piece.strip())
            tokens.append(token)
            written += 1
            state.pending.add_text([token])


def _reply(
    talker: Any,
    state: GenerationState,
    codec: Any,
    forced: list | None,
    options: GenerationOptions,
    teacher: list[torch.Tensor] | None = None,
) -> Iterator[TalkerEvent]:
    """The interleaving loop behind :func:`stream`."""
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    decoder = codec.stream_decoder() if codec is not None else None
    rate = int(codec.sample_rate) if codec is not None else 0
    tokenizer, groups = talker.tokenizer, talker.config.groups
    reply: list[int] = []
    shown = ""

    def audio(frames: torch.Tensor, final: bool, first: bool = False) -> Iterator[AudioChunk]:
        # The first span (often one short word) is given out whole, its decoder look-ahead guessed:
        # the next span is a chunk of text and a diffusion away, and the reply should sound before it.
        if decoder is not None and len(frames):
            samples = decoder.push(frames, ahead=first and not final)
        else:
            samples = np.zeros(0, np.float32)
        yield AudioChunk(frames, np.asarray(samples, dtype=np.float32), rate)
        if final:
            tail = decoder.flush() if decoder is not None else np.zeros(0, np.float32)
            yield AudioChunk(frames[:0], np.asarray(tail, dtype=np.float32), rate, final=True)

    guide = UnconditionalBranch(state, options.guidance) if options.guidance != 1 else None

    def span(index: int, hidden: torch.Tensor, steps: int) -> torch.Tensor:
        """Decide span ``index``: its length from ``hidden``, then its codes by ``steps`` unmasking passes."""
        if teacher is not None:
            length = len(teacher[index])
        else:
            length = int(talker.duration_logits(hidden)[1:].argmax()) + 1
        frames = torch.full((length, groups), MASK, dtype=torch.long)
        for count in unmask_counts(length * groups, steps):
            rows = Positions(groups)
            rows.add_span(frames, index)
            h = state.forward(rows, keep=False)[-length:]
            logits = talker.speech.code_logits(h)
            if guide is not None:
                logits = guide.logits(state, rows, logits)
            codes, confidence = guess_codes(logits, options.code_temperature, generator)
            frames = commit(frames, codes, confidence, count)
        state.pending.add_span(teacher[index] if teacher is not None else frames, index)
        return frames

    if forced is not None:
        source = _forced_chunks(state, forced)
    else:
        source = _generated_chunks(talker, state, options, generator)
    chunk = 0
    with torch.inference_mode():
        for tokens, hidden, last in source:
            if not tokens and chunk == 0:  # the model said nothing at all
                yield from audio(torch.zeros(0, groups, dtype=torch.long), final=True)
                return
            chunk += 1
            reply += tokens
            full = tokenizer.decode(reply, skip_special_tokens=True)
            if full != shown:
                yield TextDelta(full[len(shown) :], list(tokens))
                shown = full
            phonemes = phonemizer().ids(tokenizer.decode(tokens, skip_special_tokens=True).strip())
            if chunk >= 2:
                hidden = hidden if hidden is not None else state.forward()[-1]
                state.pending.add_phonemes(phonemes)
                steps = options.first_steps if chunk == 2 else options.steps
                yield from audio(span(chunk - 2, hidden, steps), final=False, first=chunk == 2)
            else:
                state.pending.add_phonemes(phonemes)
            if last:
                state.pending.add_text([talker.end_token])
                steps = options.first_steps if chunk == 1 else options.steps
                yield from audio(span(chunk - 1, state.forward()[-1], steps), final=True)
                return


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
