"""The training run's validation figures for any talker checkpoint, on the current aligned corpus.

    PYTHONPATH=. .venv/bin/python benchmarks/talker_val.py training/seeds/talker2.safetensors --data data/aligned

Validates on the clips ``ttt train talker`` holds out (corpus id divisible by 97, at most 64) with
the same fixed noise, so a checkpoint can be scored on data it was not trained against: after the
corpus is voiced or aligned again, the old weights' figures on the new data are the baseline the
run's next validations are read against. Prints one JSON line (``training.train_talker.validate``).
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from model.backbone import cast_frozen, load_backbone
from model.talker import Talker, TalkerConfig, saved_config
from training.align import read_aligned
from training.train_talker import TrainConfig, examples_from, matmul_dtype, mixed_precision, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="talker .safetensors (EMA weights), or a run's last.pt (its live weights)")
    parser.add_argument("--data", default="data/aligned", help="aligned corpus (ttt data align)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state = torch.load(args.checkpoint, weights_only=False) if args.checkpoint.endswith(".pt") else None
    config = TalkerConfig(**state["talker_config"]) if state else saved_config(args.checkpoint)
    if config is None:
        raise SystemExit(f"{args.checkpoint}: not a talker checkpoint")
    backbone = load_backbone(None, None)
    talker = Talker.from_backbone(backbone, config)
    if state:  # a run's resumable checkpoint: its live weights, not the EMA the run exports
        talker.load_state_dict(state["trainable"], strict=False)
    else:
        talker.load_trainable(args.checkpoint)
    prompt = talker.prompt_ids([])
    dtype = matmul_dtype("auto")
    autocast = mixed_precision(talker, dtype)
    teacher = copy.deepcopy(backbone.model)  # the untouched backbone, as the run's text KL uses
    if dtype != torch.float32:
        cast_frozen(teacher, dtype, keep=(teacher.get_input_embeddings().weight,))
    examples, _ = examples_from(read_aligned(args.data), talker.tokenizer, prompt, talker.end_token, config.max_span)
    val = [e for e in examples if e.id % 97 == 0][: TrainConfig().val_items]
    with autocast():
        print(json.dumps(validate(talker, val, 0, len(prompt), teacher=teacher)))


if __name__ == "__main__":
    main()
