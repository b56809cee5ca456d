"""Loading the LLM backbone (any Hugging Face causal LM; SmolLM2-135M-Instruct by default)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from model.assets import AssetError, llm_source


@dataclass(frozen=True)
class Backbone:
    """A causal LM and its tokenizer, loaded once per process and shared (turn detector, talker)."""

    model: Any  # transformers PreTrainedModel, in eval mode, frozen
    tokenizer: Any  # its tokenizer, with a chat template
    source: str  # the directory or hub id it was loaded from

    @property
    def device(self) -> Any:
        """The torch device the weights live on."""
        return next(self.model.parameters()).device


def resolve_device(name: str) -> str:
    """``auto`` picks cuda when available; anything else is passed to torch as is."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@functools.lru_cache(maxsize=4)
def load_backbone(override: str | None = None, cache: str | None = None, device: str = "cpu") -> Backbone:
    """Load (and cache in-process) the backbone named by ``override``, or the bundled SmolLM2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = llm_source(override, cache)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except OSError as exc:
        raise AssetError(
            f"cannot load the LLM backbone from {source}: {exc}. If this is the converted cache, delete it "
            "and run again; if it is a hub id, this machine may be offline (use a local path)."
        ) from exc
    model.to(resolve_device(device))
    model.eval()
    model.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, source=source)
