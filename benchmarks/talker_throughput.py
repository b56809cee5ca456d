"""Training throughput of the talker: today's code beside the code it replaced, in one run.

    .venv/bin/python benchmarks/talker_throughput.py --data data/aligned --rounds 4

The baseline is the talker as it was at commit 9e3139a (fixed 4/3 then 8/10 text/frame
interleaving under the say prompt, right-padded batches of 8 random clips, LoRA r=16), read from git
into a temporary package, so both run on the same clips, backbone and machine, alternating step by
step. Each step is loss + backward + AdamW on about 2,000 real positions, one torch thread.
Reported per variant (medians over steps): real (non-padding) positions per CPU second and per
wall second, and seconds of speech per CPU second (what an epoch of the corpus costs).
With one thread, CPU time is what the step takes on an idle core, so it stays comparable on a
shared machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BASELINE_COMMIT = "9e3139a"
ROOT = Path(__file__).resolve().parents[1]


def load_baseline() -> tuple:
    """The old talker and sequence modules, from git, as the package ``ttt_baseline``."""
    folder = Path(tempfile.mkdtemp()) / "ttt_baseline"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("talker", "sequence", "sampler"):
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:model/{name}.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        for other in ("talker", "sequence", "sampler"):
            source = source.replace(f"from model.{other} import", f"from ttt_baseline.{other} import")
        (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("ttt_baseline.talker"), importlib.import_module("ttt_baseline.sequence")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/aligned")
    parser.add_argument("--rounds", type=int, default=4, help="steps per variant (alternating)")
    parser.add_argument("--clips", type=int, default=400, help="clips to draw batches from")
    parser.add_argument("--positions", type=int, default=2048, help="real positions per step (new code)")
    parser.add_argument("--with-r16", action="store_true", help="also LoRA r=16 (about 3 GB more memory)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from model.backbone import load_backbone
    from model.codec import load_codec
    from model.sequence import pack
    from model.talker import NoiseConfig, Talker, default_config
    from training.align import read_aligned
    from training.train_talker import Batches, examples_from, matmul_dtype, mixed_precision

    old_talker_mod, old_seq = load_baseline()
    codec, backbone = load_codec(), load_backbone()
    items = read_aligned(args.data)[: args.clips]
    rng = random.Random(0)

    def new_variant(rank: int, precision: str = "fp32"):
        talker = Talker.from_backbone(backbone, default_config(codec, lora_rank=rank, lora_alpha=2 * rank)).train()
        autocast = mixed_precision(talker, matmul_dtype(precision))
        examples, _ = examples_from(items, talker.tokenizer, talker.prompt_ids([]), talker.end_token, 64)
        noise = NoiseConfig()
        batches = Batches(examples, args.positions, seed=rank)  # what training draws: length-sorted steps

        def batch():
            packed = pack([e.positions for e in batches.next()])
            frames = int((packed.tensors["kinds"] == 3).sum())

            def loss():
                with autocast():
                    return talker.loss(packed, noise)["loss"]

            return loss, packed.real, frames

        return talker, batch

    def old_variant():
        cfg = old_talker_mod.TalkerConfig(groups=codec.groups, codebook_size=codec.codebook_size)
        chunking = old_seq.Chunking(4, 3, 8, 10)  # the old settings.talker defaults
        talker = old_talker_mod.Talker.from_backbone(backbone, cfg, chunking).train()
        prompt = talker.prompt_ids(old_talker_mod.SAY_MESSAGES)
        noise = old_talker_mod.NoiseConfig()
        pyrng = random.Random(1)
        tok = talker.tokenizer

        def batch():
            chosen = [rng.choice(items) for _ in range(8)]
            seqs = []
            for it in chosen:
                reply = tok(it.text, add_special_tokens=False)["input_ids"]
                codes = torch.as_tensor(it.codes.astype("int64"))
                seqs.append(talker.training_sequence(prompt, reply, codes, noise, pyrng))
            collated = old_seq.collate(seqs)
            real = int(collated["valid"].sum())
            frames = sum(len(it.codes) for it in chosen)
            return (lambda: talker.loss(collated, noise)["loss"]), real, frames

        return talker, batch

    variants = {
        "baseline (9e3139a)": old_variant(),
        "sorted rows r=32, fp32": new_variant(32),
        "sorted rows r=32, bf16 (default on AMX)": new_variant(32, "bf16"),
    }
    if args.with_r16:
        variants["sorted rows r=16"] = new_variant(16)
    optims = {
        name: torch.optim.AdamW([p for p in talker.parameters() if p.requires_grad], lr=1e-4)
        for name, (talker, _) in variants.items()
    }
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, (_, batch) in variants.items():
            loss_fn, real, frames = batch()
            c0, w0 = time.process_time(), time.perf_counter()
            loss = loss_fn()
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            optims[name].step()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            results[name].append({"real": real, "speech_s": frames / 12.5, "cpu": cpu, "wall": wall})
    summary = {}
    for name, runs in results.items():
        runs = runs[1:]
        summary[name] = {
            "positions_per_cpu_s": round(statistics.median(r["real"] / r["cpu"] for r in runs), 1),
            "positions_per_wall_s": round(statistics.median(r["real"] / r["wall"] for r in runs), 1),
            "speech_s_per_cpu_s": round(statistics.median(r["speech_s"] / r["cpu"] for r in runs), 3),
            "steps": len(runs),
        }
    base = summary["baseline (9e3139a)"]
    for row in summary.values():
        row["speech_ratio_vs_baseline"] = round(row["speech_s_per_cpu_s"] / base["speech_s_per_cpu_s"], 2)
        row["positions_ratio_vs_baseline"] = round(row["positions_per_cpu_s"] / base["positions_per_cpu_s"], 2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
