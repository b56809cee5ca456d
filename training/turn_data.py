"""Text examples for the end-of-turn model: (transcript so far, is the turn over?), built from text we have.

Complete turns: the written sentences, the corpus templates (numbers, times, lists), and short turns
(one-word answers, commands). Unfinished turns: the same cut at word boundaries, more often right
after the words that cannot end an utterance ("is", "to", "and", "the", a partial number, a list).
Both written the way whisper transcribes speech: digits, capitalised first word, commas, sometimes a
hesitation or a trailing comma or "...". The held-out benchmark sets and the dev sets are filtered
out, so they stay unseen.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training.synth import HELDOUT_SENTENCES, DevFilter, read_sentence_file, template_sentence

HERE = Path(__file__).resolve().parent
WRITTEN_SENTENCES = HERE / "written_sentences.txt"
TURN_PAUSES = HERE / "turn_pauses.txt"  # held-out pause cases: "fragment | continuation"
TURN_COMPLETE = HERE / "turn_complete.txt"  # held-out complete turns
TURN_DEV_TURNS = HERE / "turn_dev_turns.txt"  # short complete turns of the wait-policy dev set
TURN_SHORT_QUESTIONS = HERE / "turn_short_questions.txt"  # held-out short complete questions
CONVERSATION_QUESTIONS = HERE / "conversation_questions.txt"  # what `ttt bench --turns` asks (held out too)
VOICED_GROUP_BASE = 1_000_000  # source-sentence groups of the voiced examples (apart from the text ones)

# Words after which an English utterance is (almost) never over: a cut there is surely unfinished. A short
# question made of such a word alone ("Why?", "How?") is not cut: turns of three words or fewer stay whole.
OPEN_WORDS = frozenset(
    "a an the to of for in on at by with from into about and or but so because if than that which who whose whom "
    "whether when where while why how what my your his her our their its this these those is are was were be been "
    "am will would could should can may might must do does did have has had i we you they he she it me us them "
    "not very really just also like as um uh".split()
)
SHORT_TURNS = (
    "Yes|No|Yeah|Nope|Okay|Sure|Thanks|Thank you|No thanks|Yes please|Maybe|Exactly|Correct|Right|"
    "Of course|Go ahead|Never mind|Cancel|Stop|Wait|Hello|Hi there|Goodbye|Good night|Sounds good|"
    "I don't know|Not really|That's all|Perfect|Great|Why|How|Really|Please|Again|Louder|Next|Both|Neither|"
    "The second one|The first one|Tomorrow|Today|Tonight|Next week|In the morning|At noon|Later"
).split("|")
COMMAND_VERBS = "Play|Pause|Stop|Open|Close|Turn on|Turn off|Show me|Find|Call|Text|Cancel|Delete|Read|Skip".split("|")
COMMAND_OBJECTS = (
    "the music|the lights|the timer|my alarm|the news|the last message|the door|the blinds|the next song|"
    "my calendar|the podcast|the video|the weather|the fan|the heater|my playlist|the reminder"
).split("|")
PLACES = "Paris|London|Rome|Madrid|Tokyo|Boston|Denver|Cairo|Oslo|Dublin|Vienna|Sydney|Prague|Seattle".split("|")
NAMES = "Anna|Ben|Carla|David|Emma|Farid|Grace|Hugo|Irene|Jonas|Maya|Noah|Olga|Pedro|Rosa|Sam".split("|")
STREETS = "Oak Street|Park Avenue|Mill Road|Station Road|Elm Lane|High Street|River Drive|Hill Court".split("|")
ITEMS = "milk|eggs|bread|apples|rice|coffee|butter|onions|cheese|tomatoes|pasta|lemons|yogurt|carrots".split("|")
# Pools of the short questions: most end on a verb, an adjective or a noun that could take more words
# ("What do owls eat", "What is the opposite of wet"), and are still whole turns.
ANIMALS = (
    "owls|horses|sheep|frogs|ducks|whales|sharks|snakes|rabbits|foxes|wolves|bears|goats|pigs|camels|lions|"
    "tigers|mice|ants|crows|dolphins|turtles|squirrels|bats|deer|monkeys|zebras|elephants|eagles|parrots"
).split("|")
ANIMAL = (
    "an owl|a horse|a sheep|a frog|a duck|a whale|a snake|a rabbit|a fox|a wolf|a bear|a goat|a pig|a camel|"
    "a lion|a mouse|a crow|a dolphin|a turtle|a squirrel|a donkey|a rooster|a hen|a dog|an elephant"
).split("|")
ADJECTIVES = (
    "wet|dry|big|small|fast|slow|old|young|early|late|loud|quiet|heavy|light|empty|full|rich|poor|soft|hard|"
    "dark|bright|happy|sad|open|closed|thick|thin|sweet|sour|high|low|long|short|warm|cool|clean|dirty|easy"
).split("|")
THINGS = (
    "the moon|the sea|snow|grass|a rainbow|the sun|a volcano|the wind|thunder|sand|glass|paper|rubber|gold|"
    "the desert|a battery|a magnet|a cloud|the night sky|a bridge|the river|ice cream|a lemon|chocolate|an egg"
).split("|")
PEOPLE = "farmers|bakers|nurses|pilots|plumbers|teachers|painters|firefighters|fishermen|carpenters|chefs".split("|")
VERBS = "eat|drink|need|want|like|build|grow|carry|hunt|fear|hear|see|sell|fix|make|use|wear|say|do|find".split("|")
SUBJECTS = "you|they|we|people|kids|your friends|the neighbours|scientists|doctors".split("|")  # plural: "do"
COUNTRIES = "Spain|Japan|Kenya|Peru|Norway|Egypt|Canada|India|Chile|Greece|Mexico|Poland|Vietnam|Ireland".split("|")
WORDS = "gravity|a noun|democracy|a haiku|photosynthesis|an atom|a comet|inflation|a verb|a fossil|a glacier".split("|")


def short_question(rng: random.Random) -> str:
    """A short, complete question of the kind people ask a voice assistant (3-8 words)."""
    animal, animals, adjective, thing = (
        rng.choice(ANIMAL),
        rng.choice(ANIMALS),
        rng.choice(ADJECTIVES),
        rng.choice(THINGS),
    )
    who, verb, people = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(PEOPLE)
    a, b = rng.randint(2, 20), rng.randint(2, 12)
    options = [
        f"What do {animals} {verb}?",
        f"What does {animal} {verb}?",
        f"What do {people} {verb}?",
        f"What did {rng.choice(SUBJECTS + ['she', 'he', 'Mum', 'the doctor'])} {verb}?",
        f"What do {who} {verb}?",
        f"Where do {animals} live?",
        f"Where do {animals} sleep?",
        f"How do {animals} {verb}?",
        f"Can {animals} swim?",
        f"Do {animals} {verb}?",
        f"Why do {animals} {verb}?",
        f"What sound does {animal} make?",
        f"How much does {animal} weigh?",
        f"How long does {animal} live?",
        f"How fast can {animal} run?",
        f"Which animal {rng.choice(['barks', 'purrs', 'howls', 'quacks', 'hops', 'roars', 'sings', 'bites'])}?",
        f"Which {rng.choice(['animal', 'bird', 'fish', 'fruit', 'planet', 'country', 'city'])} is the "
        f"{rng.choice(['biggest', 'smallest', 'fastest', 'oldest', 'coldest', 'hottest', 'tallest'])}?",
        f"What is the opposite of {adjective}?",
        f"What's the opposite of {adjective}?",
        f"What rhymes with {adjective}?",
        f"Is {thing} {adjective}?",
        f"Why is {thing} {adjective}?",
        f"How {adjective} is {thing}?",
        f"What color is {thing}?",
        f"What is {thing} made of?",
        f"What is {a} plus {b}?",
        f"What is {a} times {b}?",
        f"What's {a} minus {b}?",
        f"How many {rng.choice(['legs', 'eyes', 'teeth', 'wings'])} does {animal} have?",
        f"How many {rng.choice(['minutes', 'seconds'])} are in an hour?",
        f"What is the capital of {rng.choice(COUNTRIES)}?",
        f"What language do they speak in {rng.choice(COUNTRIES)}?",
        f"Where is {rng.choice(COUNTRIES)}?",
        f"What is {rng.choice(WORDS)}?",
        f"What does {rng.choice(WORDS)} mean?",
        f"Who invented {rng.choice(['the telephone', 'the bicycle', 'paper', 'the radio', 'glasses', 'the wheel'])}?",
        f"Who discovered {rng.choice(['penicillin', 'gravity', 'electricity', 'radium', 'America'])}?",
        f"When does {rng.choice(['summer', 'winter', 'school', 'the game', 'the film', 'the market'])} start?",
        f"Where did {who} go?",
        f"What are {who} {rng.choice(['doing', 'eating', 'reading', 'watching', 'making'])}?",
        f"Is it {adjective} outside?",
        f"Who is {rng.choice(NAMES)}?",
    ]
    return rng.choice(options)


@dataclass(frozen=True)
class TurnExample:
    """One training example."""

    text: str  # the transcript so far, as whisper would write it
    complete: bool  # whether the user's turn is over after it
    weight: float  # loss weight: cuts after content words may be complete after all, so they count less
    group: int  # index of the source sentence (train/validation split by source, never by example)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(n))


def number_sentence(rng: random.Random) -> str:
    """Phone numbers, addresses, codes and lists: the turns people pause inside of."""
    name, place, street = rng.choice(NAMES), rng.choice(PLACES), rng.choice(STREETS)
    items = rng.sample(ITEMS, rng.randint(2, 4))
    listing = ", ".join(items[:-1]) + rng.choice([", and ", " and "]) + items[-1]
    options = [
        f"Call me back on {_digits(rng, 3)} {_digits(rng, 3)} {_digits(rng, 4)}.",
        f"The number to call is {_digits(rng, 3)} {_digits(rng, 4)}.",
        f"You can reach {name} at {_digits(rng, 3)}-{_digits(rng, 4)}.",
        f"I live at {rng.randint(1, 300)} {street}, apartment {rng.randint(1, 40)}.",
        f"The address is {rng.randint(1, 999)} {street} in {place}.",
        f"My zip code is {_digits(rng, 5)}.",
        f"The code is {_digits(rng, rng.randint(4, 6))}.",
        f"My account number is {_digits(rng, 4)} {_digits(rng, 4)}.",
        f"We need {listing}.",
        f"I bought {listing} for the party.",
        f"Book a table for {rng.randint(2, 9)} at {rng.randint(5, 9)}:{rng.choice(['00', '15', '30', '45'])}.",
        f"It costs ${rng.randint(2, 400)}.{rng.randint(0, 99):02d}.",
        f"The flight to {place} leaves at {rng.randint(1, 12)}:{rng.randint(0, 59):02d}.",
        f"My date of birth is the {rng.randint(1, 28)}th of {rng.choice(['March', 'June', 'July', 'May'])}.",
    ]
    return rng.choice(options)


def short_turn(rng: random.Random) -> str:
    """A one-word answer, a name or place, a number, or a short command, as whisper writes it."""
    kind = rng.random()
    if kind < 0.35:
        text = rng.choice(SHORT_TURNS)
    elif kind < 0.55:
        text = rng.choice(PLACES + NAMES)
    elif kind < 0.7:
        text = rng.choice([str(rng.randint(1, 99)), f"{rng.randint(1, 12)} o'clock", f"At {rng.randint(1, 12)}"])
    else:
        text = f"{rng.choice(COMMAND_VERBS)} {rng.choice(COMMAND_OBJECTS)}"
    return text + rng.choice([".", ".", "!", ""]) if not text.endswith("?") else text


def whisper_style(text: str, rng: random.Random) -> str:
    """Small variations whisper produces on real speech: a hesitation, lowercase, lost commas."""
    text = re.sub(r"\s+([.,?!])", r"\1", text)
    if rng.random() < 0.05:
        text = rng.choice(["Um, ", "Uh, ", "So, ", "Well, "]) + text[0].lower() + text[1:]
    if rng.random() < 0.1:
        text = text.replace(",", "")
    if rng.random() < 0.05:
        text = text.lower()
    return text


def cuts(sentence: str, rng: random.Random, n: int) -> list[tuple[str, float]]:
    """Up to ``n`` prefixes of ``sentence`` cut at word boundaries, with their loss weights.

    Half the cuts are taken after an open word (if the sentence has one), the rest anywhere; a cut
    after an open word or a digit group is surely unfinished (weight 1), other cuts may happen to be
    complete sentences themselves (weight 0.5).
    """
    words = sentence.split()
    if len(words) < 2:
        return []
    points = list(range(1, len(words)))
    bare = [w.strip(",.;:!?\"'").lower() for w in words]
    open_points = [i for i in points if bare[i - 1] in OPEN_WORDS]
    chosen: list[int] = []
    for _ in range(n):
        pool = open_points if open_points and rng.random() < 0.5 else points
        chosen.append(rng.choice(pool))
    out = []
    for i in sorted(set(chosen)):
        prefix = " ".join(words[:i]).rstrip(";:")
        sure = bare[i - 1] in OPEN_WORDS or bare[i - 1].isdigit() or prefix.endswith(",")
        ending = rng.random()
        if ending < 0.1 and not prefix.endswith(","):
            prefix += ","
        elif ending < 0.15:
            prefix = prefix.rstrip(",") + "..."
        elif ending < 0.75:
            prefix = prefix.rstrip(",") + "."  # whisper ends a fragment voiced on its own with a full stop
        out.append((prefix, 1.0 if sure else 0.5))
    return out


def heldout_filter() -> DevFilter:
    """Rejects text near the turn benchmark's held-out sets, the dev sets and the shared eval sets."""
    from training.synth import DEV_SENTENCES

    return DevFilter(
        DEV_SENTENCES,
        HELDOUT_SENTENCES,
        TURN_PAUSES,
        TURN_COMPLETE,
        TURN_DEV_TURNS,
        TURN_SHORT_QUESTIONS,
        CONVERSATION_QUESTIONS,
    )


def source_sentences(
    rng: random.Random, written: int, templates: int, numbers: int, short: int, questions: int = 0
) -> Iterator[str]:
    """The complete sentences examples are made from (held-out text filtered out)."""
    allowed = heldout_filter().allows
    lines = read_sentence_file(WRITTEN_SENTENCES, "written sentence file")
    rng.shuffle(lines)
    yield from (s for s in lines[:written] if allowed(s))
    for make, count in ((template_sentence, templates), (number_sentence, numbers), (short_question, questions)):
        for _ in range(count):
            sentence = make(rng)
            if allowed(sentence):
                yield sentence
    for _ in range(short):
        sentence = short_turn(rng)
        if allowed(sentence):
            yield sentence


def build_examples(
    seed: int = 0,
    written: int = 3000,
    templates: int = 1000,
    numbers: int = 800,
    short: int = 600,
    questions: int = 1000,
    cuts_per: int = 2,
) -> list[TurnExample]:
    """The training examples: each source sentence complete, and up to ``cuts_per`` cuts of it.

    Turns of three words or fewer are not cut: "Yes" is a whole answer, not the start of "Yes please".
    """
    rng = random.Random(seed)
    examples = []
    for group, sentence in enumerate(source_sentences(rng, written, templates, numbers, short, questions)):
        examples.append(TurnExample(whisper_style(sentence, rng), True, 1.0, group))
        for prefix, weight in cuts(sentence, rng, cuts_per if len(sentence.split()) > 3 else 0):
            examples.append(TurnExample(whisper_style(prefix, rng), False, weight, group))
    return examples


def voiced_examples(voice, asr, count: int = 700, seed: int = 2) -> list[TurnExample]:  # noqa: ANN001
    """Fragments cut after an open word, voiced alone by ``voice`` and written down by ``asr``.

    Whisper rewrites a fragment voiced on its own into something that often reads as finished
    ("Remind me tomorrow to" -> "Remind me tomorrow too."); the head can only learn those rewrites
    from whisper itself. Every second source sentence is also voiced whole, as a complete turn
    written the same way. ``asr`` has ``decode(samples).confident`` (agent.asr.WhisperAsr), ``voice``
    is a teacher voice. Held-out text is filtered out as for the text examples.
    """
    from training.teacher import voiced_16k

    rng = random.Random(seed)
    allowed = heldout_filter().allows
    lines = [s for s in read_sentence_file(WRITTEN_SENTENCES, "written sentence file") if allowed(s)]
    rng.shuffle(lines)
    examples: list[TurnExample] = []
    fragments = 0
    for group, sentence in enumerate(lines, start=VOICED_GROUP_BASE):
        if fragments >= count:
            break
        words = sentence.split()
        bare = [w.strip(",.;:!?\"'").lower() for w in words]
        points = [i for i in range(2, len(words)) if bare[i - 1] in OPEN_WORDS]
        if not points:
            continue
        fragment = " ".join(words[: rng.choice(points)]).rstrip(",;:")
        heard = asr.decode(voiced_16k(voice, fragment)).confident
        if heard:
            examples.append(TurnExample(heard, False, 1.0, group))
            fragments += 1
        if group % 2 == 0:
            heard = asr.decode(voiced_16k(voice, sentence)).confident
            if heard:
                examples.append(TurnExample(heard, True, 1.0, group))
    return examples


def read_pause_cases(path: str | Path = TURN_PAUSES) -> list[tuple[str, str]]:
    """(fragment, continuation) pairs of a pause-case file; ValueError naming a malformed line."""
    cases = []
    for line in read_sentence_file(path, "pause-case file", "pass a file of 'fragment | continuation' lines"):
        if line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}: {line!r} is not 'fragment | continuation'")
        cases.append((parts[0], parts[1]))
    return cases


def read_turns(path: str | Path = TURN_COMPLETE) -> list[str]:
    """The complete turns of a turn file (comment lines dropped)."""
    return [s for s in read_sentence_file(path, "turn file") if not s.startswith("#")]


def dev_sets(count: int = 40, seed: int = 1) -> tuple[list[tuple[str, str]], list[str]]:
    """Pause cases and complete turns for choosing the wait policy, from the held-out sentence file.

    Never used for training (the filter keeps them out) nor for the benchmark (other sentences).
    A pause case cuts a sentence after an open word near its middle.
    """
    rng = random.Random(seed)
    lines = read_sentence_file(HELDOUT_SENTENCES, "held-out sentence file")
    rng.shuffle(lines)
    pauses: list[tuple[str, str]] = []
    for sentence in lines[count:]:
        words = sentence.split()
        bare = [w.strip(",.;:!?").lower() for w in words]
        points = [i for i in range(2, len(words) - 1) if bare[i - 1] in OPEN_WORDS]
        if points:
            i = min(points, key=lambda p: abs(p - len(words) / 2))
            pauses.append((" ".join(words[:i]), " ".join(words[i:])))
        if len(pauses) == count:
            break
    completes = lines[: count - 12] + read_turns(TURN_DEV_TURNS)
    return pauses, completes


def comma_sentences(min_words: int = 3) -> list[str]:
    """Held-out sentences with a comma inside after at least ``min_words`` words.

    Voiced whole, their comma pauses are the pauses a wait policy should mostly outlast: the
    clause before one often reads as a whole sentence ("We ran out of milk."). Dev data for the
    wait policy, never for training (the filter keeps held-out sentences out).
    """
    out = []
    for sentence in read_sentence_file(HELDOUT_SENTENCES, "held-out sentence file"):
        words = sentence.split()
        if any(w.endswith(",") and i + 1 >= min_words for i, w in enumerate(words[:-1])):
            out.append(sentence)
    return out
