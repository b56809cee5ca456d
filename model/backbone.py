"""Loading the LLM backbone (any Hugging Face causal LM; SmolLM2-135M-Instruct by default)."""

from __future__ import annotations

import functools
import os
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


# SmolLM2 has 3 key/value heads for 9 query heads. Asked for several query positions over a masked
# cache (a prefill after the history, a diffusion pass over a span), transformers' sdpa copies each
# layer's keys and values three times over unless told to let torch broadcast them; the copy grows
# with the history (about 20 CPU ms of a turn's first text at 1,000 positions, benchmarks/attention.md).
# The outputs are bit-identical. An explicit "0" in the environment keeps the copy.
GQA_WITHOUT_COPY = ("TRANSFORMERS_SDPA_FORCE_GQA", "1")


@functools.lru_cache(maxsize=4)
def load_backbone(override: str | None = None, cache: str | None = None, device: str = "cpu") -> Backbone:
    """Load (and cache in-process) the backbone named by ``override``, or the bundled SmolLM2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault(*GQA_WITHOUT_COPY)
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


def amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices on AMX tiles (then bf16 is several times fp32's speed).

    Without AMX, PyTorch's CPU bf16 matmuls are slower than fp32 ones.
    """
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` as the matmul precision it means on ``device_type``: bf16 on a CPU with AMX, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cpu" and amx_bf16() else "fp32"


def cast_frozen(module: Any, dtype: Any, keep: tuple = ()) -> int:
    """Store ``module``'s frozen floating-point weights in ``dtype``, but those in ``keep``; returns how many.

    For bf16 matmuls under autocast: weights stored in bf16 are not cast again at every call.
    """
    count = 0
    for param in module.parameters():
        if not param.requires_grad and param.is_floating_point() and not any(param is k for k in keep):
            param.data = param.data.to(dtype)
            count += param.numel()
    return count


def int8_linears(model: Any, inplace: bool = False, keep: tuple[str, ...] = ()) -> Any:
    """``model`` (a copy unless ``inplace``) with int8 dynamically quantized nn.Linear layers.

    CPU inference only: a decode step of a small LLM reads every weight once, so on CPU it is bound
    by memory bandwidth, and int8 weights are a quarter of fp32's bytes. Layers whose name contains
    one of ``keep`` stay fp32 (SmolLM2's ``down_proj`` inputs have outliers that int8 activations
    clip: measured in model/checkpoints/TALKER_CARD.md). On a GPU ``model`` is returned as it is
    (the kernel is CPU-only, and fp32 is fast enough there).
    """
    import copy
    import warnings

    import torch

    if next(model.parameters()).device.type != "cpu":
        return model
    target = model if inplace else copy.deepcopy(model)
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, module in target.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(k in name for k in keep)
    }
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which we do not depend on.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(target, spec, dtype=torch.qint8, inplace=inplace)
