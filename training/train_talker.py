"""``ttt train talker``: LoRA + speech parameters of the unified transformer on the aligned corpus.

Each clip of ``ttt data align``'s output becomes one training sequence (:func:`model.sequence.build_reply`
under the empty-history prompt ``<|im_start|>assistant``); sequences are packed into rows without
padding (a block-diagonal mask keeps them apart). The run folder holds::

    last.pt             everything needed to resume (trainable state, optimiser, EMA, step, data cursor)
    last.safetensors    the EMA weights, loadable by ``ttt say --set talker.checkpoint=...``
    log.jsonl           one line per logged step and per validation
    loss.png            the loss curves so far

Training stops after ``--minutes`` (or ``--steps``) and resumes from ``last.pt`` when run again.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from model.assets import AssetError
from model.backbone import cast_frozen, resolve_precision
from model.chunks import chunk_tokens, phoneme_ids
from model.sequence import Chunk, Kind, Positions, build_reply, pack
from model.talker import NoiseConfig, Talker, TalkerConfig, default_config, phone_classes, saved_config

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation of a talker run (saved in ``last.pt``)."""

    positions_per_step: int = 2048  # real positions per optimiser step
    row_length: int = 0  # packed row length; 0 = one sequence per row (see Batches)
    lr: float = 3e-4  # peak learning rate of the LoRA adapters and norm gains
    speech_lr: float = 1e-3  # peak learning rate of the new speech parameters (random init)
    warmup: int = 50  # linear warm-up steps
    weight_decay: float = 0.01  # on matrices only
    ema_decay: float = 0.995  # EMA of the trainable weights (what validation and export use): about 200 steps
    val_items: int = 64  # clips held out for validation
    val_every: int = 50  # steps between validations
    log_every: int = 10  # steps between training-loss lines in log.jsonl
    save_every_s: float = 180.0  # seconds between resumable checkpoints
    seed: int = 0  # data order and noise
    text_teacher: bool = True  # text loss against the untouched backbone's next-token distribution (keeps chat)
    phone_weight: float = 0.2  # auxiliary frame-phoneme loss (dense alignment supervision); 0 = no phoneme head
    text_dropout: float = 0.1  # share of clips trained with their text hidden (for guidance); 0 = no null embedding
    speech_every: int = 250  # steps between listening tests (held-out clips voiced and transcribed); 0 = none
    speech_clips: int = 6  # clips each listening test voices (the first validation clips)


@dataclass(frozen=True)
class Example:
    """One training clip, laid out."""

    id: int  # corpus id
    text: str  # what is voiced
    positions: Positions  # the full training sequence
    plain: list[int]  # the same prompt and reply as text alone (prompt, reply tokens, end): the teacher's input


def examples_from(items: list, tokenizer, prompt: list[int], end_token: int, max_span: int) -> tuple[list, int]:
    """Lay out aligned clips as training sequences; returns (examples, clips skipped).

    A clip is skipped when its text chunks differently from its alignment (they share one rule, so
    this means a changed rule) or when a span is longer than the duration head can say.
    """
    out, skipped = [], 0
    for item in items:
        pieces = chunk_tokens(tokenizer, item.text)
        if len(pieces) != len(item.chunks) or any(c["frames"] > max_span for c in item.chunks):
            skipped += 1
            continue
        chunks = [
            Chunk(tokens, phoneme_ids(c["phonemes"]), c["frames"])
            for (_, tokens), c in zip(pieces, item.chunks, strict=True)
        ]
        phones = torch.as_tensor(item.phones.astype("int64")) if item.phones is not None else None
        codes = torch.as_tensor(item.codes.astype("int64"))
        positions, _ = build_reply(prompt, chunks, codes, end_token, phones)
        plain = prompt + [t for c in chunks for t in c.tokens] + [end_token]
        out.append(Example(item.id, item.text, positions, plain))
    return out, skipped


class Batches:
    """Endless shuffled passes over the examples, in steps of about ``positions`` real positions.

    Steps are cut from a pool of ``pool`` steps' worth of examples sorted by length, so the
    sequences of one step have similar lengths and padding them to the longest wastes little
    (a row per sequence keeps attention as short as the sequences; packing rows of 512 made every
    position attend over 512 and measured slower).
    """

    def __init__(self, examples: list[Example], positions: int, seed: int, cursor: int = 0, pool: int = 8):
        self.examples, self.positions, self.seed, self.pool = examples, positions, seed, pool
        self.cursor = cursor  # examples drawn so far (resume point; a resumed run skips the unused pool)
        self._queue: list[list[Example]] = []
        self._shuffled: tuple[int, list[int]] = (-1, [])  # (epoch, its order): shuffled once per epoch

    def _order(self, epoch: int) -> list[int]:
        if self._shuffled[0] != epoch:
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._shuffled = (epoch, order)
        return self._shuffled[1]

    def next(self) -> list[Example]:
        """The examples of the next step."""
        if not self._queue:
            drawn, total = [], 0
            while total < self.positions * self.pool:
                epoch, index = divmod(self.cursor, len(self.examples))
                drawn.append(self.examples[self._order(epoch)[index]])
                total += len(drawn[-1].positions)
                self.cursor += 1
            drawn.sort(key=lambda e: len(e.positions))
            step: list[Example] = []
            size = 0
            for example in drawn:
                step.append(example)
                size += len(example.positions)
                if size >= self.positions:
                    self._queue.append(step)
                    step, size = [], 0
            if step:
                self._queue.append(step)
            random.Random(self.seed + self.cursor).shuffle(self._queue)
        return self._queue.pop()

    @property
    def epoch(self) -> float:
        """Passes over the data so far."""
        return self.cursor / len(self.examples)


@torch.no_grad()
def validate(
    talker: Talker,
    examples: list[Example],
    row_length: int,
    prompt_length: int,
    seed: int = 1234,
    teacher: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Validation losses with fixed noise, and the text-dependence gap (the babble detector).

    ``audio_t1``: CE of codes of whole-masked spans (every other span) given the true text, and
    ``phone_t1_acc``: how often the phoneme head names those frames' phonemes (with the head);
    ``audio_t1_shuffled``: the same with every clip's text and phoneme tokens taken from another clip
    (same positions otherwise). A model that listens to the text loses clearly more without it.
    With the hidden-text embedding, ``audio_t1_null``: the same with the reply's text hidden.
    With a ``teacher`` (the untouched backbone), ``val_text_kl``: KL(teacher || talker) per text token.
    """
    talker.eval()
    sequences = [e.positions for e in examples]
    shuffled = [_swap_text(s, sequences[(i + 1) % len(sequences)], prompt_length) for i, s in enumerate(sequences)]
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    starts = range(0, len(sequences), 8)
    for start in starts:
        batch, other = sequences[start : start + 8], shuffled[start : start + 8]
        packed = pack(batch, row_length)
        in_order = [examples[start + j] for j in packed.order]
        soft = teacher_logits(teacher, in_order, prompt_length) if teacher is not None else None
        noisy = talker.loss(packed, NoiseConfig(), generator, teacher=soft)
        if soft is not None:
            sums["val_text_kl"] = sums.get("val_text_kl", 0.0) + float(noisy["text_kl"]) / len(starts)
        whole = _whole_spans(packed)
        clean = talker.loss(packed, NoiseConfig(), masked=whole)
        swapped = talker.loss(pack(other, row_length), NoiseConfig(), masked=whole)
        nulled = None
        if talker.config.text_null:
            hidden = pack([s.hide_text(prompt_length, talker.end_token) for s in batch], row_length)
            nulled = talker.loss(hidden, NoiseConfig(), masked=whole)["audio"]
        for key, value in (
            ("val_text", noisy["text"]),
            ("val_dur", noisy["dur"]),
            ("val_audio", noisy["audio"]),
            ("audio_t1", clean["audio"]),
            ("audio_t1_shuffled", swapped["audio"]),
            ("audio_t1_null", nulled),
            ("val_phone", noisy.get("phone")),
            ("phone_t1_acc", clean.get("phone_acc")),
        ):
            if value is not None:
                sums[key] = sums.get(key, 0.0) + float(value) / len(starts)
    sums["text_gap"] = sums["audio_t1_shuffled"] - sums["audio_t1"]
    if "audio_t1_null" in sums:  # the same gap against no text at all (what guidance amplifies)
        sums["null_gap"] = sums["audio_t1_null"] - sums["audio_t1"]
    talker.train()
    return {k: round(v, 4) for k, v in sums.items()}


def _whole_spans(packed) -> torch.Tensor:
    """Mask every code of every even span: the first decoding step's task."""
    span, kinds = packed.tensors["span"], packed.tensors["kinds"]
    chosen = (span % 2 == 0) & (kinds == int(Kind.FRAME))
    return chosen.unsqueeze(-1).expand(*chosen.shape, packed.tensors["codes"].shape[-1]).clone()


def _swap_text(positions: Positions, donor: Positions, prompt_length: int) -> Positions:
    """``positions`` with its reply's text and phoneme ids replaced, in order, by ``donor``'s (cycled)."""
    out = positions.concat(Positions(positions.groups))
    for kind in (Kind.TEXT, Kind.PHONE):
        mine = [i for i, k in enumerate(out.kinds) if k == int(kind)]
        theirs = [donor.tokens[i] for i, k in enumerate(donor.kinds) if k == int(kind)]
        skip = prompt_length if kind == Kind.TEXT else 0  # the prompt stays
        for n, i in enumerate(mine[skip:]):
            out.tokens[i] = theirs[skip + n % max(1, len(theirs) - skip)]
    return out


def loss_png(records: list[dict], path: Path) -> None:
    """Training and validation loss curves (audio, text, duration) as a small PNG, drawn with PIL."""
    from PIL import Image, ImageDraw

    train = [r for r in records if "audio" in r and "step" in r]
    val = [r for r in records if "val_audio" in r]
    if len(train) < 2:
        return
    width, height, pad = 900, 420, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    steps = [r["step"] for r in train]
    top = max(max(r["audio"] for r in train[len(train) // 10 :]), 1.0) * 1.1
    x0, x1 = min(steps), max(steps)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (step - x0) / max(1, x1 - x0)
        return x, height - pad - (height - 2 * pad) * min(value, top) / top

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for key, colour in (("audio", "blue"), ("text", "green"), ("dur", "orange")):
        points = [xy(r["step"], r[key]) for r in train if key in r]
        draw.line(points, fill=colour, width=1)
        draw.text((pad + 5, pad + 5 + 14 * ["audio", "text", "dur"].index(key)), f"train {key}", fill=colour)
    for key, colour in (("val_audio", "navy"), ("audio_t1", "purple"), ("audio_t1_shuffled", "red")):
        points = [xy(r["step"], r[key]) for r in val if key in r]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        idx = ["val_audio", "audio_t1", "audio_t1_shuffled"].index(key)
        draw.text((width - pad - 160, pad + 5 + 14 * idx), key, fill=colour)
    draw.text((pad, height - pad + 8), f"step {x0}", fill="black")
    draw.text((width - pad - 80, height - pad + 8), f"step {x1}", fill="black")
    draw.text((5, pad - 14), f"nats (top {top:.2f})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(str(path))


PRECISIONS = ("auto", "bf16", "fp32")


def matmul_dtype(precision: str) -> torch.dtype:
    """The dtype training's big matmuls run in: ``auto`` is bf16 on a CPU with AMX tiles, else fp32.

    On AMX a bf16 matmul of training's size is about 12x an fp32 one and a whole step about 2x,
    with the same losses to 3 decimals (benchmarks/talker_throughput.md); without AMX bf16 is
    slower than fp32, and on a GPU fp32 weights with TF32 matmuls avoid dtype mixing.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    precision = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def teacher_logits(teacher: torch.nn.Module, examples: list[Example], prompt_length: int) -> torch.Tensor:
    """The untouched backbone's logits [N, V] for every text target of ``examples``, in their order.

    Each example is read as text alone (``Example.plain``); the targets after its prompt are the
    reply tokens and the end token, the same ones its interleaved layout predicts.
    """
    longest = max(len(e.plain) for e in examples)
    ids = torch.zeros(len(examples), longest, dtype=torch.long)
    attend = torch.zeros(len(examples), longest, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.plain)] = torch.tensor(e.plain)
        attend[i, : len(e.plain)] = 1
    device = next(teacher.parameters()).device
    with torch.no_grad():
        logits = teacher(input_ids=ids.to(device), attention_mask=attend.to(device)).logits
    return torch.cat([logits[i, prompt_length - 1 : len(e.plain) - 1] for i, e in enumerate(examples)])


def mixed_precision(talker: Talker, dtype: torch.dtype) -> Callable[[], AbstractContextManager]:
    """Set ``talker`` up to train with matmuls in ``dtype``; returns the autocast its passes run under."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype != torch.float32:
        talker.cast_frozen(dtype)
        if device_type == "cpu":  # at these lengths CPU flash attention's backward costs ~20% more a step
            talker.lm.get_base_model().set_attn_implementation("eager")
    return lambda: torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def train(
    data: str,
    run: str,
    minutes: float,
    steps: int = 0,
    cfg: TrainConfig | None = None,
    talker_overrides: dict | None = None,
    settings=None,
    limit: int = 0,
    precision: str = "auto",
    init: str | None = None,
) -> dict:
    """Train (resuming ``run/last.pt`` if present) until ``minutes`` or ``steps``; return the last record.

    ``limit`` > 0 trains on the first ``limit`` clips only (the overfit gate). ``precision``: see
    :func:`matmul_dtype` (frozen weights stored in that dtype, forward and backward under autocast).
    ``init``: a talker safetensors a new run starts from (its shape and weights; fresh optimiser and
    warm-up); ignored when ``run/last.pt`` exists, which is resumed instead.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from model.backbone import load_backbone
    from model.codec import load_codec
    from training.align import read_aligned

    cfg = cfg or TrainConfig()
    run_dir = Path(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    state = torch.load(last, weights_only=False) if last.is_file() else None
    if state is not None:
        cfg = TrainConfig(**state["train_config"])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if torch.cuda.is_available():  # fp32 weights, TF32 matmuls: no dtype juggling between LoRA and the masks
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    codec = load_codec()
    backbone = load_backbone(settings.assets.llm if settings else None, settings.assets.cache_dir if settings else None)
    seed_from = Path(init) if init and state is None else None
    if state is not None:
        config = TalkerConfig(**state["talker_config"])
    elif seed_from is not None:
        config = saved_config(seed_from)
        if config is None:
            raise AssetError(f"--init {seed_from}: not a talker checkpoint (missing or corrupt); give a .safetensors")
        if cfg.phone_weight and not config.phone_classes:  # older weights: the run adds the phoneme head
            config = dataclasses.replace(config, phone_classes=phone_classes(codec))
        if cfg.text_dropout and not config.text_null:  # ... and the hidden-text embedding
            config = dataclasses.replace(config, text_null=True)
    else:
        config = default_config(codec, **(talker_overrides or {}))
        if not cfg.phone_weight:
            config.phone_classes = 0
        if not cfg.text_dropout:
            config.text_null = False
    torch.manual_seed(cfg.seed)
    talker = Talker.from_backbone(backbone, config)
    seeded: dict = {}
    if seed_from is not None:
        seeded = talker.load_trainable(seed_from, new_parts=True)
        log.info("new run started from %s (its step %s)", seed_from, seeded.get("step", "unknown"))
    prompt = talker.prompt_ids([])
    dtype = matmul_dtype(precision)
    autocast = mixed_precision(talker, dtype)
    teacher = None
    if cfg.text_teacher:
        teacher = copy.deepcopy(backbone.model)  # the untouched backbone (the shared, cached one stays as loaded)
        if dtype != torch.float32:
            cast_frozen(teacher, dtype, keep=(teacher.get_input_embeddings().weight,))

    clips: dict = {}  # corpus id -> aligned clip, for the listening test

    def load_data() -> tuple[list[Example], list[Example], int]:
        """(validation, training examples, aligned shards): every clip with an id divisible by 97 validates."""
        shards = len(list(Path(data).glob("shard_*.jsonl")))
        items = read_aligned(data)
        clips.update((item.id, item) for item in items)
        if limit:
            items = items[:limit]
        examples, skipped = examples_from(items, talker.tokenizer, prompt, talker.end_token, config.max_span)
        if skipped:
            log.info("%d of %d clips skipped (chunks differ or span > %d)", skipped, len(items), config.max_span)
        if len(examples) < 4:
            raise ValueError(f"{data} gives {len(examples)} usable clips; align a bigger corpus with `ttt data align`")
        if limit:  # the overfit gate validates on what it trains on
            return examples[: min(len(examples), 32)], examples, shards
        val = [e for e in examples if e.id % 97 == 0][: cfg.val_items]
        val_ids = {e.id for e in val}
        return val, [e for e in examples if e.id not in val_ids], shards

    val, train_set, shards = load_data()
    real_positions = sum(len(e.positions) for e in train_set)
    listen = None
    if cfg.speech_every and accelerator.is_main_process:
        from training.eval_tts import SpeechCheck
        from training.evaluate import Transcriber

        transcriber = Transcriber.load(settings.assets.whisper if settings else None, torch.get_num_threads())
        listen = SpeechCheck(codec, [clips[e.id] for e in val[: cfg.speech_clips]], transcriber)

    named = talker.trainable_parameters()
    speech = [p for n, p in named if n.startswith("speech.")]
    decayed = [p for n, p in named if not n.startswith("speech.") and p.ndim >= 2]
    flat = [p for n, p in named if not n.startswith("speech.") and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": speech, "lr": cfg.speech_lr, "weight_decay": 0.0, "peak": cfg.speech_lr},
            {"params": decayed, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "peak": cfg.lr},
            {"params": flat, "lr": cfg.lr, "weight_decay": 0.0, "peak": cfg.lr},
        ],
        betas=(0.9, 0.95),
    )
    step, cursor, history, batch_seed = 0, 0, [], cfg.seed
    warm_from = 0  # the step the learning-rate warm-up starts from (a fresh optimiser warms up again)
    if seeded:  # weights only: count on from the seed's step and data position, with a fresh optimiser
        step = warm_from = int(seeded.get("step", 0))
        cursor = round(float(seeded.get("epoch", 0.0)) * len(train_set))
        history = list(seeded.get("history", []))
    if state is not None:
        talker.load_state_dict(state["trainable"], strict=False)
        opt.load_state_dict(state["opt"])
        step, cursor, history = state["step"], state["cursor"], state.get("history", [])
        batch_seed = state.get("batch_seed", cfg.seed)
        warm_from = state.get("warm_from", 0)
        log.info("resumed %s at step %d", last, step)
    talker, opt = accelerator.prepare(talker, opt)
    if teacher is not None:
        teacher.to(accelerator.device)
    model: Talker = accelerator.unwrap_model(talker)
    trainable = [p for _, p in model.trainable_parameters()]
    ema = [p.detach().clone() for p in trainable]
    if state is not None and state.get("ema"):
        ema = [e.to(p.device) for e, p in zip(state["ema"], trainable, strict=True)]
    batches = Batches(train_set, cfg.positions_per_step, batch_seed, cursor)
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + step)

    def with_ema(fn):
        """Run ``fn`` with the EMA weights swapped in."""
        saved = [p.detach().clone() for p in trainable]
        with torch.no_grad():
            for p, e in zip(trainable, ema, strict=True):
                p.copy_(e)
        try:
            return fn()
        finally:
            with torch.no_grad():
                for p, s in zip(trainable, saved, strict=True):
                    p.copy_(s)

    def info() -> dict:
        return {
            "step": step,
            "epoch": round(batches.epoch, 3),
            "clips": len(train_set),
            "train_config": dataclasses.asdict(cfg),
            "data": str(data),
            "precision": str(dtype).removeprefix("torch."),
            "history": history,  # the loss curve so far: a run seeded from this file (--init) continues it
        }

    def save() -> None:
        tmp = last.with_suffix(".tmp")
        torch.save(
            {
                "trainable": {n: p.detach().cpu() for n, p in model.trainable_parameters()},
                "opt": opt.state_dict(),
                "ema": [e.cpu() for e in ema],
                "step": step,
                "cursor": batches.cursor,
                "batch_seed": batches.seed,
                "history": history,
                "warm_from": warm_from,
                "talker_config": dataclasses.asdict(config),
                "train_config": dataclasses.asdict(cfg),
            },
            tmp,
        )
        tmp.replace(last)
        with_ema(lambda: model.save_trainable(run_dir / "last.safetensors", info()))
        loss_png(history, run_dir / "loss.png")

    noise = NoiseConfig(phone_weight=cfg.phone_weight)
    start = time.monotonic()
    saved_at = start
    logf = (run_dir / "log.jsonl").open("a")

    def keep(record: dict) -> None:
        """One line of ``log.jsonl``, and a point of the loss curve the checkpoints carry."""
        logf.write(json.dumps(record) + "\n")
        logf.flush()
        history.append(record)

    bar = tqdm(desc="talker", unit="step", initial=step, disable=not accelerator.is_main_process)
    record: dict = {}
    seen, seen_since = 0, time.monotonic()
    talker.train()
    if state is None:
        start_record = {"start": True, "clips": len(train_set), "positions": real_positions, "init": init}
        logf.write(json.dumps(start_record) + "\n")
    while (time.monotonic() - start) < minutes * 60 and (not steps or step < steps):
        drawn = batches.next()
        hide = (torch.rand(len(drawn), generator=generator) < (cfg.text_dropout if config.text_null else 0.0)).tolist()
        sequences = [
            e.positions.hide_text(len(prompt), model.end_token) if h else e.positions
            for e, h in zip(drawn, hide, strict=True)
        ]
        packed = pack(sequences, cfg.row_length)
        heard_text = [drawn[i] for i in packed.order if not hide[i]]  # hidden clips have no text targets
        scale = min(1.0, (step + 1 - warm_from) / cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = group["peak"] * scale
        with autocast():
            soft = teacher_logits(teacher, heard_text, len(prompt)) if teacher and heard_text else None
            losses = model.loss(packed, noise, generator, teacher=soft)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(trainable, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema, trainable, strict=True):
                e.lerp_(p.detach(), 1 - decay)
        step += 1
        seen += packed.real
        bar.update(1)
        if step % cfg.log_every == 0:
            rate = seen / max(1e-6, time.monotonic() - seen_since)
            seen, seen_since = 0, time.monotonic()
            record = {"step": step, "epoch": round(batches.epoch, 3), "positions_per_s": round(rate, 1)}
            record |= {k: round(float(v.detach()), 4) for k, v in losses.items()}
            keep(record)
            bar.set_postfix(audio=record["audio"], text=record["text"], dur=record["dur"])
        if step % cfg.val_every == 0:
            if not limit and len(list(Path(data).glob("shard_*.jsonl"))) != shards:  # the data grew: use all of it
                val, train_set, shards = load_data()
                batches = Batches(train_set, cfg.positions_per_step, cfg.seed + step, 0)
                log.info("aligned data reloaded: %d training clips, %d validation clips", len(train_set), len(val))
            with autocast():
                metrics = with_ema(lambda val=val: validate(model, val, cfg.row_length, len(prompt), teacher=teacher))
            record = {"step": step, "epoch": round(batches.epoch, 3), "val_clips": len(val), **metrics}
            keep(record)
            log.info("validation at step %d: %s", step, metrics)
        if listen is not None and step % cfg.speech_every == 0:
            with autocast():
                heard = with_ema(lambda: listen(model))
            record = {"step": step, "epoch": round(batches.epoch, 3), **heard}
            keep(record)
            log.info("listening test at step %d: %s", step, heard)
        if time.monotonic() - saved_at > cfg.save_every_s:
            save()
            saved_at = time.monotonic()
    save()
    bar.close()
    logf.close()
    return record


def run_train_talker(args: argparse.Namespace, settings) -> int:
    """``ttt train talker``."""
    torch.set_num_threads(max(1, args.threads))  # the command's own flag wins over settings.torch_threads
    logging.basicConfig(level=logging.INFO)
    cfg = TrainConfig()
    for name in ("positions_per_step", "row_length", "lr", "speech_lr", "ema_decay", "val_every", "save_every_s"):
        value = getattr(args, name, None)
        if value:
            setattr(cfg, name, value)
    for name in ("phone_weight", "speech_every"):  # flags where 0 means "none", not "the default"
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    overrides = {"lora_rank": args.lora_rank, "lora_alpha": 2 * args.lora_rank} if args.lora_rank else {}
    record = train(
        args.data,
        args.run,
        args.minutes,
        args.steps,
        cfg,
        overrides,
        settings,
        limit=args.limit,
        precision=args.precision,
        init=args.init,
    )
    print(json.dumps(record))
    return 0
