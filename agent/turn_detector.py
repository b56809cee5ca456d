"""End of turn: how long to wait after the user stops, given what they said.

The LLM backbone scores how likely the user's words end right here: P(<|im_end|>) plus P(". ? !")
after the chat prefix and the transcript with whisper's final punctuation removed (measured in
benchmarks/listen.md: whisper's own "." scores unfinished fragments as complete, and P(<|im_end|>)
alone without punctuation is near zero for everything). That probability sets how much silence we wait
for before declaring the turn over (short when surely complete, long when surely unfinished).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from model.backbone import int8_linears

Scoring = Literal["sentence_end", "im_end", "im_end_normalised"]


class EndOfTurnScorer(Protocol):
    """Scores P(end of turn | transcript): :class:`EndOfTurnModel`, or a scripted fake in tests."""

    def probability(self, transcript: str) -> float:
        """P(the user's message ends right after ``transcript``)."""
        ...


def least_probability(probability: Callable[[str], float], readings: Sequence[str], default: float = 1.0) -> float:
    """``probability`` of the least finished of a transcript's plausible readings; ``default`` when none has words.

    Cautious on purpose: the turn counts as over only if it is over however whisper's doubtful
    last word is read, since cutting a user off costs more than a longer wait.
    """
    return min((probability(text) for text in readings if text), default=default)


_FINAL_PUNCT = re.compile(r"(?<![.?!])[.?!]+$")


def strip_final_punctuation(text: str) -> str:
    """Drop the sentence-final ``.``/``?``/``!`` whisper appends (even to unfinished fragments).

    A trailing comma, dash or ellipsis is kept: whisper writes those when the speaker trails off
    mid-phrase, and they rightly make the LLM expect more words.
    """
    text = " ".join(text.split())
    if text.endswith("..."):
        return text
    return _FINAL_PUNCT.sub("", text).rstrip()


def normalise_transcript(text: str) -> str:
    """LiveKit's normalisation: lowercase, no punctuation (compared with ours in benchmarks/listen.md)."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


class EndOfTurnModel:
    """P(end of user turn | transcript) from a chat LLM, reusing the KV cache of the fixed prefix.

    Zero-shot, the LLM's own next-token probabilities decide (``scoring``); with a trained ``head``
    (model/turn_head.py), the head reads the LLM's states at the transcript's last token instead.
    """

    def __init__(
        self,
        backbone: Any,
        system_prompt: str,
        scoring: Scoring = "sentence_end",
        quantize: bool = False,
        head: Any = None,
    ):
        """Prepare the fixed prefix's KV cache; ``scoring`` picks what counts as the end.

        "sentence_end" (default) sums P(<|im_end|>, ".", "?", "!") after the transcript
        without its final punctuation; "im_end" is P(<|im_end|>) after the transcript as written;
        "im_end_normalised" is P(<|im_end|>) after the lowercased, unpunctuated transcript.
        ``quantize`` scores with an int8 (dynamic) copy of the LLM's linear layers: 3-4x faster
        on CPU; the shared backbone itself is left untouched. ``head`` (a ``TurnHead``) replaces
        ``scoring``: it reads the transcript without its final punctuation, as "sentence_end" does.
        """
        import torch

        if scoring not in ("sentence_end", "im_end", "im_end_normalised"):
            raise ValueError(f"unknown end-of-turn scoring {scoring!r}; use sentence_end, im_end or im_end_normalised")
        self.scoring: Scoring = "sentence_end" if head is not None else scoring
        self.head = head
        self._torch = torch
        self.model = int8_linears(backbone.model) if quantize else backbone.model
        self.tokenizer = backbone.tokenizer
        self._lock = threading.Lock()  # the cached prefix is shared: one scoring at a time
        end_ids = self.tokenizer.convert_tokens_to_ids(["<|im_end|>"])
        if not end_ids or end_ids[0] is None or end_ids[0] == self.tokenizer.unk_token_id:
            raise ValueError("the LLM's tokenizer has no <|im_end|> token; the end-of-turn model needs a ChatML LLM")
        # Tokens that end the user's message: the chat end marker and sentence-final punctuation.
        finals = [self.tokenizer.convert_tokens_to_ids(t) for t in (".", "?", "!")]
        unk = self.tokenizer.unk_token_id
        self.sentence_ids: list[int] = [i for i in finals if i is not None and i != unk]
        self.end_ids: list[int] = [end_ids[0]]
        if scoring == "sentence_end":
            self.end_ids += self.sentence_ids
        prefix = self._template_prefix(system_prompt)
        self._prefix_ids = self.tokenizer(prefix, add_special_tokens=False, return_tensors="pt").input_ids.to(
            next(self.model.parameters()).device
        )
        with torch.inference_mode():
            out = self.model(self._prefix_ids, use_cache=True)
        self._prefix_cache = out.past_key_values
        self._prefix_len = self._prefix_ids.shape[1]

    def _template_prefix(self, system_prompt: str) -> str:
        """The chat template rendered up to where the user's words go (ChatML: '<|im_start|>user' + newline)."""
        marker = "\x00USER\x00"
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": marker}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if marker not in rendered:
            raise ValueError("the LLM's chat template drops the user message; cannot score end of turn")
        return rendered.split(marker)[0]

    def _read(self, transcript: str) -> str:
        """The transcript as the scorer reads it."""
        if self.scoring == "sentence_end":
            return strip_final_punctuation(transcript)
        if self.scoring == "im_end_normalised":
            return normalise_transcript(transcript)
        return " ".join(transcript.split())

    def probability(self, transcript: str) -> float:
        """P(the user's message ends right after ``transcript``); 0.0 when nothing was said yet."""
        text = self._read(transcript)
        if not text:
            return 0.0
        out = self._forward(text)
        torch = self._torch
        if self.head is not None:
            with torch.inference_mode():
                return float(torch.sigmoid(self.head(self._features(out)))[0])
        logits = out.logits[0, -1].float()
        return float(torch.softmax(logits, dim=-1)[self.end_ids].sum())

    def _forward(self, text: str) -> Any:
        """The LLM's forward over ``text`` after the cached prefix (hidden states kept when a head reads them)."""
        torch = self._torch
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(self._prefix_ids.device)
        with self._lock, torch.inference_mode():
            cache = self._prefix_cache
            try:
                return self.model(
                    ids, past_key_values=cache, use_cache=True, logits_to_keep=1, output_hidden_states=True
                )
            finally:
                # Only the transcript's positions were added; drop them so the cache holds the prefix again.
                extra = cache.get_seq_length() - self._prefix_len
                if extra > 0:
                    cache.crop(-extra)

    def _features(self, out: Any) -> Any:
        from model.turn_head import TurnHeadConfig, last_token_features

        layers = self.head.config.layers if self.head is not None else TurnHeadConfig.layers
        lm_head = self.model.get_output_embeddings()
        last = self._torch.tensor([out.hidden_states[-1].shape[1] - 1])
        with self._torch.inference_mode():
            return last_token_features(out.hidden_states, lm_head, self.end_ids[:1], self.sentence_ids, layers, last)

    def features(self, transcripts: list[str]) -> Any:
        """The trained head's input for each transcript (n, n_features), one forward each.

        Not batched on purpose: int8 dynamic quantization scales activations per call, so a padded
        batch would give each row other features than :meth:`probability` sees for it alone.
        """
        rows = [self._features(self._forward(self._read(t) or ".")) for t in transcripts]
        return self._torch.cat(rows)


@dataclass(frozen=True)
class TurnDetector:
    """Silence needed to end a turn, as a function of P(end of turn).

    p >= ``eot_threshold`` waits ``min_silence_ms``, p <= ``eot_hold`` waits ``max_silence_ms``;
    in between the wait falls geometrically, so it is continuous and never increases with p.
    """

    eot_model: EndOfTurnScorer | None  # scores transcripts; None when only the silence decides
    min_silence_ms: int = 250  # wait after a surely complete sentence
    max_silence_ms: int = 2000  # wait after a surely unfinished phrase (and the cap for any turn)
    eot_threshold: float = 0.5  # P at or above which the short wait applies
    eot_hold: float = 0.0  # P at or below which the long wait applies

    def __post_init__(self) -> None:
        if not 0 < self.min_silence_ms <= self.max_silence_ms:
            raise ValueError(
                f"turn silences must satisfy 0 < min_silence_ms <= max_silence_ms, got "
                f"{self.min_silence_ms} and {self.max_silence_ms}; fix the turn.* settings"
            )
        if not 0 < self.eot_threshold <= 1:
            raise ValueError(f"turn.eot_threshold must be in (0, 1], got {self.eot_threshold}")
        if not 0 <= self.eot_hold < self.eot_threshold:
            raise ValueError(
                f"turn.eot_hold must be in [0, turn.eot_threshold), got {self.eot_hold} "
                f"(eot_threshold {self.eot_threshold})"
            )

    @classmethod
    def with_policy(cls, eot_model: EndOfTurnModel | None, policy: Any) -> TurnDetector:
        """A detector waiting as ``policy`` (a model.turn_head.WaitPolicy) says."""
        return cls(eot_model, policy.min_silence_ms, policy.max_silence_ms, policy.eot_threshold, policy.eot_hold)

    def probability(self, transcript: str) -> float:
        """P(end of turn | transcript); 1.0 without a model, so silence alone decides."""
        return 1.0 if self.eot_model is None else self.eot_model.probability(transcript)

    def least_probability(self, readings: Sequence[str]) -> float:
        """P(end of turn) of the least finished of the transcript's readings (1.0 when none)."""
        return least_probability(self.probability, readings)

    def required_silence(self, probability: float) -> float:
        """Seconds of silence after speech that end a turn whose transcript scored ``probability``."""
        p = min(max(probability, 0.0), 1.0)
        lo, hi = self.min_silence_ms / 1000, self.max_silence_ms / 1000
        if p >= self.eot_threshold:
            return lo
        if p <= self.eot_hold:
            return hi
        return hi * math.pow(lo / hi, (p - self.eot_hold) / (self.eot_threshold - self.eot_hold))

    def turn_over(self, silence: float, probability: float) -> bool:
        """Whether ``silence`` seconds since the last speech end a turn scored ``probability``."""
        return silence >= self.required_silence(probability)


def turn_policy(turn: Any, default: Any) -> Any:
    """The wait policy: ``default`` (the scorer's own WaitPolicy) with the turn.* settings that are set."""
    import dataclasses

    chosen = {f.name: getattr(turn, f.name) for f in dataclasses.fields(default) if getattr(turn, f.name) is not None}
    return dataclasses.replace(default, **chosen)


def build_turn_detector(turn: Any, backbone: Any) -> TurnDetector:
    """The turn detector the ``turn`` settings (agent.settings.TurnSettings) ask for, on ``backbone``."""
    from model.assets import AssetError
    from model.turn_head import WaitPolicy, load_head

    if turn.scorer == "zero_shot":
        model = EndOfTurnModel(backbone, turn.system_prompt, quantize=turn.quantize)
        return TurnDetector.with_policy(model, turn_policy(turn, WaitPolicy()))
    if turn.scorer != "trained":
        from agent.settings import SettingsError

        raise SettingsError(f"unknown turn.scorer {turn.scorer!r}; use trained or zero_shot")
    try:
        head, card = load_head(turn.checkpoint)
    except FileNotFoundError as exc:
        raise AssetError(str(exc)) from None
    model = EndOfTurnModel(backbone, turn.system_prompt, quantize=turn.quantize, head=head)
    return TurnDetector.with_policy(model, turn_policy(turn, card.policy))
