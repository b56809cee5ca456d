"""``ttt train turn``: the end-of-turn head on the frozen backbone, then its wait policy on a dev set.

Stages, each resumable from the run folder:
1. examples: training/turn_data.py builds (text, complete?) examples -> ``examples.jsonl``;
2. features: the int8 backbone copy reads each example, as the listener does -> ``features/chunk_*.npz``
   (one chunk every ~30 s; a restarted run skips the finished chunks);
3. head: a small MLP on the features, split by source sentence -> ``head.safetensors`` (+ ``head_state.pt``);
4. policy: the head scores the dev fragments as text, and the dev complete turns and sentences with
   commas voiced by the teacher and heard from their parts (training/turn_data.py ``dev_sets``,
   ``comma_sentences``); the wait policy with the shortest waits on complete turns that keeps every
   fragment and most comma pauses (agent/turn_eval.py ``choose_policy``) -> ``policy.json``.
``--export DIR`` writes ``turn_head.safetensors`` and ``turn_head.json`` (weights, policy, figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("ttt.train.turn")

CHUNK = 400  # examples per feature file


@dataclass
class TrainTurnConfig:
    """How to train the head."""

    run: str = "runs/turn"  # run folder
    seed: int = 0  # examples, split and initialisation
    epochs: int = 12  # passes over the training features (the best validation loss came at 3-7)
    batch: int = 256  # examples per step
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.05  # AdamW weight decay
    val_fraction: float = 0.1  # source sentences held out for validation
    threads: int = 1  # torch CPU threads
    limit: int = 0  # train on the first N examples only (0 = all)
    policy: bool = True  # choose the wait policy on the dev set
    voiced: int = 0  # fragments voiced by the teacher and transcribed by whisper, added to the text examples


def _examples(run: Path, seed: int) -> list[dict]:
    path = run / "examples.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    from training.turn_data import build_examples

    rows = [asdict(e) for e in build_examples(seed)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    log.info("wrote %d examples to %s", len(rows), path)
    return rows


def _voiced(run: Path, settings, count: int) -> list[dict]:  # noqa: ANN001 - agent.settings.Settings
    """Fragments and sentences voiced by the teacher and transcribed by whisper (cached in the run)."""
    path = run / "voiced.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    from agent.asr import WhisperAsr
    from training.teacher import teacher_voice
    from training.turn_data import voiced_examples

    asr = WhisperAsr(settings.asr, settings.assets.whisper)
    rows = [asdict(e) for e in voiced_examples(teacher_voice(settings.assets.piper_voice), asr, count)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    log.info("wrote %d voiced examples to %s", len(rows), path)
    return rows


def _features(run: Path, rows: list[dict], settings, name: str = "features") -> np.ndarray:  # noqa: ANN001
    from tqdm import tqdm

    folder = run / name
    folder.mkdir(parents=True, exist_ok=True)
    chunks = math.ceil(len(rows) / CHUNK)
    todo = [i for i in range(chunks) if not (folder / f"chunk_{i:05d}.npz").is_file()]
    if todo:
        from agent.turn_detector import EndOfTurnModel
        from model.backbone import load_backbone

        backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
        model = EndOfTurnModel(backbone, settings.turn.system_prompt, quantize=settings.turn.quantize)
        for i in tqdm(todo, desc="features", unit="chunk"):
            texts = [r["text"] for r in rows[i * CHUNK : (i + 1) * CHUNK]]
            x = model.features(texts).numpy().astype(np.float32)
            tmp = folder / f"chunk_{i:05d}.tmp.npz"
            np.savez(tmp, x=x)
            tmp.replace(folder / f"chunk_{i:05d}.npz")
    return np.concatenate([np.load(folder / f"chunk_{i:05d}.npz")["x"] for i in range(chunks)])


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: the chance a complete example outscores an unfinished one (ties count half)."""
    negatives = np.sort(scores[~labels.astype(bool)])
    positives = scores[labels.astype(bool)]
    below = np.searchsorted(negatives, positives, side="left")
    not_above = np.searchsorted(negatives, positives, side="right")
    return float(np.mean((below + not_above) / 2) / len(negatives))


def _train_head(run: Path, x: np.ndarray, rows: list[dict], config: TrainTurnConfig) -> tuple:
    import torch
    from safetensors.torch import load_file, save_file

    from model.turn_head import TurnHead, TurnHeadConfig

    torch.manual_seed(config.seed)
    y = np.array([r["complete"] for r in rows], dtype=np.float32)
    w = np.array([r["weight"] for r in rows], dtype=np.float32)
    groups = np.array([r["group"] for r in rows])
    rng = np.random.default_rng(config.seed)
    unique = np.unique(groups)
    val_groups = set(rng.choice(unique, int(len(unique) * config.val_fraction), replace=False).tolist())
    val = np.array([g in val_groups for g in groups])
    # Each class weighs the same in the loss: the probability is calibrated for balanced priors.
    w = w * np.where(y == 1, 0.5 / (w * y).sum(), 0.5 / (w * (1 - y)).sum()) * len(y)
    head = TurnHead(TurnHeadConfig())
    head.mean.copy_(torch.from_numpy(x[~val].mean(0)))
    head.std.copy_(torch.from_numpy(x[~val].std(0) + 1e-3))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state_path, best_path = run / "head_state.pt", run / "head.safetensors"
    start, best = 0, (float("inf"), -1)
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = state["epoch"] + 1, tuple(state["best"])
        log.info("resuming the head at epoch %d", start)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    train_idx = np.flatnonzero(~val)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    for epoch in range(start, config.epochs):
        head.train()
        order = rng.permutation(train_idx)
        for i in range(0, len(order), config.batch):
            b = torch.from_numpy(order[i : i + config.batch])
            loss = (loss_fn(head(xt[b]), yt[b]) * wt[b]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            vb = torch.from_numpy(np.flatnonzero(val))
            val_loss = float((loss_fn(head(xt[vb]), yt[vb]) * wt[vb]).mean())
        if val_loss < best[0]:
            best = (val_loss, epoch)
            save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(best_path))
        state = {"head": head.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best}
        torch.save(state, state_path)
        if epoch % 10 == 0 or epoch == config.epochs - 1:
            log.info("epoch %d: validation loss %.4f (best %.4f at epoch %d)", epoch, val_loss, *best)
    head.load_state_dict(load_file(str(best_path)))
    head.eval()
    with torch.no_grad():
        p = torch.sigmoid(head(xt[torch.from_numpy(np.flatnonzero(val))])).numpy()
    yv, sure = y[val], (w[val] > w[val].min() * 1.5) | (y[val] == 1)
    zero_shot = np.exp(np.logaddexp(x[val, -2], x[val, -1]))  # P(<|im_end|>) + P(. ? !)
    metrics = {
        "examples": len(rows),
        "validation_examples": int(val.sum()),
        "best_epoch": int(best[1]),
        "validation_auc": round(_auc(p, yv), 4),
        "validation_auc_zero_shot": round(_auc(zero_shot, yv), 4),
        "validation_auc_sure": round(_auc(p[sure], yv[sure]), 4),
        "validation_auc_sure_zero_shot": round(_auc(zero_shot[sure], yv[sure]), 4),
    }
    log.info("head: %s", metrics)
    return head, metrics


def _choose_policy(run: Path, settings, head) -> tuple[dict, dict]:  # noqa: ANN001 - Settings, TurnHead
    """Score the dev fragments (text with whisper's full stop), hear the voiced dev cases; pick the policy."""
    from agent.turn_detector import EndOfTurnModel
    from agent.turn_eval import choose_policy, hear_dev_cases
    from model.backbone import load_backbone
    from training.turn_data import dev_sets

    backbone = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device)
    model = EndOfTurnModel(backbone, settings.turn.system_prompt, quantize=settings.turn.quantize, head=head)
    pauses, _ = dev_sets()
    fragments = [model.probability(f + ".") for f, _ in pauses]
    completes, commas = hear_dev_cases(settings, model)
    policy, figures = choose_policy(fragments, completes, commas)
    (run / "policy.json").write_text(json.dumps({"policy": policy, "dev": figures}, indent=1) + "\n")
    log.info("policy %s: dev %s", policy, figures)
    return policy, figures


def run_train_turn(args: argparse.Namespace, settings) -> int:  # noqa: ANN001 - agent.settings.Settings
    """Train (or resume) the end-of-turn head; export it with its card data if asked."""
    import torch

    from model.turn_head import TurnHeadCard, WaitPolicy, save_head

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = TrainTurnConfig(
        run=args.run,
        epochs=args.epochs,
        threads=args.threads,
        limit=args.limit,
        policy=not args.no_policy,
        voiced=args.voiced,
    )
    torch.set_num_threads(config.threads)
    run = Path(config.run)
    run.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = _examples(run, config.seed)
    rows = rows[: config.limit] if config.limit > 0 else rows
    x = _features(run, rows, settings)
    if config.voiced > 0:
        voiced = _voiced(run, settings, config.voiced)
        x = np.concatenate([x, _features(run, voiced, settings, "features_voiced")])
        rows = rows + voiced
    log.info("features %s ready after %.0f s", x.shape, time.perf_counter() - started)
    head, metrics = _train_head(run, x, rows, config)
    card = TurnHeadCard(config=head.config, quantized_backbone=settings.turn.quantize, metrics=metrics)
    if config.policy:
        policy, figures = _choose_policy(run, settings, head)
        card.policy = WaitPolicy(**policy)
        card.metrics["dev_policy"] = figures
    card.metrics["train_minutes"] = round((time.perf_counter() - started) / 60, 1)
    if args.export:
        save_head(head, card, Path(args.export) / "turn_head.safetensors")
        print(f"exported {Path(args.export) / 'turn_head.safetensors'} and turn_head.json")
    print(json.dumps(card.metrics))
    return 0
