"""Word error rate and the text normalisation behind it: one home for agent benchmarks and training evaluation."""

from __future__ import annotations

import re

import numpy as np

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("forty two")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


# whisper writes "you're" for "you are" and back: both sides are expanded before words are compared
_CONTRACTIONS = {
    "n't": " not", "'re": " are", "'m": " am", "'ll": " will", "'ve": " have", "'d": " would",
    "let's": "let us", "it's": "it is", "that's": "that is", "what's": "what is", "there's": "there is",
    "here's": "here is", "he's": "he is", "she's": "she is", "who's": "who is", "where's": "where is",
}  # fmt: skip


def normalise_text(text: str) -> str:
    """Lowercase words without punctuation, digits spelled out (whisper writes "7" for "seven")."""
    text = text.lower().replace("%", " percent").replace("\u2019", "'")
    text = re.sub(r"\b(can't|won't)", lambda m: {"can't": "can not", "won't": "will not"}[m.group(1)], text)
    text = re.sub(r"\b\w+'s\b", lambda m: _CONTRACTIONS.get(m.group(), m.group()), text)
    text = re.sub(r"(n't|'re|'m|'ll|'ve|'d)\b", lambda m: _CONTRACTIONS[m.group()], text)
    text = re.sub(r"(\d+):(\d\d)", lambda m: f"{m.group(1)} {int(m.group(2)) or ''}", text)
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} " if len(m.group()) < 7 else m.group(), text)
    text = re.sub(r"[^a-z0-9' ]+", " ", text).replace("'", "")
    return " ".join(text.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after :func:`normalise_text` (jiwer); all of each side joined when counts differ."""
    import jiwer

    refs = [normalise_text(r) for r in references]
    hyps = [normalise_text(h) for h in hypotheses]
    if len(refs) != len(hyps):
        refs, hyps = [" ".join(refs)], [" ".join(hyps)]
    return float(jiwer.wer(refs, hyps))


def wer_gap(references: list[str], baseline: list[str], candidate: list[str]) -> tuple[float, float]:
    """WER of ``candidate`` minus WER of ``baseline`` on the same references, and its standard error.

    The two transcripts of a sentence are paired, and sentences are the sampling unit: the error
    is the ratio estimator's, sqrt(n / (n - 1) * sum((d_i - gap * N_i)^2)) / sum(N_i), with d_i the
    extra word errors of sentence i and N_i its reference words. It says how far the gap could move
    on another draw of sentences like these, which a single corpus WER does not.
    """
    import jiwer

    if not (len(references) == len(baseline) == len(candidate)) or not references:
        raise ValueError("wer_gap needs one baseline and one candidate transcript per reference, and at least one")
    refs = [normalise_text(r) for r in references]
    if not all(refs):
        raise ValueError("wer_gap: a reference is empty after normalisation")

    def errors(hyps: list[str]) -> np.ndarray:
        per = [jiwer.process_words(r, normalise_text(h)) for r, h in zip(refs, hyps, strict=True)]
        return np.array([o.substitutions + o.deletions + o.insertions for o in per], dtype=float)

    words = np.array([len(r.split()) for r in refs], dtype=float)
    extra = errors(candidate) - errors(baseline)
    gap = extra.sum() / words.sum()
    n = len(refs)
    if n < 2:
        return float(gap), float("nan")
    se = np.sqrt(n / (n - 1) * np.sum((extra - gap * words) ** 2)) / words.sum()
    return float(gap), float(se)
