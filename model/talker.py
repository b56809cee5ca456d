"""The unified transformer: a frozen causal LM with LoRA that writes text and diffuses speech frames.

This file is the network, its training objective and its checkpoint; generation (the streaming
state machine) is in :mod:`model.generate`. The layout it reads is :mod:`model.sequence`'s.

- :class:`SpeechParams`: what the backbone does not have: embeddings of phonemes, span lengths
  and frames (the sum of a frame's G code embeddings, plus where it sits in its span), a head
  predicting a frame's G codes in parallel, a duration head, and (training only) an auxiliary
  head predicting the phoneme a frame voices.
- :class:`Talker`: wraps any Hugging Face causal LM; :meth:`Talker.loss` for training,
  :meth:`Talker.stream` / :meth:`Talker.astream` for generation, ``save_trainable`` /
  ``load_trainable`` for the small checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.assets import AssetError
from model.sequence import IGNORE, MASK, Kind, Packed

# The prompt ``ttt say`` voices its text under, and training's: an assistant turn with no history.
SAY_MESSAGES: list[dict[str, str]] = []


@dataclass
class TalkerConfig:
    """Shape of the speech parameters and of the LoRA adapters (saved with the checkpoint)."""

    groups: int  # G: codes per frame (the codec's groups)
    codebook_size: int  # K: values each code takes (the codec's codebook size)
    phonemes: int  # rows of the phoneme embedding (model.chunks.phoneme_vocab_size())
    max_span: int = 64  # longest span in frames; the duration head has classes 0..max_span
    lora_rank: int = 32  # LoRA rank on every linear layer of the backbone
    lora_alpha: int = 64  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.0  # dropout on the LoRA input during training
    train_norms: bool = True  # the backbone's RMSNorm gains are trained (and saved) too
    phone_classes: int = 0  # classes of the auxiliary frame-phoneme head (the codec's CTC classes); 0 = no head
    text_null: bool = False  # a learned embedding for hidden text (classifier-free guidance's unconditional branch)


@dataclass
class NoiseConfig:
    """The masked-diffusion training recipe."""

    min_t: float = 0.05  # smallest masking ratio drawn for a noised span
    full_mask: float = 0.25  # probability that a noised span is masked whole (the first decoding step)
    text_weight: float = 1.0  # weight of the text loss (a KL to the teacher when one is given, see Talker.loss)
    dur_weight: float = 1.0  # weight of the duration loss
    audio_weight: float = 1.0  # weight of the diffusion loss
    phone_weight: float = 0.2  # weight of the auxiliary frame-phoneme loss (when the talker has the head)


class SpeechParams(nn.Module):
    """Everything speech the backbone does not have: embeddings in, frame and duration heads out."""

    def __init__(self, hidden: int, config: TalkerConfig, init_std: float = 0.02):
        super().__init__()
        g, k = config.groups, config.codebook_size
        self.groups, self.codebook_size, self.max_span = g, k, config.max_span
        # One table holding G sub-tables of K codes + [MASK]; a frame embeds as the sum of its G rows.
        self.codes = nn.Embedding(g * (k + 1), hidden)
        self.phonemes = nn.Embedding(config.phonemes, hidden)
        self.durations = nn.Embedding(config.max_span + 1, hidden)
        # where a frame sits in its span, counted from its start and from its end
        self.slot_from_start = nn.Embedding(config.max_span, hidden)
        self.slot_from_end = nn.Embedding(config.max_span, hidden)
        self.head = nn.Linear(hidden, g * k)
        self.duration_head = nn.Linear(hidden, config.max_span + 1)
        # dense alignment supervision: which phoneme a (masked) frame voices; unused in generation
        self.phone_head = nn.Linear(hidden, config.phone_classes) if config.phone_classes else None
        # what a hidden text or phoneme position holds (Kind.NULL)
        self.null_text = nn.Embedding(1, hidden) if config.text_null else None
        tables = (self.phonemes, self.durations, self.slot_from_start, self.slot_from_end, self.null_text)
        for table in tables:
            if table is not None:
                nn.init.normal_(table.weight, std=init_std)
        nn.init.normal_(self.codes.weight, std=init_std / math.sqrt(g))
        for head in (self.head, self.duration_head, self.phone_head):
            if head is None:
                continue
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self.register_buffer("offsets", torch.arange(g) * (k + 1), persistent=False)

    def embed_frames(self, codes: torch.Tensor, slot: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """Codes [..., G] (values or MASK), slot and span length [...] -> frame embeddings [..., H]."""
        index = torch.where(codes >= 0, codes, torch.full_like(codes, self.codebook_size))
        top = self.max_span - 1
        from_end = (length - 1 - slot).clamp(0, top)
        return (
            self.codes(index + self.offsets).sum(-2)
            + self.slot_from_start(slot.clamp(0, top))
            + self.slot_from_end(from_end)
        )

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] -> code logits [..., G, K]."""
        return on_rows(self.head, hidden).unflatten(-1, (self.groups, self.codebook_size))


def on_rows(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``layer`` on ``hidden`` [..., H] as a batch of rows (an int8 linear layer takes 2-D input only)."""
    if hidden.dim() == 2:
        return layer(hidden)
    out = layer(hidden.reshape(-1, hidden.shape[-1]))
    return out.reshape(*hidden.shape[:-1], out.shape[-1])


# Parts later versions added: (TalkerConfig field, their tensors' prefix); see Talker.load_trainable.
NEW_PARTS = (("phone_classes", "speech.phone_head."), ("text_null", "speech.null_text."))

INT8_KEEP = ("down_proj",)  # linear layers that stay fp32 when the talker is quantized (outlier inputs)


class Talker(nn.Module):
    """A causal LM (frozen, LoRA-adapted) that writes reply text and diffuses its audio frames."""

    def __init__(self, lm: nn.Module, tokenizer: Any, config: TalkerConfig, lora: bool = True):
        """Wrap ``lm`` in place (pass a copy if the original must stay untouched, see ``from_backbone``)."""
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
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
        if config.train_norms:
            for name, param in self._decoder.named_parameters():
                if "norm" in name:
                    param.requires_grad_(True)
        hidden = self._embed_tokens.weight.shape[1]
        std = float(self._embed_tokens.weight.std())
        self.speech = SpeechParams(hidden, config, init_std=std)
        self.speech.to(self._embed_tokens.weight.device)
        end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        self.end_token: int = end if end is not None else tokenizer.eos_token_id
        self.stop_tokens = {t for t in (self.end_token, tokenizer.eos_token_id) if t is not None}
        self.prompt_cache: Any = None  # model.generate.PromptCache: the last prompt's KV cache, extended by the next
        self.cache_lock = threading.Lock()  # one stream at a time owns the prompt cache
        self.quantized = False  # int8 linear layers (inference only; see quantize)
        self.compute_dtype = torch.float32  # what the backbone's matmuls run in (see cast_frozen)

    @classmethod
    def from_backbone(cls, backbone: Any, config: TalkerConfig, share: bool = False, lora: bool = True) -> Talker:
        """A talker on a :class:`model.backbone.Backbone`; its model is copied unless ``share``.

        The copy keeps LoRA out of the shared backbone (the turn detector scores with it as is).
        """
        lm = backbone.model if share else copy.deepcopy(backbone.model)
        return cls(lm, backbone.tokenizer, config, lora=lora)

    def merge_lora(self) -> None:
        """Fold the LoRA weights into the backbone's linear layers (inference only: no extra matmuls).

        The adapters stay saved as they are; call again after loading new ones.
        """
        if hasattr(self.lm, "merge_adapter"):
            if self.merged:
                self.lm.unmerge_adapter()
            self.lm.merge_adapter()

    @property
    def merged(self) -> bool:
        """Whether the LoRA adapters are folded into the backbone's weights (peft marks each layer)."""
        return any(getattr(m, "merged", False) for m in self.lm.modules() if hasattr(m, "merged_adapters"))

    def quantize(self) -> None:
        """Int8 linear layers but ``INT8_KEEP``, LoRA merged first (CPU inference only; no way back).

        A decode step reads every weight once, so on CPU it is bound by memory bandwidth; int8
        weights are a quarter of the bytes. Faster and less accurate: model/checkpoints/TALKER_CARD.md.
        Load the checkpoint first: new weights cannot be loaded into quantized layers.
        """
        from model.backbone import int8_linears

        if self.device.type != "cpu":
            return
        self.merge_lora()
        int8_linears(self, inplace=True, keep=INT8_KEEP)
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        self._lm_head = base.get_output_embeddings()
        self.quantized = True
        self.prompt_cache = None  # computed with the fp32 weights

    def cast_frozen(self, dtype: torch.dtype) -> int:
        """Store the frozen backbone weights in ``dtype`` (training under autocast); returns how many.

        The token embedding (tied to the LM head) stays as it is; trainable weights stay fp32, so the
        optimiser updates full-precision values while the big matmuls run in ``dtype``. Inference
        can use it too (after the checkpoint is loaded: merged adapters cannot be unmerged exactly).
        """
        from model.backbone import cast_frozen

        count = cast_frozen(self, dtype, keep=(self._embed_tokens.weight,))
        self.compute_dtype = dtype
        self.prompt_cache = None  # computed with the old weights
        return count

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self._embed_tokens.weight.device

    # --- the network ---------------------------------------------------------------------------

    def embed(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Input embeddings [B, L, H] of :meth:`model.sequence.Positions.tensors` rows (batched [B, L])."""
        kinds, tokens = rows["kinds"], rows["tokens"]
        text = kinds == int(Kind.TEXT)
        out = self._embed_tokens(torch.where(text, tokens, torch.zeros_like(tokens)))
        speech = self.speech
        top = speech.phonemes.num_embeddings - 1
        phone = speech.phonemes(torch.where(kinds == int(Kind.PHONE), tokens, 0).clamp(0, top))
        dur = speech.durations(torch.where(kinds == int(Kind.DUR), tokens, 0).clamp(0, speech.max_span))
        is_frame = kinds == int(Kind.FRAME)
        frames = speech.embed_frames(rows["codes"], rows["slot"].clamp(min=0), torch.where(is_frame, tokens, 1))
        k = kinds.unsqueeze(-1)
        out = torch.where(k == int(Kind.PHONE), phone.to(out.dtype), out)
        out = torch.where(k == int(Kind.DUR), dur.to(out.dtype), out)
        out = torch.where(k == int(Kind.FRAME), frames.to(out.dtype), out)
        if speech.null_text is not None:
            out = torch.where(k == int(Kind.NULL), speech.null_text.weight[0].to(out.dtype), out)
        elif (kinds == int(Kind.NULL)).any():
            raise ValueError("hidden text positions need a talker with text_null (trained for guidance)")
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
        with torch.autocast(embeds.device.type, self.compute_dtype, enabled=self.compute_dtype != torch.float32):
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
        return on_rows(self._lm_head, hidden)

    def duration_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Span-length logits [..., max_span + 1] (class 0 is never a target)."""
        return on_rows(self.speech.duration_head, hidden)

    # --- training ------------------------------------------------------------------------------

    def noise(self, packed: Packed, noise: NoiseConfig, generator: torch.Generator | None = None) -> torch.Tensor:
        """Which codes [B, L, G] to mask: every other span of a row (random phase), each at its own ratio t.

        Alternating spans means every noised span has a clean span before it, as spans already
        decided are at inference, while half the spans of a batch train at once.
        """
        t = packed.tensors
        span, kinds = t["span"], t["kinds"]
        bsz, length = span.shape
        n_spans = int(span.max()) + 1 if (span >= 0).any() else 0
        phase = torch.randint(0, 2, (bsz, 1), generator=generator)
        noised_span = ((span + phase) % 2 == 0) & (kinds == int(Kind.FRAME))
        ratio = noise.min_t + (1 - noise.min_t) * torch.rand(bsz, max(n_spans, 1), generator=generator)
        whole = torch.rand(bsz, max(n_spans, 1), generator=generator) < noise.full_mask
        ratio = torch.where(whole, torch.ones_like(ratio), ratio)
        per_position = ratio.gather(1, span.clamp(min=0))
        draw = torch.rand(bsz, length, self.config.groups, generator=generator)
        return (draw < per_position.unsqueeze(-1)) & noised_span.unsqueeze(-1)

    def loss(
        self,
        packed: Packed,
        noise: NoiseConfig,
        generator: torch.Generator | None = None,
        masked: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Text next-token CE + duration CE + masked-diffusion CE (mean over masked codes) on a packed batch.

        With the phoneme head, plus ``phone_weight`` times the phoneme CE of the noised frames that
        have a label (reported as ``phone``, with its accuracy ``phone_acc``).
        ``masked`` [B, L, G] overrides the random noise (evaluation). ``teacher`` [N, V]: logits of the
        untouched backbone for the N text targets, in the batch's reading order; the text loss is then
        KL(teacher || talker) per token (distillation keeps the backbone's text ability; the same
        gradient as the cross-entropy to the teacher's distribution), reported as ``text_kl``, and
        ``text`` still reports the CE of the true tokens. Returns ``loss`` (to minimise) and the
        detached parts ``text``, ``dur``, ``audio`` (nats per token / span / code).
        """
        dev = self.device
        rows = {k: v.to(dev) for k, v in packed.tensors.items()}
        masked = (masked if masked is not None else self.noise(packed, noise, generator)).to(dev)
        rows["codes"] = torch.where(masked, torch.full_like(rows["codes"], MASK), rows["codes"])
        h = self.hidden(self.embed(rows), packed.mask.to(dev), packed.positions.to(dev))
        ce = nn.functional.cross_entropy
        zero = torch.zeros((), device=dev)
        has_text = rows["text_target"] != IGNORE
        text = text_objective = zero
        parts: dict[str, torch.Tensor] = {}
        if has_text.any():
            logits = self.text_logits(h[has_text])
            text = ce(logits, rows["text_target"][has_text])
            text_objective = text
            if teacher is not None:
                if teacher.shape != logits.shape:
                    raise ValueError(
                        f"teacher logits {tuple(teacher.shape)} must match the text targets' {tuple(logits.shape)}"
                    )
                log_q = torch.log_softmax(logits.float(), dim=-1)
                log_p = torch.log_softmax(teacher.to(dev).float(), dim=-1)
                text_objective = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
                parts["text_kl"] = text_objective.detach()
        has_dur = rows["dur_target"] != IGNORE
        dur_target = rows["dur_target"][has_dur].clamp(max=self.config.max_span)
        dur = ce(self.duration_logits(h[has_dur]), dur_target) if has_dur.any() else zero
        noisy_frames = masked.any(-1)
        if noisy_frames.any():
            logits = self.speech.code_logits(h[noisy_frames])  # [N, G, K]
            truth = packed.tensors["codes"].to(dev)[noisy_frames]
            per_code = ce(logits.flatten(0, 1), truth.flatten(), reduction="none").view(truth.shape)
            which = masked[noisy_frames]
            audio = (per_code * which).sum() / which.sum()
        else:
            audio = zero
        total = noise.text_weight * text_objective + noise.dur_weight * dur + noise.audio_weight * audio
        labelled = noisy_frames & (rows["phone_target"] != IGNORE)
        if self.speech.phone_head is not None and labelled.any():
            logits = on_rows(self.speech.phone_head, h[labelled])
            truth = rows["phone_target"][labelled]
            phone = ce(logits, truth)
            total = total + noise.phone_weight * phone
            parts["phone"] = phone.detach()
            parts["phone_acc"] = (logits.argmax(-1) == truth).float().mean()
        return {"loss": total, "text": text.detach(), "dur": dur.detach(), "audio": audio.detach(), **parts}

    # --- checkpoint ----------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: LoRA weights, norm gains (if trained) and the speech parameters."""
        state = {f"speech.{k}": v for k, v in self.speech.state_dict().items()}
        for name, param in self.lm.named_parameters():
            if "lora_" in name or (self.config.train_norms and "norm" in name):
                state[f"lm.{name}"] = param
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything training updates."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def save_trainable(
        self, path: str | os.PathLike, extra: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16
    ) -> None:
        """Write the trainable state (in ``dtype``; and the config, as metadata) into one safetensors file.

        Half precision by default: it halves the shipped file and changes nothing audible; training
        resumes from its own fp32 state, not from this file.
        """
        from safetensors.torch import save_file

        meta = {"talker_config": json.dumps(asdict(self.config)), "hidden": str(self._hidden_size())}
        meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.trainable_state().items()}
        save_file(state, str(tmp), metadata=meta)
        tmp.replace(path)

    def load_trainable(self, path: str | os.PathLike, new_parts: bool = False) -> dict[str, Any]:
        """Read a :meth:`save_trainable` file into this talker; returns its extra metadata.

        ``new_parts``: the file may lack parts this talker has and older weights did not (the
        auxiliary phoneme head, the hidden-text embedding: a run adding them); they keep their
        initialisation.
        Raises AssetError when the file is missing, corrupt, or made for another shape.
        """
        from safetensors import safe_open

        path = Path(path)
        if self.quantized:
            raise ValueError(f"cannot load {path} into a quantized talker: load the checkpoint, then quantize")
        merged = self.merged
        if merged and self.compute_dtype != torch.float32:
            raise ValueError(f"cannot load {path} into a talker cast to {self.compute_dtype}: load, then cast")
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
        for field, prefix in NEW_PARTS if new_parts else ():
            if not saved.get(field):
                saved[field] = mine[field]
                state |= {k: v for k, v in self.trainable_state().items() if k.startswith(prefix)}
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
        if merged:
            self.lm.unmerge_adapter()  # take the old adapters out before their weights change
        speech = {k[len("speech.") :]: v for k, v in state.items() if k.startswith("speech.")}
        self.speech.load_state_dict(speech)
        params = dict(self.lm.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("lm."):
                    params[key[len("lm.") :]].copy_(value)
        if merged:
            self.lm.merge_adapter()
        self.prompt_cache = None  # computed with the old weights
        return {k: json.loads(v) for k, v in meta.items() if k not in ("talker_config", "hidden")}

    def _hidden_size(self) -> int:
        return int(self._embed_tokens.weight.shape[1])

    # --- generation (model/generate.py) --------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat history up to the start of the assistant's reply."""
        if not messages:
            return self.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def prime(self, messages: list[dict[str, str]]) -> None:
        """Compute once the KV cache of ``messages``' prompt; see :func:`model.generate.prime`."""
        from model.generate import prime

        prime(self, messages)

    def stream(self, messages: list[dict[str, str]], codec: Any = None, **kwargs: Any) -> Iterator[Any]:
        """Generate the reply to ``messages``; see :func:`model.generate.stream`."""
        from model.generate import stream

        return stream(self, messages, codec, **kwargs)

    def astream(
        self, messages: list[dict[str, str]], codec: Any = None, *, cancel: threading.Event | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """:meth:`stream` off the event loop; see :func:`model.generate.astream`."""
        from model.generate import astream

        return astream(self, messages, codec, cancel=cancel, **kwargs)


def load_talker(
    settings: Any, codec: Any, backbone: Any = None, checkpoint: str | os.PathLike | None = None
) -> tuple[Talker, bool]:
    """The talker for ``settings`` fitted to ``codec``; returns (talker, trained).

    ``checkpoint`` (or ``settings.talker.checkpoint``, or the shipped
    model/checkpoints/talker.safetensors) is loaded when it exists; otherwise the speech
    parameters stay random and ``trained`` is False. The saved config wins over the default shape.
    """
    from model.backbone import load_backbone, resolve_precision

    backbone = backbone or load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    path = checkpoint or settings.talker.checkpoint
    shipped = Path(__file__).parent / "checkpoints" / "talker.safetensors"
    if path is None and shipped.is_file():
        path = shipped
    config = saved_config(path) if path is not None else None
    config = config or default_config(codec)
    if (config.groups, config.codebook_size) != (int(codec.groups), int(codec.codebook_size)):
        raise AssetError(
            f"talker checkpoint {path} was trained for a codec of G={config.groups}, K={config.codebook_size}; "
            f"this codec has G={codec.groups}, K={codec.codebook_size}: use the codec it was trained with"
        )
    talker = Talker.from_backbone(backbone, config)
    trained = False
    if path is not None:
        talker.load_trainable(path)
        trained = True
    talker.merge_lora()
    talker.eval()
    precision = resolve_precision(settings.talker.precision, talker.device.type)
    if precision == "int8":
        talker.quantize()
    elif precision == "bf16":
        talker.cast_frozen(torch.bfloat16)
    return talker, trained


def default_config(codec: Any, **overrides: Any) -> TalkerConfig:
    """The talker shape for ``codec`` with this version's defaults."""
    from model.chunks import phoneme_vocab_size

    fields = {
        "groups": int(codec.groups),
        "codebook_size": int(codec.codebook_size),
        "phonemes": phoneme_vocab_size(),
        "phone_classes": phone_classes(codec),
        "text_null": True,
    }
    return TalkerConfig(**(fields | overrides))


def phone_classes(codec: Any) -> int:
    """Classes of the auxiliary phoneme head for ``codec``: its CTC classes (silence + phoneme symbols)."""
    return len(codec.config.phonemes) + 1


def saved_config(path: str | os.PathLike) -> TalkerConfig | None:
    """The TalkerConfig stored in a checkpoint (``None`` if the file has none or cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return TalkerConfig(**json.loads(meta["talker_config"]))
    except Exception:  # a missing or damaged file is reported by load_trainable, with advice
        return None
