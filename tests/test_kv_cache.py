"""The preallocated KV cache gives the same logits as transformers' DynamicCache, through crops and growth."""

import pytest
import torch

from model.kv_cache import PreallocatedCache


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def _steps(model, cache, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Prefill ``prompt`` after what ``cache`` holds, then ``steps`` greedy tokens; the logits of each."""
    out = model(torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    logits = [out.logits[0, -1]]
    for _ in range(steps):
        token = int(logits[-1].argmax())
        out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        logits.append(out.logits[0, -1])
    return logits


@pytest.mark.parametrize("capacity", [64, 5])  # 5: the buffer has to grow several times
def test_same_logits_as_dynamic_cache_through_a_crop(tiny_llama, capacity):
    from transformers import DynamicCache

    ours, stock = PreallocatedCache(tiny_llama.config, capacity), DynamicCache(config=tiny_llama.config)
    with torch.inference_mode():
        first = [1, 2, 3, 4, 5, 6]
        for a, b in zip(_steps(tiny_llama, ours, first, 4), _steps(tiny_llama, stock, first, 4), strict=True):
            torch.testing.assert_close(a, b)
        # a new turn keeps the prompt's first 5 positions and prefills new ones after them
        ours.crop(5 - ours.get_seq_length())
        stock.crop(5 - stock.get_seq_length())
        assert ours.get_seq_length() == stock.get_seq_length() == 5
        for a, b in zip(_steps(tiny_llama, ours, [9, 8, 7], 3), _steps(tiny_llama, stock, [9, 8, 7], 3), strict=True):
            torch.testing.assert_close(a, b)
    assert ours.get_seq_length() == stock.get_seq_length() == 11


def test_the_buffer_is_allocated_once(tiny_llama):
    cache = PreallocatedCache(tiny_llama.config, 32)
    with torch.inference_mode():
        _steps(tiny_llama, cache, [1, 2, 3], 2)
        buffers = [layer._key_buffer.data_ptr() for layer in cache.layers]
        cache.crop(-cache.get_seq_length())
        _steps(tiny_llama, cache, [4, 5, 6, 7], 10)
    assert [layer._key_buffer.data_ptr() for layer in cache.layers] == buffers


def test_crop_takes_a_negative_count(tiny_llama):
    cache = PreallocatedCache(tiny_llama.config, 8)
    with pytest.raises(ValueError, match="negative"):
        cache.layers[0].crop(3)
    with pytest.raises(ValueError, match="capacity"):
        PreallocatedCache(tiny_llama.config, 0)


def test_a_copy_continues_alike_and_apart(tiny_llama):
    cache = PreallocatedCache(tiny_llama.config, 16)
    _steps(tiny_llama, cache, [3, 1, 4, 1, 5], 0)
    twin = cache.copy()
    assert twin.get_seq_length() == cache.get_seq_length() == 5
    original = _steps(tiny_llama, cache, [9, 2], 3)  # the original goes on; the copy must not see it
    assert twin.get_seq_length() == 5
    copied = _steps(tiny_llama, twin, [9, 2], 3)
    for a, b in zip(original, copied, strict=True):
        torch.testing.assert_close(a, b)


def test_grouped_query_attention_without_the_copy_gives_the_same_outputs(tiny_llama, monkeypatch):
    """model/backbone.py lets torch broadcast the key/value heads; the outputs must not change."""
    from model.backbone import GQA_WITHOUT_COPY

    name, _ = GQA_WITHOUT_COPY
    torch.manual_seed(1)
    history, new = torch.randint(0, 64, (1, 20)), torch.randint(0, 64, (1, 6))
    span_mask = torch.full((26, 26), float("-inf")).triu(1)
    span_mask[20:, 20:] = 0.0  # the last positions see each other, as a diffused span does
    sdpa = torch.nn.functional.scaled_dot_product_attention
    broadcast_calls = []

    def spy(*args, **kwargs):
        broadcast_calls.append(kwargs.get("enable_gqa", False))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    outputs = []
    for value in ("0", "1"):
        monkeypatch.setenv(name, value)
        broadcast_calls.clear()
        cache = PreallocatedCache(tiny_llama.config, 64)
        with torch.inference_mode():
            tiny_llama(history, past_key_values=cache, use_cache=True)
            after_cache = tiny_llama(new, past_key_values=cache, use_cache=True).logits
            whole = tiny_llama(torch.cat([history, new], 1), attention_mask=span_mask[None, None]).logits
        outputs.append((after_cache, whole))
        # without the variable transformers copies wherever the call has a mask
        assert all(broadcast_calls) if value == "1" else not all(broadcast_calls)
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=0, atol=1e-6)
