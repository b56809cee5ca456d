"""The unified transformer: a frozen causal LM with LoRA that writes text and diffuses speech frames.

- :class:`AudioParams`: the new parameters (code embeddings with [MASK], <boa>/<eoa>/END vectors,
  a head predicting a frame's G codes in parallel plus one end-of-audio logit).
- :class:`Talker`: wraps any Hugging Face causal LM; ``loss`` for training, ``stream`` / ``astream``
  for streaming inference, ``save_trainable`` / ``load_trainable`` for the small checkpoint.

End of audio is a frame-level decision: the head's extra logit says "this frame lies past the end".
The last span is allocated a bounded length and diffused like any other; its frames from the first
END on are dropped. A decided END frame is embedded with the learned END vector.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.assets import AssetError
from model.sampler import audio_length, commit, guess_frames, unmask_counts
from model.sequence import END, IGNORE, MASK, Chunking, Kind, Sequence, allowed, build_sequence

# The prompt `ttt say` voices its text under (text-forced mode): short, so prefill stays cheap.
SAY_MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "Speak."},
    {"role": "user", "content": "Say it."},
]


END_PRIOR_LOGIT = -8.0  # initial bias of the end-of-audio logit: P(END) ~ 3e-4 before training


@dataclass
class TalkerConfig:
    """Shape of the audio parameters and of the LoRA adapters (saved with the checkpoint)."""

    groups: int  # G: codes per frame (the codec's groups)
    codebook_size: int  # K: values each code takes (the codec's codebook size)
    lora_rank: int = 16  # LoRA rank on every linear layer of the backbone
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.0  # dropout on the LoRA input during training


@dataclass
class NoiseConfig:
    """The masked-diffusion training recipe and TtT's train/test-gap strategies."""

    min_t: float = 0.05  # smallest masking ratio drawn; bounds the 1/t weight at 20
    banom: float = 0.1  # BANOM: probability that a batch keeps its audio clean (text loss only)
    ppm: float = 0.3  # PPM: probability that a sample keeps every span before a random one clean
    sst: float = 0.2  # SST: probability that the last span is truncated at random, without END
    max_end_frames: int = 8  # the last span is followed by 1..this many END frames
    audio_weight: float = 1.0  # weight of the diffusion loss against the text loss


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


Event = TextDelta | AudioChunk


class Cancelled(Exception):
    """Raised inside generation when its cancel event is set; ``stream`` ends quietly on it."""


class AudioParams(nn.Module):
    """Everything audio the backbone does not have: embeddings in, a frame head out."""

    def __init__(self, hidden: int, groups: int, codebook_size: int, init_std: float = 0.02):
        super().__init__()
        self.groups, self.codebook_size = groups, codebook_size
        # One table holding G sub-tables of K codes + [MASK]; a frame embeds as the sum of its G rows.
        self.codes = nn.Embedding(groups * (codebook_size + 1), hidden)
        self.boa = nn.Parameter(torch.randn(hidden) * init_std)
        self.eoa = nn.Parameter(torch.randn(hidden) * init_std)
        self.end = nn.Parameter(torch.randn(hidden) * init_std)
        self.head = nn.Linear(hidden, groups * codebook_size + 1)
        nn.init.normal_(self.codes.weight, std=init_std / math.sqrt(groups))
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():  # END is rare (one frame per reply): start from a prior that says so,
            self.head.bias[-1] = END_PRIOR_LOGIT  # so untrained weights do not end the audio at random
        self.register_buffer("offsets", torch.arange(groups) * (codebook_size + 1), persistent=False)

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., G] (values, MASK or END) -> embeddings [..., H]."""
        index = torch.where(codes >= 0, codes, torch.full_like(codes, self.codebook_size))
        summed = self.codes(index + self.offsets).sum(-2)
        return torch.where((codes[..., 0] == END).unsqueeze(-1), self.end.to(summed.dtype), summed)

    def logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [..., H] -> code logits [..., G, K] and end-of-audio logits [...]."""
        out = self.head(hidden)
        codes = out[..., :-1].unflatten(-1, (self.groups, self.codebook_size))
        return codes, out[..., -1]


class Talker(nn.Module):
    """A causal LM (frozen, LoRA-adapted) that writes reply text and diffuses its audio frames."""

    def __init__(self, lm: nn.Module, tokenizer: Any, config: TalkerConfig, chunking: Chunking, lora: bool = True):
        """Wrap ``lm`` in place (pass a copy if the original must stay untouched, see ``from_backbone``)."""
        super().__init__()
        self.config, self.chunking, self.tokenizer = config, chunking, tokenizer
        lm.requires_grad_(False)
        if lora:
            from peft import LoraConfig, get_peft_model

            lora_config = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear",  # every linear layer except the LM head
            )
            lm = get_peft_model(lm, lora_config)
        self.lm = lm
        base = lm.get_base_model() if lora else lm
        self._decoder = base.get_decoder()
        self._lm_head = base.get_output_embeddings()
        self._embed_tokens = base.get_input_embeddings()
        hidden = self._embed_tokens.weight.shape[1]
        std = float(self._embed_tokens.weight.std())
        self.audio = AudioParams(hidden, config.groups, config.codebook_size, init_std=std)
        self.audio.to(self._embed_tokens.weight.device)
        end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        self.end_token: int = end if end is not None else tokenizer.eos_token_id
        self.stop_tokens = {t for t in (self.end_token, tokenizer.eos_token_id) if t is not None}
        self._primed: _Primed | None = None  # KV cache of a fixed prompt prefix, reused by every stream

    def prime(self, messages: list[dict[str, str]]) -> None:
        """Compute once the KV cache of ``messages``' prompt (a system prompt, ``say``'s fixed prompt).

        A later :meth:`stream` whose prompt starts with these tokens copies that cache instead of
        prefilling them again: the prompt's cost moves from the first-audio path to load time.
        """
        ids = self.prompt_ids(messages)
        run = _Run(self, use_cache=True, cancel=None)
        run.add_text(ids)
        with torch.inference_mode():
            hidden = run.forward(_Rows(self.config.groups), keep=True)[-1]
        self._primed = _Primed(ids, run.done, run.cache, hidden)

    @classmethod
    def from_backbone(
        cls, backbone: Any, config: TalkerConfig, chunking: Chunking, share: bool = False, lora: bool = True
    ) -> Talker:
        """A talker on a :class:`model.backbone.Backbone`; its model is copied unless ``share``.

        The copy keeps LoRA out of the shared backbone (the turn detector scores with it as is).
        """
        lm = backbone.model if share else copy.deepcopy(backbone.model)
        return cls(lm, backbone.tokenizer, config, chunking, lora=lora)

    def merge_lora(self) -> None:
        """Fold the LoRA weights into the backbone's linear layers (inference only: no extra matmuls).

        The adapters stay saved as they are; call again after loading new ones.
        """
        if hasattr(self.lm, "merge_adapter"):
            if getattr(self.lm.base_model, "merged", False):
                self.lm.unmerge_adapter()
            self.lm.merge_adapter()

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self._embed_tokens.weight.device

    # --- the network ---------------------------------------------------------------------------

    def embed(self, kinds: torch.Tensor, tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, L, H] of positions given by kinds/tokens [B, L] and codes [B, L, G]."""
        out = self._embed_tokens(tokens)
        frames = self.audio.embed_frames(codes).to(out.dtype)
        k = kinds.unsqueeze(-1)
        out = torch.where(k == int(Kind.FRAME), frames, out)
        out = torch.where(k == int(Kind.BOA), self.audio.boa.to(out.dtype), out)
        out = torch.where(k == int(Kind.EOA), self.audio.eoa.to(out.dtype), out)
        return torch.where(k == int(Kind.PAD), torch.zeros_like(out), out)

    def hidden(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """Final hidden states [B, Q, H]; ``mask`` is a bool [B, 1, Q, P+Q] (True = attend).

        The mask goes to the model in the additive 4D form transformers passes through untouched,
        which both eager and SDPA attention accept.
        """
        additive = torch.zeros(mask.shape, dtype=embeds.dtype, device=embeds.device)
        additive = additive.masked_fill(~mask.to(embeds.device), torch.finfo(embeds.dtype).min)
        out = self._decoder(
            inputs_embeds=embeds,
            attention_mask=additive,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's LM head on ``hidden`` [..., H]."""
        return self._lm_head(hidden)

    # --- training ------------------------------------------------------------------------------

    def training_sequence(
        self,
        prompt_ids: list[int],
        reply_ids: list[int],
        codes: torch.Tensor,
        noise: NoiseConfig,
        rng: random.Random,
    ) -> Sequence:
        """One training sequence, with SST and the random END padding of the last span applied."""
        if rng.random() < noise.sst and codes.shape[0] > 1:
            cut = rng.randint(1, codes.shape[0] - 1)
            return build_sequence(prompt_ids, reply_ids, codes[:cut], self.chunking, self.end_token, 0)
        end_frames = rng.randint(1, max(1, noise.max_end_frames))
        return build_sequence(prompt_ids, reply_ids, codes, self.chunking, self.end_token, end_frames)

    def loss(
        self, batch: dict[str, torch.Tensor], noise: NoiseConfig, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Text next-token CE plus masked-diffusion CE (weighted 1/t) on a :func:`collate` batch.

        Returns ``loss`` (to minimise), ``text`` and ``audio`` (detached parts).
        """
        dev = self.device
        kinds, tokens = batch["kinds"].to(dev), batch["tokens"].to(dev)
        codes, span = batch["codes"].to(dev), batch["span"].to(dev)
        target, mask = batch["text_target"].to(dev), batch["mask"].to(dev)
        bsz, length = kinds.shape
        frames = kinds == int(Kind.FRAME)

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(dev)

        t = noise.min_t + (1 - noise.min_t) * uniform(bsz)
        noisy = (uniform(bsz, length) < t.unsqueeze(1)) & frames
        if float(uniform(1)) < noise.banom:
            noisy = torch.zeros_like(noisy)  # BANOM: a clean-audio batch, text loss only
        if noise.ppm > 0:
            # PPM: spans before a random cut stay clean, as committed spans are at inference.
            n_spans = span.max(dim=1).values + 1
            cut = (uniform(bsz) * n_spans.clamp(min=1)).long()
            use = uniform(bsz) < noise.ppm
            clean = use.unsqueeze(1) & (span < cut.unsqueeze(1)) & frames
            noisy = noisy & ~clean
        inputs = torch.where(noisy.unsqueeze(-1), torch.full_like(codes, MASK), codes)
        positions = torch.arange(length, device=dev).expand(bsz, length)
        h = self.hidden(self.embed(kinds, tokens, inputs), mask, positions)

        has_text = target != IGNORE
        text_loss = torch.nn.functional.cross_entropy(self.text_logits(h[has_text]), target[has_text])
        if noisy.any():
            code_logits, end_logits = self.audio.logits(h[noisy])
            truth = codes[noisy]
            is_end = truth[:, 0] == END
            end_ce = torch.nn.functional.binary_cross_entropy_with_logits(
                end_logits, is_end.to(end_logits.dtype), reduction="none"
            )
            code_ce = torch.nn.functional.cross_entropy(
                code_logits.flatten(0, 1), truth.clamp(min=0).flatten(), reduction="none"
            ).view(truth.shape)
            per_frame = end_ce + code_ce.sum(-1).masked_fill(is_end, 0.0)
            weight = (1.0 / t).unsqueeze(1).expand(bsz, length)[noisy]
            audio_loss = (per_frame * weight).sum() / frames.sum().clamp(min=1)
        else:
            audio_loss = torch.zeros((), device=dev)
        total = text_loss + noise.audio_weight * audio_loss
        return {"loss": total, "text": text_loss.detach(), "audio": audio_loss.detach()}

    # --- checkpoint ----------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: LoRA weights and audio parameters."""
        state = {f"audio.{k}": v for k, v in self.audio.state_dict().items()}
        for name, param in self.lm.named_parameters():
            if "lora_" in name:
                state[f"lm.{name}"] = param
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save_trainable(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write LoRA + audio parameters (and the config, as metadata) into one safetensors file."""
        from safetensors.torch import save_file

        meta = {"talker_config": json.dumps(asdict(self.config)), "hidden": str(self._hidden_size())}
        meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(path), metadata=meta)

    def load_trainable(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read a :meth:`save_trainable` file into this talker; returns its extra metadata.

        Raises AssetError when the file is missing, corrupt, or made for another shape.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise AssetError(f"talker checkpoint {path} does not exist (train one with `ttt train talker`)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise AssetError(f"talker checkpoint {path} is corrupt or not safetensors ({exc}); retrain it") from exc
        saved = json.loads(meta.get("talker_config", "{}"))
        mine = asdict(self.config)
        wrong = {k: (v, mine.get(k)) for k, v in saved.items() if mine.get(k) != v}
        if not saved or wrong or meta.get("hidden") != str(self._hidden_size()):
            raise AssetError(
                f"talker checkpoint {path} does not fit this model (saved vs current: {wrong or 'no config'}, "
                f"hidden {meta.get('hidden')} vs {self._hidden_size()}); use the backbone and codec it was "
                "trained with, or retrain"
            )
        expected = self.trainable_state()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
            missing = sorted(set(expected) - set(state))[:3]
            raise AssetError(f"talker checkpoint {path} has the wrong tensors (missing e.g. {missing}); retrain")
        merged = bool(getattr(getattr(self.lm, "base_model", None), "merged", False))
        if merged:
            self.lm.unmerge_adapter()  # take the old adapters out before their weights change
        audio = {k[len("audio.") :]: v for k, v in state.items() if k.startswith("audio.")}
        self.audio.load_state_dict(audio)
        params = dict(self.lm.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("lm."):
                    params[key[len("lm.") :]].copy_(value)
        if merged:
            self.lm.merge_adapter()
        return {k: json.loads(v) for k, v in meta.items() if k not in ("talker_config", "hidden")}

    def _hidden_size(self) -> int:
        return int(self._embed_tokens.weight.shape[1])

    # --- inference -----------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat history up to the start of the assistant's reply."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def stream(
        self,
        messages: list[dict[str, str]],
        codec: Any = None,
        *,
        text: str | None = None,
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
        use_cache: bool = True,
        stats: dict[str, Any] | None = None,
    ) -> Iterator[Event]:
        """Generate the reply to ``messages``: yields :class:`TextDelta` and :class:`AudioChunk` events.

        ``text`` forces the reply text (``ttt say``); otherwise it is decoded autoregressively.
        ``codec`` (a SpeechCodec) turns each span's frames into samples as soon as the span is
        decided; without one, chunks carry codes and no samples. Setting ``cancel`` stops the
        generation before its next forward pass. ``use_cache=False`` recomputes the whole sequence
        at every pass (a slow reference for tests). ``stats`` receives ``passes`` (forward passes).
        """
        options = options or GenerationOptions()
        forced = None
        if text is not None:
            forced = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not forced:
                raise ValueError("the text to say is empty; give at least one word")
        run = _Run(self, use_cache=use_cache, cancel=cancel)
        ids = self.prompt_ids(messages)
        primed = self._primed
        if use_cache and primed is not None and ids[: len(primed.ids)] == primed.ids:
            run.done, run.cache = primed.rows, copy.deepcopy(primed.cache)
            run.last_hidden = primed.last_hidden
            ids = ids[len(primed.ids) :]
        run.add_text(ids)
        try:
            yield from _generate(self, run, codec, forced, options)
        except Cancelled:
            return
        finally:
            if stats is not None:
                stats["passes"] = run.passes

    async def astream(
        self,
        messages: list[dict[str, str]],
        codec: Any = None,
        *,
        text: str | None = None,
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[Event]:
        """:meth:`stream` in a worker thread, yielding through an asyncio queue (never blocks the loop).

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
                    for event in self.stream(messages, codec, text=text, options=options, cancel=cancel):
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
class GenerationOptions:
    """Per-call sampling knobs (defaults from ``settings.talker``, see :meth:`from_settings`)."""

    steps: int = 4  # S: unmasking steps per audio span
    first_steps: int = 2  # S of the first span (fewer, so sound starts sooner)
    temperature: float = 0.0  # text sampling temperature; 0 = greedy
    code_temperature: float = 0.0  # audio code sampling temperature; 0 = greedy
    max_new_tokens: int = 256  # cap on reply text tokens
    max_last_span: int = 125  # cap on the last span, in frames
    frames_per_token: float = 4.0  # bound of the last span: frames per reply token, minus frames so far
    seed: int | None = None  # seed for sampling (None: nondeterministic when sampling)

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
            max_last_span=s.max_last_span,
            frames_per_token=s.frames_per_token,
        )


@dataclass
class _Primed:
    ids: list[int]  # the prompt tokens whose cache this is
    rows: _Rows  # their positions
    cache: Any  # DynamicCache holding exactly those positions (copied before each use)
    last_hidden: torch.Tensor  # hidden state of the last prompt position (first text token's logits)


@dataclass
class _Failure:
    error: BaseException


class _Run:
    """The positions of one generation: those in the KV cache and those decided but not yet computed."""

    def __init__(self, talker: Talker, use_cache: bool, cancel: threading.Event | None):
        from transformers import DynamicCache

        self.talker, self.use_cache, self.cancel = talker, use_cache, cancel
        self.cache = DynamicCache(config=talker.lm.config) if use_cache else None
        groups = talker.config.groups
        self.done = _Rows(groups)  # in the cache (or, without cache, already final)
        self.pending = _Rows(groups)  # final, not computed yet: they ride along the next pass
        self.passes = 0  # forward passes so far (for tests and benchmarks)
        self.last_hidden: torch.Tensor | None = None  # hidden state of the last position, if it is final

    def add_text(self, tokens: list[int]) -> None:
        for tok in tokens:
            self.pending.add(Kind.TEXT, token=tok)

    @torch.inference_mode()  # per call, not around the generator: the mode must not leak to the consumer
    def forward(self, extra: _Rows, keep: bool) -> torch.Tensor:
        """Run pending + ``extra`` positions; return hidden states [Q, H] of all of them.

        Pending positions always join the cache (they are final); ``extra`` ones only with
        ``keep`` (a diffusion step's guesses are cropped away again).
        """
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled
        self.passes += 1
        new = self.pending.concat(extra)
        dev = self.talker.device
        if self.use_cache:
            past = len(self.done)
            q_pos = torch.arange(past, past + len(new))
            k_pos = torch.arange(past + len(new))
            k_span = torch.cat([self.done.span_tensor(), new.span_tensor()])
            mask = allowed(q_pos, k_pos, new.span_tensor(), k_span)
            h = self.talker.hidden(
                self.talker.embed(*new.tensors(dev)), mask[None, None].to(dev), q_pos[None].to(dev), self.cache
            )[0]
            if not keep and len(extra):
                self.cache.crop(-len(extra))  # transformers 5: a negative count removes that many
        else:
            everything = self.done.concat(new)
            n = len(everything)
            pos = torch.arange(n)
            mask = allowed(pos, pos, everything.span_tensor(), everything.span_tensor())
            h = self.talker.hidden(self.talker.embed(*everything.tensors(dev)), mask[None, None].to(dev), pos[None])
            h = h[0, n - len(new) :]
        self.done = self.done.concat(self.pending)
        self.pending = _Rows(self.done.groups)
        if keep:
            self.done = self.done.concat(extra)
        self.last_hidden = h[-1] if keep or not len(extra) else None
        return h


class _Rows:
    """A growing list of positions (kind, token, codes, span id)."""

    def __init__(self, groups: int):
        self.groups = groups
        self.kinds: list[int] = []
        self.tokens: list[int] = []
        self.codes: list[torch.Tensor] = []
        self.span: list[int] = []

    def __len__(self) -> int:
        return len(self.kinds)

    def add(self, kind: Kind, token: int = 0, codes: torch.Tensor | None = None, span: int = -1) -> None:
        self.kinds.append(int(kind))
        self.tokens.append(token)
        self.codes.append(codes if codes is not None else torch.zeros(self.groups, dtype=torch.long))
        self.span.append(span)

    def add_span(self, frames: torch.Tensor, span: int, close: bool) -> None:
        """<boa>, the frames [M, G] of span ``span``, and <eoa> when ``close``."""
        self.add(Kind.BOA)
        for row in frames:
            self.add(Kind.FRAME, codes=row, span=span)
        if close:
            self.add(Kind.EOA)

    def concat(self, other: _Rows) -> _Rows:
        out = _Rows(self.groups)
        out.kinds, out.tokens = self.kinds + other.kinds, self.tokens + other.tokens
        out.codes, out.span = self.codes + other.codes, self.span + other.span
        return out

    def span_tensor(self) -> torch.Tensor:
        return torch.tensor(self.span, dtype=torch.long)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kinds [1, L], tokens [1, L], codes [1, L, G]) on ``device``."""
        codes = torch.stack(self.codes) if self.codes else torch.zeros(0, self.groups, dtype=torch.long)
        return (
            torch.tensor([self.kinds], dtype=torch.long, device=device),
            torch.tensor([self.tokens], dtype=torch.long, device=device),
            codes.unsqueeze(0).to(device),
        )


def _generate(
    talker: Talker, run: _Run, codec: Any, forced: list[int] | None, options: GenerationOptions
) -> Iterator[Event]:
    """The interleaving loop behind :meth:`Talker.stream` (see model/sequence.py for the layout)."""
    chunking, groups = talker.chunking, talker.config.groups
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    decoder = codec.stream_decoder() if codec is not None else None
    rate = int(codec.sample_rate) if codec is not None else 0
    reply: list[int] = []
    frames_out = 0
    logits: torch.Tensor | None = None  # text logits at the last computed position, when it is text/<eoa>
    text_done = False
    shown = ""

    def text_delta(new: list[int]) -> TextDelta:
        nonlocal shown
        full = talker.tokenizer.decode(reply, skip_special_tokens=True)
        delta, shown = full[len(shown) :], full
        return TextDelta(delta, list(new))

    span_index = 0
    while True:
        # 1) a text chunk
        size = chunking.first_text if span_index == 0 else chunking.text
        new: list[int] = []
        if forced is not None:
            new = forced[len(reply) : len(reply) + size]
            reply.extend(new)
            run.add_text(new)
            text_done = len(reply) >= len(forced)
        else:
            while len(new) < size:
                if logits is None and not len(run.pending) and run.last_hidden is not None:
                    logits = _infer(talker.text_logits, run.last_hidden)  # the primed prompt's last position
                if logits is None:
                    logits = _infer(talker.text_logits, run.forward(_Rows(groups), keep=True)[-1])
                token = _pick(logits, options.temperature, generator)
                logits = None
                if token in talker.stop_tokens or len(reply) >= options.max_new_tokens:
                    text_done = True
                    break
                new.append(token)
                reply.append(token)
                run.add_text([token])
        if new:
            yield text_delta(new)
        if forced is None and not text_done and len(reply) >= options.max_new_tokens:
            text_done = True

        # 2) an audio span, diffused over its positions alone on top of the exact prefix cache
        if text_done:
            target = math.ceil(options.frames_per_token * len(reply)) - frames_out
            length = max(1, min(options.max_last_span, target))
        else:
            length = chunking.audio_size(span_index)
        steps = options.first_steps if span_index == 0 else options.steps
        frames = torch.full((length, groups), MASK, dtype=torch.long)
        span_id = span_index
        for count in unmask_counts(length, steps):
            rows = _Rows(groups)
            rows.add_span(frames, span_id, close=False)
            h = run.forward(rows, keep=False)[-length:]
            code_logits, end_logits = _infer(talker.audio.logits, h)
            guess = guess_frames(code_logits, end_logits, text_done, options.code_temperature, generator)
            frames = commit(frames, guess, count)
        audio = frames[: audio_length(frames)] if text_done else frames
        frames_out += len(audio)
        if decoder is not None:
            samples = decoder.push(audio) if len(audio) else np.zeros(0, np.float32)
            yield AudioChunk(audio, np.asarray(samples, dtype=np.float32), rate)
        else:
            yield AudioChunk(audio, np.zeros(0, np.float32), rate)
        if text_done:
            tail = decoder.flush() if decoder is not None else np.zeros(0, np.float32)
            yield AudioChunk(audio[:0], np.asarray(tail, dtype=np.float32), rate, final=True)
            return
        # The decided span joins the prefix with the next pass (no pass of its own).
        run.pending.add_span(frames, span_id, close=True)
        span_index += 1


@torch.inference_mode()
def _infer(fn: Any, hidden: torch.Tensor) -> Any:
    return fn(hidden)


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def load_talker(
    settings: Any, codec: Any, backbone: Any = None, checkpoint: str | os.PathLike | None = None
) -> tuple[Talker, bool]:
    """The talker for ``settings`` fitted to ``codec``; returns (talker, trained).

    ``checkpoint`` (or ``settings.talker.checkpoint``, or the shipped
    model/checkpoints/talker.safetensors) is loaded when it exists; otherwise the audio
    parameters stay random and ``trained`` is False.
    """
    from model.backbone import load_backbone

    set_threads(getattr(settings.talker, "threads", 0))
    backbone = backbone or load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    t = settings.talker
    chunking = Chunking(t.first_text_chunk, t.first_audio_chunk, t.text_chunk, t.audio_chunk)
    config = TalkerConfig(groups=int(codec.groups), codebook_size=int(codec.codebook_size))
    talker = Talker.from_backbone(backbone, config, chunking)
    path = checkpoint or t.checkpoint
    shipped = Path(__file__).parent / "checkpoints" / "talker.safetensors"
    if path is None and shipped.is_file():
        path = shipped
    trained = False
    if path is not None:
        talker.load_trainable(path)
        trained = True
    talker.merge_lora()
    talker.eval()
    return talker, trained


def set_threads(threads: int = 0) -> int:
    """Set torch's CPU threads: ``threads``, or half the cores (at least 1) when 0; returns the count.

    Two intra-op threads on two busy cores stall each other at every barrier (a pass went from
    0.1 s to several seconds under load), so the talker leaves the other half to the rest of the agent.
    """
    count = threads if threads > 0 else max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(count)
    return count
