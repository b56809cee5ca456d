"""Words into chunks, chunks into tokens and phoneme ids: the text side of the talker's layout.

A reply is voiced chunk by chunk. A chunk is one or two whole words (whitespace-separated), cut by
a rule that needs only the words written so far, so chat mode can apply it while the text is still
being generated: the first chunk is one word (sound starts early), later chunks take two words,
and a word ending in punctuation closes its chunk (the pause after it stays inside that span).

Phonemes are espeak-ng's (through Piper's bridge, the teacher voice's own phonemizer), computed per
chunk, so training and inference phonemize exactly the same strings.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata

# Symbols the phoneme embedding knows: the codec's CTC phonemes plus stress marks; anything else
# espeak emits (punctuation, rare diacritics) maps to UNKNOWN. Id 0 is the word boundary.
STRESS = "ˈˌ"
WORD_BOUNDARY = 0
UNKNOWN = 1
CLOSING_PUNCTUATION = ".,;:!?"


def _symbols() -> str:
    from model.codec.codec import PHONEMES

    return PHONEMES + STRESS


@functools.lru_cache(maxsize=1)
def phoneme_table() -> dict[str, int]:
    """Symbol -> id (ids 0 and 1 are the word boundary and unknown)."""
    return {s: i + 2 for i, s in enumerate(_symbols())}


def phoneme_vocab_size() -> int:
    """Rows of the phoneme embedding."""
    return len(phoneme_table()) + 2


def words_of(text: str) -> list[str]:
    """The words of ``text``: its whitespace-separated pieces."""
    return text.split()


def closes_chunk(word: str, words_in_chunk: int, first: bool) -> bool:
    """Whether a chunk that now holds ``words_in_chunk`` words, the last being ``word``, is complete."""
    if first:
        return True
    return words_in_chunk >= 2 or word.rstrip("\"')").endswith(tuple(CLOSING_PUNCTUATION))


def chunk_words(words: list[str]) -> list[list[str]]:
    """Group ``words`` into chunks by :func:`closes_chunk` (the last chunk may be short)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for word in words:
        current.append(word)
        if closes_chunk(word, len(current), first=not chunks):
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks


def chunk_tokens(tokenizer, text: str) -> list[tuple[str, list[int]]]:
    """``text`` as (chunk text, its token ids) pairs; every token goes to the chunk of its first visible character.

    Byte-level BPE never joins two words into one token, so this is the split that generation sees
    when it closes a chunk at the first token of a new word (see :func:`starts_word`).
    """
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if not spans:
        return []
    groups = chunk_words([text[a:b] for a, b in spans])
    bounds, w = [], 0
    for group in groups:
        bounds.append((spans[w][0], spans[w + len(group) - 1][1]))
        w += len(group)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out: list[tuple[str, list[int]]] = [(text[a:b], []) for a, b in bounds]
    c = 0
    for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        piece = text[start:end]
        first = start + (len(piece) - len(piece.lstrip()))
        while c + 1 < len(bounds) and first >= bounds[c + 1][0]:
            c += 1
        out[c][1].append(tok)
    return out


def starts_word(piece: str) -> bool:
    """Whether a generated token's text begins a new word (it starts with whitespace before a visible character)."""
    return piece[:1].isspace() and bool(piece.strip())


class Phonemizer:
    """espeak-ng (en-us) phonemes of a chunk's text, as symbol strings and as embedding ids."""

    _lock = threading.Lock()  # espeak-ng keeps global state: one caller at a time

    def __init__(self, voice: str = "en-us"):
        from piper.phonemize_espeak import EspeakPhonemizer

        self.voice = voice
        self._espeak = EspeakPhonemizer()

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one phonemizer per process; chunks repeat a lot)
    def symbols(self, text: str) -> str:
        """Phoneme string of ``text`` (words separated by spaces, punctuation dropped)."""
        with self._lock:
            sentences = self._espeak.phonemize(self.voice, text)
        flat = "".join("".join(s) + " " for s in sentences)
        known = set(phoneme_table())
        kept = "".join(c if c in known or c == " " else "" for c in unicodedata.normalize("NFD", flat))
        return " ".join(kept.split())

    def ids(self, text: str) -> list[int]:
        """Embedding ids of ``text``'s phonemes (see :func:`phoneme_ids`)."""
        return phoneme_ids(self.symbols(text))


def phoneme_ids(symbols: str) -> list[int]:
    """Embedding ids of a :meth:`Phonemizer.symbols` string, a word boundary between words."""
    table = phoneme_table()
    return [WORD_BOUNDARY if c == " " else table.get(c, UNKNOWN) for c in symbols]


@functools.lru_cache(maxsize=1)
def phonemizer() -> Phonemizer:
    """The process-wide phonemizer."""
    return Phonemizer()
