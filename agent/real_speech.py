"""Real human speech for measuring hearing: the Asterisk core prompts (one studio voice, 16 kHz G.722).

Debian's ``asterisk-core-sounds-en-g722`` holds the recordings and ``asterisk-core-sounds-en`` their
texts (one ``name: text`` line per file). They are CC-BY-SA, so they are installed at test or
benchmark time (``.ci/run``), never committed. Each prompt is one turn: prompts are joined into one
conversation file with long gaps, heard by ``ttt listen``, and compared with whisper's offline
transcript of each prompt alone.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL_HINT = "sudo apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en"


@dataclass(frozen=True)
class Prompt:
    """One recording and what it says."""

    name: str  # path inside the sounds folder, without the extension ("vm-intro", "digits/5")
    text: str  # the reference text, with the keypad signs spelled as spoken ("#" -> "pound")
    path: Path  # the .g722 file

    @property
    def complete(self) -> bool:
        """Whether the prompt is a finished utterance (not a trailing "..." snippet made for joining)."""
        return bool(re.search(r"[.?!]$", self.text)) and not self.text.endswith("...")

    @property
    def words(self) -> int:
        """Reference word count."""
        return len(self.text.split())


def read_prompts(sounds: Path = SOUNDS, texts: Path = TEXTS) -> list[Prompt]:
    """Every recording that has a spoken text (sound effects in brackets dropped), sorted by name."""
    if not sounds.is_dir() or not texts.is_file():
        raise FileNotFoundError(
            f"the Asterisk prompts are not installed ({sounds} or {texts} is missing); install them with "
            f"`{INSTALL_HINT}`"
        )
    prompts = []
    for line in gzip.open(texts, "rt", encoding="utf-8", errors="replace"):
        name, sep, text = line.partition(":")
        text = text.strip()
        if line.startswith(";") or not sep or not text or "[" in text:
            continue
        path = sounds / f"{name.strip()}.g722"
        if path.is_file():
            # "#"/"*" are said as "pound"/"star"; "(simple tone sound plays)" is a note, not words
            spoken = re.sub(r"\([^)]*\)", " ", text).replace("#", " pound ").replace("*", " star ")
            spoken = " ".join(spoken.split())
            prompts.append(Prompt(name.strip(), spoken, path))
    return sorted(prompts, key=lambda p: p.name)


def choose_prompts(prompts: list[Prompt], count: int, min_words: int = 4) -> list[Prompt]:
    """``count`` prompts of at least ``min_words`` words, spread evenly over the sorted list."""
    long = [p for p in prompts if p.words >= min_words]
    if count >= len(long):
        return long
    picks = np.linspace(0, len(long) - 1, count).round().astype(int)
    return [long[i] for i in picks]


def load_prompt(prompt: Prompt) -> np.ndarray:
    """The recording as 16 kHz mono float32, with its leading and trailing near-silence cut."""
    from faster_whisper import decode_audio

    from training.teacher import trim_silence

    return trim_silence(decode_audio(str(prompt.path), sampling_rate=16_000).astype(np.float32))


def write_prompts(clips: list[np.ndarray], path: str | Path, gap_s: float, lead_s: float = 0.5) -> list[tuple]:
    """Join 16 kHz clips into one WAV with ``gap_s`` of silence between them; each clip's (start, end)."""
    import soundfile as sf

    sr = 16_000
    pieces, spans, n = [np.zeros(int(lead_s * sr), np.float32)], [], int(lead_s * sr)
    for clip in clips:
        spans.append((n / sr, (n + len(clip)) / sr))
        pieces += [clip, np.zeros(int(gap_s * sr), np.float32)]
        n += len(clip) + int(gap_s * sr)
    sf.write(str(path), np.concatenate(pieces), sr)
    return spans


def sentence_ends(text: str) -> list[int]:
    """Word counts at which the sentences of ``text`` end (after normalisation)."""
    from training.wer import normalise_text

    ends, total = [], 0
    for sentence in re.split(r"(?<=[.?!])\s+", text):
        total += len(normalise_text(sentence).split())
        ends.append(total)
    return ends


def ends_a_sentence(heard: str, text: str) -> bool:
    """Whether ``heard`` (a transcript of the start of ``text``) stops where one of its sentences ends.

    True when its word count is within one of a sentence end, or its last two words are the last two
    of a sentence: whisper's insertions and splits ("Waldo's" heard as "while those") shift the count.
    """
    from training.wer import normalise_text

    said = normalise_text(heard).split()
    words = normalise_text(text).split()
    ends = sentence_ends(text)
    if any(abs(len(said) - end) <= 1 for end in ends):
        return True
    return len(said) >= 2 and any(end >= 2 and words[end - 2 : end] == said[-2:] for end in ends)
