"""Train the speech codec on the synthetic corpus: mel reconstruction + CTC phonemes + vocoder.

Runs under ``accelerate`` (CPU, one GPU or several). Every few minutes the run folder gets a
resumable ``last.pt``. Validation and export use an exponential moving average (EMA) of the
weights: one checkpoint's dev WER moves by about a point from its neighbours' (measured in
session 2), and the average smooths that step-to-step noise. Every validation the best EMA
weights (lowest validation mel L1) are written as ``best.safetensors`` + ``best.json`` (and to
``--export DIR`` as ``codec.safetensors``); every ``snapshot_every`` steps they are also kept as
``ema_stepN.safetensors``, so a run's checkpoints can be compared afterwards, and at the end of
the run as ``last.safetensors`` (an adversarial run trades validation mel L1 for detail, so its
best-by-mel-L1 weights are not the ones to judge).
Losses go to ``log.jsonl``, one JSON object per logged step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.codec.codec import FRAME_SAMPLES, CodecConfig, SpeechCodec, load_codec, save_codec
from model.codec.dsp import HOP, log_mel
from training.discriminator import Adversary

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings (the model's sizes live in CodecConfig)."""

    batch: int = 8  # utterances per step (similar lengths, padded)
    lr: float = 1.5e-3  # AdamW peak learning rate
    warmup: int = 50  # linear warm-up steps (short: CPU runs are only a few thousand steps)
    ctc_weight: float = 0.5  # CTC phoneme loss weight (makes the codes phonetic)
    voc_crop: int = 12_800  # vocoder training crop, samples (0.8 s): the vocoder is the costly part
    voc_pred_after: int = 600  # from this step, half the vocoder crops use the decoder's own mel
    voc_every: int = 1  # train the vocoder on every Nth step only (it is ~40% of a step's CPU time)
    val_items: int = 24  # held-out corpus items for validation (ids divisible by val_stride)
    val_stride: int = 53  # every 53rd text is held out: a fixed set however far the corpus grows
    val_every: int = 150  # steps between validations
    save_every_s: float = 180.0  # seconds between resumable checkpoints
    ema_decay: float = 0.999  # weight average kept for validation and export (0 = raw weights)
    snapshot_every: int = 1500  # steps between kept EMA snapshots, a multiple of val_every (0 = none)
    adv_weight: float = 0.0  # weight of the mel discriminator's adversarial + matching loss (0 = off)
    fm_weight: float = 1.0  # feature matching, relative to the adversarial hinge loss
    adv_frames: int = 128  # mel frames (1.28 s) per discriminator crop
    adv_after: int = 200  # the discriminator learns alone this many steps, then its weight ramps up over as many
    seed: int = 0  # data order and initialisation


def phoneme_ids(phonemes: str, vocab: str) -> list[int]:
    """Espeak phoneme string -> CTC target ids (1-based; symbols outside ``vocab`` are dropped)."""
    index = {c: i + 1 for i, c in enumerate(vocab)}
    return [index[c] for c in phonemes if c in index]


class Batches:
    """Random batches of similar-length utterances (little padding), with their CTC targets."""

    def __init__(self, items: list, vocab: str, batch: int, seed: int):
        self.items = sorted(items, key=lambda it: len(it.audio))
        self.targets = [phoneme_ids(it.phonemes, vocab) for it in self.items]
        self.batch = batch
        self.rng = random.Random(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """(audio [B, T] zero-padded to whole frames, lengths [B], targets)."""
        start = self.rng.randrange(max(1, len(self.items) - self.batch + 1))
        idx = list(range(start, min(len(self.items), start + self.batch)))
        return collate([self.items[i].audio for i in idx], [self.targets[i] for i in idx])


def collate(audios: list[np.ndarray], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Pad clips to a common whole number of frames."""
    lengths = torch.tensor([len(a) for a in audios])
    frames = math.ceil(int(lengths.max()) / FRAME_SAMPLES)
    audio = torch.zeros(len(audios), frames * FRAME_SAMPLES)
    for i, a in enumerate(audios):
        audio[i, : len(a)] = torch.from_numpy(a)
    return audio, lengths, targets


def stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + log-magnitude L1 at three resolutions."""
    total = pred.new_zeros(())
    for n_fft, hop in ((256, 64), (512, 128), (1024, 256)):
        w = torch.hann_window(n_fft, device=pred.device)
        p = torch.stft(pred, n_fft, hop, window=w, return_complex=True).abs().clamp(min=1e-5)
        t = torch.stft(target, n_fft, hop, window=w, return_complex=True).abs().clamp(min=1e-5)
        total = total + torch.linalg.norm(t - p) / torch.linalg.norm(t) + (p.log() - t.log()).abs().mean()
    return total / 3


def codec_losses(
    codec: SpeechCodec,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    targets: list,
    cfg: TrainConfig,
    step: int,
    adversary: Adversary | None = None,
    adv_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """All training losses for one batch (``audio`` already padded to whole frames).

    ``adversary``: when given, its discriminator's losses on the predicted mel join the total,
    scaled by ``cfg.adv_weight * adv_scale`` (the caller's ramp).
    """
    target_mel = codec.norm_mel(audio)  # [B, 80, 8F]
    z = codec.encoder(target_mel)
    # keep latents where tanh is not flat: saturated latents get no gradient and codes collapse
    # (measured: run 1 collapsed to 1-5 codes per group by step 300 without this)
    saturation = F.relu(z.abs() - 2.0).pow(2).mean()
    q = codec.fsq.quantize(z)
    pred_mel = codec.decoder(q)
    mel_frames = torch.div(lengths + HOP - 1, HOP, rounding_mode="floor")
    mask = (torch.arange(target_mel.shape[-1])[None] < mel_frames[:, None]).to(audio.device)
    mel_l1 = ((pred_mel - target_mel).abs().mean(1) * mask).sum() / mask.sum()

    logp = codec.ctc_logits(q)  # [B, 4F, C]
    in_len = torch.div(lengths + FRAME_SAMPLES - 1, FRAME_SAMPLES, rounding_mode="floor") * 4
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    tgt_len = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    ctc = F.ctc_loss(logp.transpose(0, 1), flat, in_len, tgt_len, blank=0, zero_infinity=True)

    losses = {"mel_l1": mel_l1, "ctc": ctc, "saturation": saturation}
    total = mel_l1 + cfg.ctc_weight * ctc + saturation
    if adversary is not None:
        adv, matching = adversary.generator_terms(target_mel, pred_mel, mel_frames)
        losses |= {"adv": adv, "fm": matching}
        total = total + cfg.adv_weight * adv_scale * (adv + cfg.fm_weight * matching)
    if step % cfg.voc_every == 0:
        losses |= vocoder_losses(codec, audio, pred_mel, mel_frames, cfg, step)
        total = total + losses["voc_stft"] + 0.5 * losses["voc_mel"]
    return {"loss": total, **losses}


def vocoder_losses(
    codec: SpeechCodec,
    audio: torch.Tensor,
    pred_mel: torch.Tensor,
    mel_frames: torch.Tensor,
    cfg: TrainConfig,
    step: int,
) -> dict[str, torch.Tensor]:
    """The vocoder on a random crop per clip: ground-truth mel, or (later) the decoder's own mel."""
    crop_frames = cfg.voc_crop // HOP
    use_pred = step >= cfg.voc_pred_after and random.random() < 0.5
    source = (pred_mel.detach() * codec.config.mel_std + codec.config.mel_mean) if use_pred else None
    mels, wavs = [], []
    full_mel = log_mel(audio)
    for i in range(audio.shape[0]):
        valid = max(crop_frames, int(mel_frames[i]))
        a = random.randrange(max(1, valid - crop_frames + 1))
        a = min(a, full_mel.shape[-1] - crop_frames)
        mels.append((source if source is not None else full_mel)[i, :, a : a + crop_frames])
        wavs.append(audio[i, a * HOP : (a + crop_frames) * HOP])
    mel_in, wav = torch.stack(mels), torch.stack(wavs)
    out = codec.vocoder(mel_in)
    voc_stft = stft_loss(out, wav)
    voc_mel = (log_mel(out) - log_mel(wav)).abs().mean()
    return {"voc_stft": voc_stft, "voc_mel": voc_mel}


@torch.no_grad()
def validate(codec: SpeechCodec, items: list, vocab: str) -> dict[str, float]:
    """Validation mel L1 (normalised log-mel, through the codes) and CTC on held-out items."""
    codec.eval()
    mel, ctc, codes = [], [], []
    for it in items:
        audio, lengths, targets = collate([it.audio], [phoneme_ids(it.phonemes, vocab)])
        target = codec.norm_mel(audio)
        q = codec.fsq.quantize(codec.encoder(target))
        codes.append(codec.fsq.to_codes(q)[0])
        mel.append((codec.decoder(q) - target).abs().mean().item())
        logp = codec.ctc_logits(q)
        ctc.append(
            F.ctc_loss(
                logp.transpose(0, 1),
                torch.tensor(targets[0]),
                torch.tensor([logp.shape[1]]),
                torch.tensor([len(targets[0])]),
                zero_infinity=True,
            ).item()
        )
    codec.train()
    return {"val_mel_l1": float(np.mean(mel)), "val_ctc": float(np.mean(ctc)), "code_ppl": code_perplexity(codes)}


def code_perplexity(codes: list[torch.Tensor]) -> list[float]:
    """Perplexity of each group's code distribution (1 = collapsed, K = uniform)."""
    flat = torch.cat(codes)
    out = []
    for g in range(flat.shape[1]):
        _, counts = torch.unique(flat[:, g], return_counts=True)
        p = counts.float() / counts.sum()
        out.append(round(float(torch.exp(-(p * p.log()).sum())), 1))
    return out


def train(
    data: str,
    run: str,
    minutes: float,
    steps: int = 0,
    cfg: TrainConfig | None = None,
    codec_cfg: CodecConfig | None = None,
    export: str | None = None,
    init: str | None = None,
    vocoder_from: str | None = None,
) -> dict:
    """Train (resuming ``run/last.pt`` if present) until ``minutes`` or ``steps``; return the last log.

    ``init``: a codec.safetensors whose weights (and sizes) start a new run; ignored when resuming.
    ``vocoder_from``: a codec.safetensors whose vocoder replaces this run's (the vocoder only sees
    mel, so it moves between codecs of any G).
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from training.synth import read_corpus

    cfg = cfg or TrainConfig()
    run_dir = Path(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())

    def load_data() -> tuple[list, list, float, int]:
        items = read_corpus(data)
        if len(items) < 2 * cfg.batch:
            raise ValueError(f"corpus {data} has {len(items)} items; build a bigger one with `ttt data synth`")
        held = [it for it in items if it.id % cfg.val_stride == 0][: cfg.val_items] or items[-2:]
        held_ids = {it.id for it in held}
        hours = sum(len(it.audio) for it in items) / 16000 / 3600
        shards = len(list(Path(data).glob("shard_*.jsonl")))
        return held, [it for it in items if it.id not in held_ids], hours, shards

    val_items, train_items, hours, shards = load_data()
    items = val_items + train_items

    last = run_dir / "last.pt"
    state = torch.load(last, weights_only=False) if last.is_file() else None
    if state is not None:
        codec_cfg = CodecConfig.from_dict(state["codec_config"])
    torch.manual_seed(cfg.seed)
    if state is None and init:
        codec = load_codec(init)
        if not codec.config.vocoder:
            raise ValueError(f"--init {init} has no vocoder weights; start from a full codec checkpoint")
        log.info("new run initialised from %s", init)
    else:
        codec = SpeechCodec(codec_cfg or CodecConfig())
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=0.01)
    step, best, history = 0, math.inf, []
    if state is not None:
        codec.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best, history = state["step"], state["best"], state.get("history", [])
        log.info("resumed %s at step %d", last, step)
    if vocoder_from:
        donor = load_codec(vocoder_from)
        if not donor.config.vocoder or donor.config.voc_dim != codec.config.voc_dim:
            raise ValueError(f"--vocoder-from {vocoder_from}: no vocoder of width {codec.config.voc_dim} in it")
        codec.vocoder.load_state_dict(donor.vocoder.state_dict())
        log.info("vocoder weights taken from %s", vocoder_from)
    codec, opt = accelerator.prepare(codec, opt)
    model: SpeechCodec = accelerator.unwrap_model(codec)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay else None
    if ema is not None and state is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    # what validation sees and export writes: the EMA weights when there are any
    averaged: SpeechCodec = ema.module if ema is not None else model
    adversary = Adversary(cfg.lr, cfg.adv_frames) if cfg.adv_weight > 0 else None
    if adversary is not None:
        adversary.disc.to(accelerator.device)
        if state is not None and state.get("adversary"):
            adversary.load_state_dict(state["adversary"])
    vocab = model.config.phonemes
    batches = Batches(train_items, vocab, cfg.batch, cfg.seed + step)
    random.seed(cfg.seed + step)

    def save_last() -> None:
        tmp = last.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "adversary": adversary.state_dict() if adversary is not None else None,
                "step": step,
                "best": best,
                "history": history,
                "codec_config": dataclasses.asdict(model.config),
                "train_config": dataclasses.asdict(cfg),
            },
            tmp,
        )
        tmp.replace(last)

    start = time.monotonic()
    saved_at, first_step = start, step
    logf = (run_dir / "log.jsonl").open("a")
    bar = tqdm(desc="codec", unit="step", initial=step, disable=not accelerator.is_main_process)
    record: dict = {}
    codec.train()
    while (time.monotonic() - start) < minutes * 60 and (not steps or step < steps):
        audio, lengths, targets = batches.sample()
        # warm-up, then cosine decay to 10% over this run's budget (time or steps, whichever is nearer)
        done = (time.monotonic() - start) / (minutes * 60)
        if steps:
            done = max(done, (step - first_step) / max(1, steps - first_step))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0))))
        for group in opt.param_groups:
            group["lr"] = lr
        # the codec feels the discriminator only once it has had adv_after steps to learn
        adv_scale = min(1.0, max(0.0, (step - first_step - cfg.adv_after) / cfg.adv_after)) if cfg.adv_after else 1.0
        audio = audio.to(accelerator.device)
        losses = codec_losses(model, audio, lengths, targets, cfg, step, adversary, adv_scale)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        if adversary is not None:
            losses["disc"] = torch.tensor(adversary.step(lr))
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        bar.update(1)
        if step % 10 == 0:
            record = {"step": step, "lr": lr, "time_s": round(time.monotonic() - start, 1)}
            record |= {k: round(v.item(), 4) for k, v in losses.items()}
            logf.write(json.dumps(record) + "\n")
            logf.flush()
            bar.set_postfix(mel=record["mel_l1"], ctc=record["ctc"], voc=record.get("voc_stft"))
        if step % cfg.val_every == 0:
            if len(list(Path(data).glob("shard_*.jsonl"))) != shards:  # the corpus grew: train on all of it
                val_items, train_items, hours, shards = load_data()
                items = val_items + train_items
                batches = Batches(train_items, vocab, cfg.batch, cfg.seed + step)
                log.info("corpus reloaded: %d items, %.2f h", len(items), hours)
            metrics = validate(averaged, val_items, vocab)
            record = {"step": step, **metrics, "corpus_hours": round(hours, 3)}
            logf.write(json.dumps(record) + "\n")
            logf.flush()
            history.append(record)
            if metrics["val_mel_l1"] < best and min(metrics["code_ppl"]) > 4:  # never export a collapse
                best = metrics["val_mel_l1"]
                info = {"step": step, "corpus_hours": round(hours, 3), "corpus_items": len(items)}
                info |= metrics | {"train_config": dataclasses.asdict(cfg)}
                save_codec(averaged, run_dir / "best.safetensors", info)
                if export:
                    save_codec(averaged, Path(export) / "codec.safetensors", info)
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                info = {"step": step, "corpus_hours": round(hours, 3), "corpus_items": len(items)}
                save_codec(averaged, run_dir / f"ema_step{step}.safetensors", info | metrics)
        if time.monotonic() - saved_at > cfg.save_every_s:
            save_last()
            saved_at = time.monotonic()
    save_last()
    save_codec(averaged, run_dir / "last.safetensors", {"step": step, "corpus_hours": round(hours, 3)})
    bar.close()
    logf.close()
    return record


def run_train_codec(args: argparse.Namespace) -> int:
    """``ttt train codec``."""
    torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.INFO)
    cfg = TrainConfig(batch=args.batch, voc_every=args.voc_every, adv_weight=args.adversarial)
    if args.lr:
        cfg.lr = args.lr
    codec_cfg = CodecConfig(groups=args.groups) if args.groups else None
    record = train(
        args.data,
        args.run,
        args.minutes,
        args.steps,
        cfg,
        codec_cfg,
        export=args.export,
        init=args.init,
        vocoder_from=args.vocoder_from,
    )
    print(json.dumps(record))
    return 0
