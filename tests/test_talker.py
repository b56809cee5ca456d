"""Talker mechanics on a tiny random Llama (SmolLM2's tokenizer): mask plumbing, cache, train == infer
layout, packing, loss, overfit, checkpoint, cancellation and the asyncio wrapper."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading

import numpy as np
import pytest
import torch

from model.assets import AssetError
from model.chunks import chunk_tokens, phonemizer
from model.generate import AudioChunk, GenerationOptions, TextDelta
from model.sequence import Chunk, Kind, allowed, build_reply, pack
from model.talker import NoiseConfig, Talker, TalkerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MESSAGES = [{"role": "user", "content": "Hi."}]
MAX_SPAN = 6  # untrained duration heads pick spans of at most this many frames


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


def tiny_config(groups: int = 2, codebook: int = 8) -> TalkerConfig:
    from model.chunks import phoneme_vocab_size

    return TalkerConfig(
        groups=groups, codebook_size=codebook, phonemes=phoneme_vocab_size(), max_span=MAX_SPAN, lora_rank=8
    )


def tiny_talker(
    tokenizer, seed: int = 0, codebook: int = 8, lora: bool = True, confident: bool = True, text_null: bool = False
) -> Talker:
    config = dataclasses.replace(tiny_config(codebook=codebook), text_null=text_null)
    talker = Talker(tiny_lm(len(tokenizer), seed), tokenizer, config, lora=lora)
    torch.manual_seed(seed + 1)
    for _, p in talker.speech.named_parameters() if confident else []:
        torch.nn.init.normal_(p, std=0.5)  # larger random weights: distinct, confident guesses
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

        def push(self, codes: torch.Tensor, ahead: bool = False) -> np.ndarray:
            assert codes.ndim == 2 and codes.shape[0] >= 1
            self.ahead_pushes = getattr(self, "ahead_pushes", 0) + ahead
            self.held += list(codes)
            out, self.held = (self.held, []) if ahead else (self.held[:-1], self.held[-1:])
            return FakeCodec.render(out)

        def flush(self) -> np.ndarray:
            out, self.held = self.held, []
            return FakeCodec.render(out)

    @staticmethod
    def render(rows: list[torch.Tensor]) -> np.ndarray:
        return np.concatenate([np.full(1280, float(r[0]) / 8, np.float32) for r in rows] or [np.zeros(0, np.float32)])

    def stream_decoder(self) -> Decoder:
        return FakeCodec.Decoder()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(FakeCodec.render(list(codes[0])))[None]


def _summary(events) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, TextDelta):
            out.append(("text", e.text, tuple(e.tokens)))
        else:
            out.append(("audio", tuple(map(tuple, e.codes.tolist())), len(e.samples), e.final))
    return out


def _rows(positions, device="cpu"):
    return {k: v[None] for k, v in positions.tensors(device).items()}


def test_custom_4d_mask_matches_the_builtin_causal_mask(tokenizer):
    """The additive 4D mask reaches attention as given: with no spans it equals HF's own causal mask,
    and eager and SDPA attention agree on a mask with a bidirectional span."""
    talker = tiny_talker(tokenizer, lora=False)
    ids = list(range(5, 17))
    chunks = [Chunk(ids[:3], [3, 4], 2), Chunk(ids[3:], [5], 3)]
    reply, _ = build_reply([], chunks, torch.zeros(5, 2, dtype=torch.long), 1)
    text_only, _ = build_reply([], [Chunk(ids, [], 1)], torch.zeros(1, 2, dtype=torch.long), 1)
    with torch.no_grad():
        n = 12  # the first 12 positions of text_only are plain text
        pos = torch.arange(n)[None]
        ref = talker.lm.model(input_ids=torch.tensor([ids])).last_hidden_state
        no_span = allowed(pos[0], pos[0], torch.full((n,), -1), torch.full((n,), -1))[None, None]
        rows = {k: v[:, :n] for k, v in _rows(text_only).items()}
        mine = talker.hidden(talker.embed(rows), no_span, pos)
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
        packed = pack([reply], len(reply))
        rows = packed.tensors
        sdpa = talker.hidden(talker.embed(rows), packed.mask, packed.positions)
        talker.lm.config._attn_implementation = "eager"
        try:
            eager = talker.hidden(talker.embed(rows), packed.mask, packed.positions)
        finally:
            talker.lm.config._attn_implementation = "sdpa"
        torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)
        causal = torch.tril(torch.ones(len(reply), len(reply), dtype=torch.bool))[None, None]
        plain = talker.hidden(talker.embed(rows), causal, packed.positions)
        first_frame = int((rows["kinds"][0] == int(Kind.FRAME)).nonzero()[0])
        assert not torch.allclose(sdpa[0, first_frame], plain[0, first_frame], atol=1e-4)  # the span sees ahead


def test_only_adapters_norms_and_speech_train_and_the_backbone_stays(tokenizer):
    from model.backbone import Backbone

    lm = tiny_lm(len(tokenizer)).requires_grad_(False)  # as load_backbone hands it out
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    talker = Talker.from_backbone(Backbone(model=lm, tokenizer=tokenizer, source="tiny"), tiny_config())
    trainable = [n for n, _ in talker.trainable_parameters()]
    assert all("lora_" in n or "norm" in n or n.startswith("speech.") for n in trainable)
    assert any("lora_" in n for n in trainable) and any("norm" in n for n in trainable)
    assert not any("lora_" in n for n, _ in lm.named_parameters())  # the shared model got no adapters
    assert not any(p.requires_grad for p in lm.parameters())
    for k, v in lm.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("forced", [True, False])
def test_generation_with_and_without_cache_agree(tokenizer, forced):
    talker = tiny_talker(tokenizer)
    text = "Hello there, how are you doing today?" if forced else None
    options = GenerationOptions(max_new_tokens=12, temperature=1.0, seed=3)  # greedy random weights repeat "\n"
    with torch.inference_mode():
        cached = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=options))
        full = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=options, use_cache=False))
    assert _summary(cached) == _summary(full)
    kinds = [type(e) for e in cached]
    assert kinds.count(TextDelta) >= 3 and kinds.count(AudioChunk) >= 3  # one span per chunk
    # Audio flows while text is still being written: a chunk comes before the last text delta.
    assert kinds.index(AudioChunk) < len(kinds) - 1 - kinds[::-1].index(TextDelta)
    if forced:
        assert "".join(e.text for e in cached if isinstance(e, TextDelta)) == text
    assert cached[-1].final and not any(e.final for e in cached[:-1] if isinstance(e, AudioChunk))
    frames = sum(len(e.codes) for e in cached if isinstance(e, AudioChunk))
    samples = sum(len(e.samples) for e in cached if isinstance(e, AudioChunk))
    assert samples == frames * 1280


def test_the_first_span_is_given_out_whole_and_later_ones_behind_the_look_ahead(tokenizer):
    talker = tiny_talker(tokenizer)
    codec = FakeCodec()
    decoders = []
    codec.stream_decoder = lambda: decoders.append(FakeCodec.Decoder()) or decoders[-1]
    with torch.inference_mode():
        events = list(talker.stream(MESSAGES, codec, text="Hello there, how are you doing today?"))
    spans = [e for e in events if isinstance(e, AudioChunk) and len(e.codes)]
    assert len(spans) >= 3 and decoders[0].ahead_pushes == 1
    assert len(spans[0].samples) == len(spans[0].codes) * 1280  # no frame held for the look-ahead
    # from the second span on, the look-ahead holds one frame back again
    assert len(spans[1].samples) == (len(spans[1].codes) - 1) * 1280
    assert [len(e.samples) for e in spans[2:]] == [len(e.codes) * 1280 for e in spans[2:]]


@pytest.mark.parametrize("forced", [True, False])
def test_inference_builds_the_training_layout(tokenizer, forced):
    """The positions generation lays down are build_reply's for the same reply, text and spans."""
    talker = tiny_talker(tokenizer)
    text = "One two, three four five six seven." if forced else None
    stats: dict = {}
    with torch.inference_mode():
        options = GenerationOptions(max_new_tokens=10, temperature=1.0, seed=5)
        events = list(talker.stream(MESSAGES, None, text=text, options=options, stats=stats))
    tokens = [t for e in events if isinstance(e, TextDelta) for t in e.tokens]
    spans = [e.codes for e in events if isinstance(e, AudioChunk) and len(e.codes)]
    pieces = chunk_tokens(tokenizer, tokenizer.decode(tokens))
    assert [t for _, ids in pieces for t in ids] == tokens
    chunks = [
        Chunk(ids, phonemizer().ids(tokenizer.decode(ids).strip()), len(codes))
        for (_, ids), codes in zip(pieces, spans, strict=True)
    ]
    expected, _ = build_reply(talker.prompt_ids(MESSAGES), chunks, torch.cat(spans), talker.end_token)
    got = stats["positions"]
    for field in ("kinds", "tokens", "codes", "span", "slot"):
        assert getattr(got, field) == getattr(expected, field), field


def test_packing_changes_nothing(tokenizer):
    """A sequence's hidden states are the same alone and packed beside others."""
    talker = tiny_talker(tokenizer)
    chunks = [Chunk([5, 6], [3, 4], 2), Chunk([7], [5], 3)]
    a, _ = build_reply([1, 2], chunks, torch.randint(0, 8, (5, 2)), 9)
    b, _ = build_reply([3], chunks[:1], torch.randint(0, 8, (2, 2)), 9)
    with torch.no_grad():
        alone = pack([a], 64)
        together = pack([b, a], 64)
        h_alone = talker.hidden(talker.embed(alone.tensors), alone.mask, alone.positions)[0, : len(a)]
        h_both = talker.hidden(talker.embed(together.tensors), together.mask, together.positions)[0, : len(a)]
    torch.testing.assert_close(h_alone, h_both, rtol=1e-5, atol=1e-5)


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


@pytest.mark.slow
def test_loss_falls_and_tiny_model_overfits_text_to_codes(tokenizer):
    """Two replies voiced by fixed random codes: training learns their durations and codes, and
    text-forced generation then reproduces both exactly."""
    torch.manual_seed(0)
    talker = tiny_talker(tokenizer, confident=False)
    talker.train()
    gen = torch.Generator().manual_seed(7)
    data = []
    for text in ("Good morning to you all.", "Turn left at the old bank."):
        pieces = chunk_tokens(tokenizer, text)
        lengths = torch.randint(2, MAX_SPAN + 1, (len(pieces),), generator=gen).tolist()
        chunks = [Chunk(ids, phonemizer().ids(words), k) for (words, ids), k in zip(pieces, lengths, strict=True)]
        codes = torch.randint(0, 8, (sum(lengths), 2), generator=gen)
        positions, _ = build_reply(talker.prompt_ids([]), chunks, codes, talker.end_token)
        data.append((text, codes, positions))
    params = [p for _, p in talker.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    noise = NoiseConfig()
    losses = []
    packed = pack([d[2] for d in data], 256)
    for _ in range(400):
        out = talker.loss(packed, noise, generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(out["audio"]) + float(out["dur"]))
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])
    talker.eval()
    options = GenerationOptions(steps=4, first_steps=4)
    with torch.inference_mode():
        for text, codes, _ in data:
            events = list(talker.stream([], None, text=text, options=options))
            got = torch.cat([e.codes for e in events if isinstance(e, AudioChunk)])
            assert torch.equal(got, codes), text


def test_checkpoint_roundtrip_and_errors(tokenizer, tmp_path):
    a = tiny_talker(tokenizer, seed=0)
    with torch.no_grad():
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.normal_()  # non-zero adapters, so the roundtrip is meaningful
    path = tmp_path / "talker.safetensors"
    with torch.no_grad():
        for _, p in a.trainable_parameters():
            p.copy_(p.half().float())  # exactly representable, so the roundtrip compares equal
    a.save_trainable(path, extra={"steps": 12})
    b = tiny_talker(tokenizer, seed=0)  # same backbone, other adapters and speech weights
    with torch.no_grad():
        for _, p in b.trainable_parameters():
            p.normal_()
    assert b.load_trainable(path) == {"steps": 12}
    for key, value in a.trainable_state().items():
        assert torch.equal(value.half().float(), b.trainable_state()[key]), key  # saved in half precision
    backbone_bytes = sum(p.numel() * 4 for n, p in a.lm.named_parameters() if "lora_" not in n)
    assert path.stat().st_size < backbone_bytes / 3  # adapters, norms and speech parameters only
    reply, _ = build_reply([1, 2], [Chunk([3, 4], [5], 2)], torch.zeros(2, 2, dtype=torch.long), 9)
    close = {"rtol": 1e-4, "atol": 1e-4}
    packed = pack([reply], 16)
    rows, mask, pos = packed.tensors, packed.mask, packed.positions
    with torch.no_grad():
        ref = a.hidden(a.embed(rows), mask, pos)
        torch.testing.assert_close(ref, b.hidden(b.embed(rows), mask, pos))
        b.merge_lora()  # inference folds adapters into the weights; a reload must swap them cleanly
        torch.testing.assert_close(ref, b.hidden(b.embed(rows), mask, pos), rtol=1e-4, atol=1e-4)
        c = tiny_talker(tokenizer, seed=0)
        torch.manual_seed(99)  # tiny_talker reseeds: without this, c would draw a's adapters again
        for n, p in c.trainable_parameters():
            p.copy_((torch.randn_like(p) if "lora_B" in n else p).half().float())  # other adapters than a's
        other_path = tmp_path / "other.safetensors"
        c.save_trainable(other_path)
        b.load_trainable(other_path)  # into merged weights: the old adapters come out first
        torch.testing.assert_close(c.hidden(c.embed(rows), mask, pos), b.hidden(b.embed(rows), mask, pos), **close)
        b.load_trainable(path)
        torch.testing.assert_close(ref, b.hidden(b.embed(rows), mask, pos), **close)

    with pytest.raises(AssetError, match="does not exist"):
        b.load_trainable(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AssetError, match="corrupt"):
        b.load_trainable(corrupt)
    other = tiny_talker(tokenizer, codebook=16)
    with pytest.raises(AssetError, match="does not fit"):
        other.load_trainable(path)


def test_phoneme_head_learns_frame_labels_and_joins_older_weights(tokenizer, tmp_path):
    """The auxiliary head trains on the noised frames' labels; weights saved without it load into
    a talker that has it only when asked (a run adding the head), and its loss is in the total."""
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(), phone_classes=5)
    talker = Talker(tiny_lm(len(tokenizer)), tokenizer, config).train()
    pieces = chunk_tokens(tokenizer, "Good morning to you all.")
    chunks = [Chunk(ids, phonemizer().ids(words), 3) for words, ids in pieces]
    frames = 3 * len(chunks)
    codes = torch.randint(0, 8, (frames, 2))
    phones = torch.arange(frames) % 5
    positions, _ = build_reply(talker.prompt_ids([]), chunks, codes, talker.end_token, phones)
    packed = pack([positions])
    params = [p for _, p in talker.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    every = (packed.tensors["kinds"] == int(Kind.FRAME)).unsqueeze(-1).expand_as(packed.tensors["codes"])
    first = talker.loss(packed, NoiseConfig(), masked=every)
    without = talker.loss(packed, NoiseConfig(phone_weight=0.0), masked=every)
    torch.testing.assert_close(first["loss"] - without["loss"], 0.2 * first["phone"])
    for _ in range(100):  # every frame masked: its phoneme must come from the text, slot and span length
        out = talker.loss(packed, NoiseConfig(), masked=every)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    out = talker.loss(packed, NoiseConfig(), masked=every)
    assert float(out["phone"]) < 0.3 * float(first["phone"]) and float(out["phone_acc"]) > 0.9

    older = tiny_talker(tokenizer)  # no phoneme head
    path = tmp_path / "older.safetensors"
    older.save_trainable(path)
    fresh = Talker(tiny_lm(len(tokenizer)), tokenizer, config)
    with pytest.raises(AssetError, match="does not fit"):
        fresh.load_trainable(path)
    head = fresh.speech.phone_head.weight.detach().clone()
    fresh.load_trainable(path, new_parts=True)
    assert torch.equal(fresh.speech.phone_head.weight, head)
    assert torch.equal(fresh.speech.head.weight, older.speech.head.weight.half().float())


def test_bad_input_is_refused(tokenizer):
    talker = tiny_talker(tokenizer)
    with pytest.raises(ValueError, match="empty"):
        list(talker.stream(MESSAGES, None, text=""))
    with pytest.raises(ValueError, match="empty"):
        list(talker.stream(MESSAGES, None, text=" \n "))


def test_incremental_mask_matches_the_full_rule():
    """The (query rows x all keys) mask used with the cache is a slice of the full mask."""
    span = torch.tensor([-1, -1, 0, 0, 0, -1, -1, 1, 1, 1, 1])
    pos = torch.arange(len(span))
    full = allowed(pos, pos, span, span)
    for start in (0, 3, 7, 9):
        assert torch.equal(allowed(pos[start:], pos, span[start:], span), full[start:])


@pytest.mark.parametrize("forced", [True, False])
def test_prompt_cache_changes_nothing(tokenizer, forced):
    """Streams that reuse the last prompt's cache give what fresh, uncached ones give."""
    text = "Reusing only moves the prompt's cost." if forced else None
    options = GenerationOptions(max_new_tokens=7, temperature=1.0, seed=1)
    longer = MESSAGES + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again."}]
    other = [{"role": "user", "content": "Something else entirely."}]
    turns = [MESSAGES, longer, longer, MESSAGES, other]
    with torch.inference_mode():
        fresh = [
            _summary(tiny_talker(tokenizer).stream(m, None, text=text, options=options, use_cache=False)) for m in turns
        ]
        talker = tiny_talker(tokenizer)
        talker.prime(MESSAGES)
        assert talker.prompt_cache.ids == talker.prompt_ids(MESSAGES)
        reused, prefilled = [], []
        for m in turns:
            stats: dict = {}
            reused.append(_summary(talker.stream(m, None, text=text, options=options, stats=stats)))
            prefilled.append(stats["prefilled"])
            assert talker.prompt_cache.ids == talker.prompt_ids(m)  # cut back to the prompt, kept
    assert reused == fresh
    new_tokens = len(talker.prompt_ids(longer)) - len(talker.prompt_ids(MESSAGES))
    # primed; only the new messages; the very same prompt; a prefix of the cached one (its last
    # token runs again); nothing in common past the template's first tokens
    assert prefilled[:4] == [0, new_tokens, 0, 1]
    assert 0 < prefilled[4] < len(talker.prompt_ids(other))


def test_prompt_cache_survives_a_cancelled_stream(tokenizer):
    longer = MESSAGES + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again."}]
    options = GenerationOptions(max_new_tokens=7, temperature=1.0, seed=1)
    with torch.inference_mode():
        expected = _summary(tiny_talker(tokenizer).stream(longer, None, options=options))
        talker = tiny_talker(tokenizer)
        cancel = threading.Event()
        for event in talker.stream(MESSAGES, None, options=options, cancel=cancel):
            if isinstance(event, AudioChunk):
                cancel.set()  # stops before the next forward pass, mid-reply
        assert talker.prompt_cache.ids == talker.prompt_ids(MESSAGES)
        stream = talker.stream(MESSAGES, None, options=options)
        next(stream)
        stream.close()  # the consumer walks away mid-reply
        assert talker.prompt_cache.ids == talker.prompt_ids(MESSAGES)
        stats: dict = {}
        again = _summary(talker.stream(longer, None, options=options, stats=stats))
    assert again == expected
    assert stats["prefilled"] == len(talker.prompt_ids(longer)) - len(talker.prompt_ids(MESSAGES))


def test_quantized_talker_is_close_to_fp32_and_refuses_new_weights(tokenizer, tmp_path):
    chunks = [Chunk([5, 6], [3, 4], 2), Chunk([7], [5], 3)]
    packed = pack([build_reply([1, 2], chunks, torch.randint(0, 8, (5, 2)), 9)[0]], 64)
    plain, quantized = tiny_talker(tokenizer), tiny_talker(tokenizer)
    quantized.quantize()
    assert quantized.quantized and "quantized" in type(quantized.speech.head).__module__
    with torch.inference_mode():
        h, hq = (t.hidden(t.embed(packed.tensors), packed.mask, packed.positions) for t in (plain, quantized))
        cosine = torch.nn.functional.cosine_similarity(h, hq, dim=-1)
        assert float(cosine.min()) > 0.99
        events = list(quantized.stream(MESSAGES, None, text="Still speaks.", options=GenerationOptions(seed=0)))
    assert events[-1].final
    with pytest.raises(ValueError, match="load the checkpoint, then quantize"):
        quantized.load_trainable(tmp_path / "any.safetensors")


def test_bf16_frozen_weights_train_like_fp32(tokenizer):
    """Frozen weights in bf16 under autocast: trainable weights stay fp32, loss and gradient match fp32's."""
    chunks = [Chunk([5, 6], [3, 4], 3), Chunk([7], [5], 4), Chunk([8, 9], [6], 2)]
    packed = pack([build_reply([1, 2], chunks, torch.randint(0, 8, (9, 2)), 9)[0]], 64)
    plain, half = tiny_talker(tokenizer).train(), tiny_talker(tokenizer).train()
    assert half.cast_frozen(torch.bfloat16) > 0
    assert all(p.dtype == torch.float32 for _, p in half.trainable_parameters())
    assert half._embed_tokens.weight.dtype == torch.float32  # tied to the LM head, which scores text in fp32
    grads, losses = [], []
    for talker, enabled in ((plain, False), (half, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = talker.loss(packed, NoiseConfig(), torch.Generator().manual_seed(3))
        out["loss"].backward()
        losses.append(float(out["loss"].detach()))
        grads.append(torch.cat([p.grad.flatten() for _, p in talker.trainable_parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) > 0.99


def test_training_precision_is_chosen_by_hardware():
    from model.backbone import amx_bf16
    from training.train_talker import matmul_dtype

    assert matmul_dtype("fp32") == torch.float32 and matmul_dtype("bf16") == torch.bfloat16
    amx = amx_bf16() and not torch.cuda.is_available()
    assert matmul_dtype("auto") == (torch.bfloat16 if amx else torch.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        matmul_dtype("fp8")


def test_bf16_talker_is_close_to_fp32_and_refuses_new_weights(tokenizer, tmp_path):
    chunks = [Chunk([5, 6], [3, 4], 2), Chunk([7], [5], 3)]
    packed = pack([build_reply([1, 2], chunks, torch.randint(0, 8, (5, 2)), 9)[0]], 64)
    plain, half = tiny_talker(tokenizer), tiny_talker(tokenizer)
    path = tmp_path / "talker.safetensors"
    plain.save_trainable(path)
    for talker in (plain, half):
        talker.merge_lora()
        assert talker.merged
    half.cast_frozen(torch.bfloat16)
    with torch.inference_mode():
        h, hb = (t.hidden(t.embed(packed.tensors), packed.mask, packed.positions) for t in (plain, half))
        assert hb.dtype == torch.float32  # the residual stream stays fp32; only the matmuls run in bf16
        assert float(torch.nn.functional.cosine_similarity(h, hb, dim=-1).min()) > 0.99
        events = list(half.stream(MESSAGES, None, text="Still speaks.", options=GenerationOptions(seed=0)))
    assert events[-1].final
    with pytest.raises(ValueError, match="load, then cast"):
        half.load_trainable(path)


def test_text_distillation_reads_the_teacher_in_the_batch_order(tokenizer):
    """The teacher's logits line up with the interleaved text targets however pack() orders the clips."""
    from model.sequence import IGNORE
    from training.train_talker import Example, teacher_logits

    prompt, end = [1, 2], 9
    replies = [[[5, 6], [7]], [[11], [12, 13], [14]], [[21]]]
    examples = []
    for n, tokens in enumerate(replies):
        chunks = [Chunk(t, [3], 2) for t in tokens]
        positions, _ = build_reply(prompt, chunks, torch.randint(0, 8, (2 * len(chunks), 2)), end)
        examples.append(Example(n, "", positions, prompt + [t for c in tokens for t in c] + [end]))
    packed = pack([e.positions for e in examples], 32)
    assert sorted(packed.order) == [0, 1, 2] and packed.order != [0, 1, 2]  # longest first
    targets = packed.tensors["text_target"][packed.tensors["text_target"] != IGNORE]
    ordered = [examples[i] for i in packed.order]
    assert targets.tolist() == [t for e in ordered for t in e.plain[len(prompt) :]]
    teacher = tiny_lm(len(tokenizer), seed=5)
    soft = teacher_logits(teacher, ordered, len(prompt))
    assert soft.shape == (len(targets), len(tokenizer))
    alone = teacher(input_ids=torch.tensor([ordered[1].plain])).logits[0, len(prompt) - 1 : -1]
    start = len(ordered[0].plain) - len(prompt)
    torch.testing.assert_close(soft[start : start + len(alone)], alone, rtol=1e-4, atol=1e-4)  # padding changes nothing

    talker = tiny_talker(tokenizer)
    sure = torch.full_like(soft, -30.0).scatter(1, targets[:, None], 30.0)  # a teacher certain of the true tokens
    gen = torch.Generator().manual_seed(0)
    hard = talker.loss(packed, NoiseConfig(), gen)
    distilled = talker.loss(packed, NoiseConfig(), torch.Generator().manual_seed(0), teacher=sure)
    assert float(distilled["loss"].detach()) == pytest.approx(float(hard["loss"].detach()), rel=1e-4)
    assert float(distilled["text_kl"]) == pytest.approx(float(hard["text"]), rel=1e-4)  # KL to a one-hot = CE
    reported = talker.loss(packed, NoiseConfig(), torch.Generator().manual_seed(0), teacher=soft)["text"]
    assert float(reported) == pytest.approx(float(hard["text"]))  # "text" stays the CE of the true tokens
    with pytest.raises(ValueError, match="must match the text targets"):
        talker.loss(packed, NoiseConfig(), teacher=soft[1:])


def test_listening_test_scores_both_modes_and_leaves_the_talker_as_found(tokenizer):
    from training.align import AlignedItem
    from training.eval_tts import SpeechCheck

    talker = tiny_talker(tokenizer).train()
    text = "Good morning to you."
    spans = len(chunk_tokens(tokenizer, text))
    codes = np.random.default_rng(0).integers(0, 8, (3 * spans, 2)).astype(np.uint16)
    right = AlignedItem(0, text, [{"frames": 3}] * spans, codes)
    wrong = AlignedItem(1, text, [{"frames": 3 * spans}], codes)  # one span for several chunks: a failed alignment
    true_length = 3 * spans * 1280

    def transcriber(samples: np.ndarray) -> str:  # hears the words only in audio of the true length
        return text if len(samples) == true_length else "something else entirely"

    check = SpeechCheck(FakeCodec(), [right, wrong], transcriber)
    heard = check(talker)
    assert heard["wer_codec"] == 0 and heard["speech_clips"] == 2 and heard["speech_text"] == text
    assert heard["wer_single_span"] == 50  # the true spans in the first clip, nothing for the unaligned one
    assert heard["heard_single_span"] == text and 0 <= heard["wer_say"] <= 100
    assert talker.training and talker.prompt_cache is None  # as found; no cache of these weights kept
    assert "wer_single_span_guided" not in heard  # not trained for guidance
    guided = check(tiny_talker(tokenizer, text_null=True))
    assert guided["wer_single_span_guided"] == 50 and guided["heard_single_span_guided"] == text


def test_guidance_runs_a_hidden_text_branch_alike_with_and_without_cache(tokenizer):
    talker = tiny_talker(tokenizer, text_null=True)
    text = "Hello there, how are you doing today?"
    plain = GenerationOptions(seed=3)
    guided = dataclasses.replace(plain, guidance=3.0)
    with torch.inference_mode():
        unguided = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=plain))
        cached = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=guided))
        full = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=guided, use_cache=False))
        again = list(talker.stream(MESSAGES, FakeCodec(), text=text, options=guided))
    assert _summary(cached) == _summary(full) == _summary(again)  # the prompt cache is not disturbed
    codes = [e.codes for e in cached if isinstance(e, AudioChunk) and len(e.codes)]
    plain_codes = [e.codes for e in unguided if isinstance(e, AudioChunk) and len(e.codes)]
    assert [len(c) for c in codes] == [len(c) for c in plain_codes]  # durations come from the reply itself
    assert not all(torch.equal(a, b) for a, b in zip(codes, plain_codes, strict=True))  # guidance chose otherwise
    with pytest.raises(ValueError, match="talker.guidance = 1"):
        list(tiny_talker(tokenizer).stream(MESSAGES, None, text=text, options=guided))


def test_clips_with_hidden_text_train_audio_only(tokenizer):
    """A clip whose text is hidden adds no text or duration loss, and trains the hidden-text embedding."""
    talker = Talker(tiny_lm(len(tokenizer)), tokenizer, dataclasses.replace(tiny_config(), text_null=True)).train()
    pieces = chunk_tokens(tokenizer, "Good morning to you all.")
    chunks = [Chunk(ids, phonemizer().ids(words), 3) for words, ids in pieces]
    codes = torch.randint(0, 8, (3 * len(chunks), 2))
    positions, start = build_reply(talker.prompt_ids([]), chunks, codes, talker.end_token)
    hidden = positions.hide_text(start, talker.end_token)

    def every_frame(packed):
        frames = packed.tensors["kinds"] == int(Kind.FRAME)
        return frames.unsqueeze(-1).expand_as(packed.tensors["codes"])

    alone, both = pack([positions, positions]), pack([positions, hidden])  # one batch shape: the same arithmetic
    heard = talker.loss(alone, NoiseConfig(), masked=every_frame(alone))
    mixed = talker.loss(both, NoiseConfig(), masked=every_frame(both))
    torch.testing.assert_close(mixed["text"], heard["text"])
    torch.testing.assert_close(mixed["dur"], heard["dur"])
    assert not torch.equal(mixed["audio"], heard["audio"])
    mixed["loss"].backward()
    assert talker.speech.null_text.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="text_null"):
        tiny_talker(tokenizer).loss(pack([hidden]), NoiseConfig())
