"""Talker mechanics on a tiny random Llama (SmolLM2's tokenizer): mask plumbing, cache, loss, overfit,
checkpoint, cancellation and the asyncio wrapper."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading

import numpy as np
import pytest
import torch

from model.assets import AssetError
from model.sequence import Chunking, Kind, allowed, attention_mask, collate
from model.talker import AudioChunk, GenerationOptions, NoiseConfig, Talker, TalkerConfig, TextDelta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MESSAGES = [{"role": "user", "content": "Hi."}]
CHUNKING = Chunking(first_text=2, first_audio=2, text=3, audio=3)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from model.assets import llm_source

    return AutoTokenizer.from_pretrained(llm_source())


def tiny_lm(vocab: int, seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


def tiny_talker(
    tokenizer, seed: int = 0, groups: int = 2, codebook: int = 8, lora: bool = True, confident: bool = True
) -> Talker:
    config = TalkerConfig(groups=groups, codebook_size=codebook, lora_rank=8, lora_alpha=16)
    talker = Talker(tiny_lm(len(tokenizer), seed), tokenizer, config, CHUNKING, lora=lora)
    torch.manual_seed(seed + 1)
    for name, p in (
        talker.audio.named_parameters() if confident else []
    ):  # larger random weights: distinct, confident guesses
        if name != "head.bias":  # keeps the END prior
            torch.nn.init.normal_(p, std=0.5)
    return talker.eval()


class FakeCodec:
    """A stand-in with the codec interface: 1280 samples per frame, value = code of group 0.

    Like the real one, its stream decoder holds one frame back until flush (lookahead).
    """

    sample_rate = 16000
    groups = 2
    codebook_size = 8

    class Decoder:
        def __init__(self):
            self.held: list[torch.Tensor] = []

        def push(self, codes: torch.Tensor) -> np.ndarray:
            assert codes.ndim == 2 and codes.shape[0] >= 1
            self.held += list(codes)
            out, self.held = self.held[:-1], self.held[-1:]
            return FakeCodec.render(out)

        def flush(self) -> np.ndarray:
            out, self.held = self.held, []
            return FakeCodec.render(out)

    @staticmethod
    def render(rows: list[torch.Tensor]) -> np.ndarray:
        return np.concatenate([np.full(1280, float(r[0]) / 8, np.float32) for r in rows] or [np.zeros(0, np.float32)])

    def stream_decoder(self) -> Decoder:
        return FakeCodec.Decoder()


def _summary(events) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, TextDelta):
            out.append(("text", e.text, tuple(e.tokens)))
        else:
            out.append(("audio", tuple(map(tuple, e.codes.tolist())), len(e.samples), e.final))
    return out


def test_custom_4d_mask_matches_the_builtin_causal_mask(tokenizer):
    """The additive 4D mask reaches attention as given: with no spans it equals HF's own causal mask,
    and eager and SDPA attention agree on a mask with a bidirectional span."""
    talker = tiny_talker(tokenizer, lora=False)
    lm = talker.lm
    ids = torch.randint(0, 1000, (1, 12))
    kinds = torch.zeros_like(ids)
    codes = torch.zeros(1, 12, 2, dtype=torch.long)
    pos = torch.arange(12)[None]
    with torch.no_grad():
        ref = lm.model(input_ids=ids).last_hidden_state
        no_span = torch.full((1, 12), -1)
        mine = talker.hidden(talker.embed(kinds, ids, codes), attention_mask(no_span), pos)
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
        span = torch.tensor([[-1, -1, -1, 0, 0, 0, 0, -1, -1, 1, 1, -1]])
        sdpa = talker.hidden(talker.embed(kinds, ids, codes), attention_mask(span), pos)
        lm.config._attn_implementation = "eager"
        try:
            eager = talker.hidden(talker.embed(kinds, ids, codes), attention_mask(span), pos)
        finally:
            lm.config._attn_implementation = "sdpa"
        torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(sdpa[0, 3], mine[0, 3], atol=1e-4)  # the span really sees ahead


def test_lora_only_trainable_and_backbone_untouched(tokenizer):
    from model.backbone import Backbone

    lm = tiny_lm(len(tokenizer))
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    backbone = Backbone(model=lm, tokenizer=tokenizer, source="tiny")
    talker = Talker.from_backbone(backbone, TalkerConfig(groups=2, codebook_size=8), CHUNKING)
    trainable = [n for n, p in talker.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("audio.") for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert not any("lora_" in n for n, _ in lm.named_parameters())  # the shared model got no adapters
    for k, v in lm.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("forced", [True, False])
def test_generation_with_and_without_cache_agree(tokenizer, forced):
    talker = tiny_talker(tokenizer)
    text = "Hello there, how are you doing today?" if forced else None
    options = GenerationOptions(max_new_tokens=9, frames_per_token=2.0)
    with torch.inference_mode():
        cached = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=options))
        full = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=options, use_cache=False))
    assert _summary(cached) == _summary(full)
    kinds = [type(e) for e in cached]
    assert kinds.count(TextDelta) >= 3 and kinds.count(AudioChunk) >= 3
    # Audio flows while text is still being written: a chunk comes before the last text delta.
    assert kinds.index(AudioChunk) < len(kinds) - 1 - kinds[::-1].index(TextDelta)
    if forced:
        assert "".join(e.text for e in cached if isinstance(e, TextDelta)) == text
    assert cached[-1].final and not any(e.final for e in cached[:-1] if isinstance(e, AudioChunk))
    frames = sum(len(e.codes) for e in cached if isinstance(e, AudioChunk))
    samples = sum(len(e.samples) for e in cached if isinstance(e, AudioChunk))
    assert samples == frames * 1280


def test_text_forced_spans_follow_the_chunking(tokenizer):
    talker = tiny_talker(tokenizer)
    text = "One two three four five six seven eight nine ten."
    n_tokens = len(tokenizer(text)["input_ids"])
    options = GenerationOptions(frames_per_token=3.0, max_last_span=1000)
    with torch.inference_mode():
        events = list(talker.stream(MESSAGES, None, text=text, options=options))
    deltas = [len(e.tokens) for e in events if isinstance(e, TextDelta)]
    spans = [len(e.codes) for e in events if isinstance(e, AudioChunk)]
    assert deltas == CHUNKING.text_sizes(n_tokens)
    assert spans[:2] == [CHUNKING.first_audio, CHUNKING.audio]
    # Random audio weights never end the audio on their own: the bound stops the last span.
    assert sum(spans) <= 3 * n_tokens and spans[-1] == 0


def test_cancel_stops_within_one_step(tokenizer):
    talker = tiny_talker(tokenizer)
    cancel = threading.Event()
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            cancel.set()  # set while the 3rd pass runs: no 4th pass may start

    handle = talker._decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            events = list(talker.stream(MESSAGES, None, text="A long sentence to say here.", cancel=cancel))
    finally:
        handle.remove()
    assert len(calls) == 3
    assert not any(isinstance(e, AudioChunk) and e.final for e in events)


async def test_astream_runs_off_the_loop_and_matches_stream(tokenizer):
    talker = tiny_talker(tokenizer)
    text = "Streaming through a queue keeps the loop free."
    with torch.inference_mode():
        expected = _summary(talker.stream(MESSAGES, FakeCodec(), text=text))
    ticks = 0
    stop = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    got = [e async for e in talker.astream(MESSAGES, FakeCodec(), text=text)]
    stop.set()
    await task
    assert _summary(got) == expected
    assert ticks > 3  # the loop kept running while the worker generated


async def test_astream_early_exit_cancels_the_worker(tokenizer):
    talker = tiny_talker(tokenizer)
    cancel = threading.Event()
    options = GenerationOptions(max_new_tokens=200)
    before = threading.active_count()
    async with contextlib.aclosing(talker.astream(MESSAGES, None, options=options, cancel=cancel)) as events:
        async for _event in events:
            break
    assert cancel.is_set()
    for _ in range(300):  # the worker notices before its next pass and ends
        if threading.active_count() < before + 1:
            break
        await asyncio.sleep(0.01)
    assert threading.active_count() <= before


async def test_astream_raises_generation_errors(tokenizer):
    talker = tiny_talker(tokenizer)
    with pytest.raises(ValueError, match="empty"):
        async for _ in talker.astream(MESSAGES, None, text=""):
            pass


def _toy_data(tokenizer, groups: int, codebook: int):
    """Replies, each voiced by fixed random codes (about 1.5 frames per token)."""
    gen = torch.Generator().manual_seed(7)
    texts = ["Good morning to you.", "The cat sat on the mat.", "Turn left at the bank.", "It is nine o'clock."]
    data = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        codes = torch.randint(0, codebook, (int(len(ids) * 1.5), groups), generator=gen)
        data.append((text, ids, codes))
    return data


@pytest.mark.slow
def test_loss_falls_and_tiny_model_overfits_text_to_codes(tokenizer):
    torch.manual_seed(0)
    talker = tiny_talker(tokenizer, groups=2, codebook=8, confident=False)  # the usual small init
    talker.train()
    prompt = talker.prompt_ids(MESSAGES)
    data = _toy_data(tokenizer, 2, 8)[:2]  # two replies: enough to need the text, quick to learn
    noise = NoiseConfig(banom=0.0, ppm=0.3, sst=0.0, max_end_frames=3)
    rng = random.Random(0)
    params = [p for p in talker.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        batch = collate([talker.training_sequence(prompt, ids, codes, noise, rng) for _, ids, codes in data])
        out = talker.loss(batch, noise, generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the 1/t weight makes rare huge steps otherwise
        opt.step()
        losses.append(float(out["audio"]))
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])
    talker.eval()
    options = GenerationOptions(steps=4, first_steps=2, frames_per_token=2.5, max_last_span=100)
    with torch.inference_mode():
        for text, _ids, codes in data:
            events = list(talker.stream(MESSAGES, None, text=text, options=options))
            got = torch.cat([e.codes for e in events if isinstance(e, AudioChunk)])
            assert torch.equal(got, codes), text


def test_checkpoint_roundtrip_and_errors(tokenizer, tmp_path):
    a = tiny_talker(tokenizer, seed=0)
    with torch.no_grad():
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.normal_()  # non-zero adapters, so the roundtrip is meaningful
    path = tmp_path / "talker.safetensors"
    a.save_trainable(path, extra={"steps": 12})
    b = tiny_talker(tokenizer, seed=0)  # same backbone, other adapters and audio weights
    with torch.no_grad():
        for p in b.parameters():
            if p.requires_grad:
                p.normal_()
    assert b.load_trainable(path) == {"steps": 12}
    for key, value in a.trainable_state().items():
        assert torch.equal(value, b.trainable_state()[key]), key
    backbone_bytes = sum(p.numel() * 4 for n, p in a.lm.named_parameters() if "lora_" not in n)
    assert path.stat().st_size < backbone_bytes / 10  # only adapters and audio parameters
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        kinds, codes = torch.zeros_like(ids), torch.zeros(1, 3, 2, dtype=torch.long)
        mask = attention_mask(torch.full((1, 3), -1))
        pos = torch.arange(3)[None]
        ref = a.hidden(a.embed(kinds, ids, codes), mask, pos)
        torch.testing.assert_close(ref, b.hidden(b.embed(kinds, ids, codes), mask, pos))
        b.merge_lora()  # inference folds adapters into the weights; a reload must swap them cleanly
        torch.testing.assert_close(ref, b.hidden(b.embed(kinds, ids, codes), mask, pos), rtol=1e-4, atol=1e-4)
        b.load_trainable(path)
        torch.testing.assert_close(ref, b.hidden(b.embed(kinds, ids, codes), mask, pos), rtol=1e-4, atol=1e-4)

    with pytest.raises(AssetError, match="does not exist"):
        b.load_trainable(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AssetError, match="corrupt"):
        b.load_trainable(corrupt)
    other = tiny_talker(tokenizer, codebook=16)
    with pytest.raises(AssetError, match="does not fit"):
        other.load_trainable(path)


def test_bad_input_is_refused(tokenizer):
    talker = tiny_talker(tokenizer)
    with pytest.raises(ValueError, match="empty"):
        list(talker.stream(MESSAGES, None, text=""))
    with pytest.raises(ValueError, match=">= 1"):
        Chunking(0, 1, 1, 1)


def test_incremental_mask_matches_the_full_rule():
    """The (query rows x all keys) mask used with the cache is a slice of the full mask."""
    span = torch.tensor([-1, -1, 0, 0, 0, -1, -1, 1, 1, 1, 1])
    full = attention_mask(span)[0, 0]
    pos = torch.arange(len(span))
    for start in (0, 3, 7, 9):
        part = allowed(pos[start:], pos, span[start:], span)
        assert torch.equal(part, full[start:])
    assert Kind.FRAME == 2


@pytest.mark.parametrize("forced", [True, False])
def test_primed_prompt_cache_changes_nothing(tokenizer, forced):
    talker = tiny_talker(tokenizer)
    text = "Priming only moves the prompt's cost." if forced else None
    options = GenerationOptions(max_new_tokens=7, frames_per_token=2.0)
    longer = MESSAGES + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again."}]
    with torch.inference_mode():
        plain = [_summary(talker.stream(m, None, text=text, options=options)) for m in (MESSAGES, longer)]
        talker.prime(MESSAGES)  # the whole prompt of MESSAGES, a prefix of the longer history
        primed = _summary(talker.stream(MESSAGES, None, text=text, options=options))
        primed_longer = _summary(talker.stream(longer, None, text=text, options=options))
    assert primed == plain[0] and primed_longer == plain[1]
    assert talker._primed is not None and len(talker._primed.ids) > 5
