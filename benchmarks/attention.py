"""Grouped-query attention with and without copying the keys and values, side by side in one process.

transformers reads ``TRANSFORMERS_SDPA_FORCE_GQA`` at every attention call, so the two ways
alternate run by run on the same weights. Measured in CPU seconds of one torch thread, so the
figures hold on a shared machine:

- the cascade's first text: one prefill of a 15-token user turn after a cached history of N positions;
- the talker's ``say``: first audio and real-time factor (diffusion passes attend over the reply so far).

    PYTHONPATH=. .venv/bin/python benchmarks/attention.py [--checkpoint TALKER.safetensors] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from agent.settings import load_settings
from model.backbone import GQA_WITHOUT_COPY, load_backbone
from model.kv_cache import PreallocatedCache

HISTORY_POSITIONS = (30, 300, 600, 1000)
MODES = {"copy": "0", "broadcast": "1"}


def prefill_cpu_s(model, history: int) -> float:
    """CPU seconds of one 15-token prefill after ``history`` cached positions."""
    cache = PreallocatedCache(model.config, 1200)
    with torch.inference_mode():
        model(torch.randint(0, 1000, (1, history)), past_key_values=cache, use_cache=True, logits_to_keep=1)
        start = time.process_time()
        model(torch.randint(0, 1000, (1, 15)), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="training/seeds/talker2.safetensors", help="talker for the say runs")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    name, _ = GQA_WITHOUT_COPY
    settings = load_settings(overrides=[f"talker.checkpoint={args.checkpoint}"])
    model = load_backbone(settings.assets.llm, settings.assets.cache_dir, settings.device).model

    prefill: dict[str, dict[int, list[float]]] = {m: {h: [] for h in HISTORY_POSITIONS} for m in MODES}
    for _ in range(args.repeats):
        for mode, value in MODES.items():
            os.environ[name] = value
            for history in HISTORY_POSITIONS:
                prefill[mode][history].append(prefill_cpu_s(model, history))

    from model.generate import GenerationOptions
    from model.say import BENCH_SENTENCES, load_for_say, say

    talker, codec, notes = load_for_say(settings)
    options = GenerationOptions.from_settings(settings.talker)
    say(talker, codec, "Warm up.", options)
    runs: dict[str, list] = {m: [] for m in MODES}
    for _ in range(max(1, args.repeats // 2)):
        for text in BENCH_SENTENCES:
            for mode, value in MODES.items():
                os.environ[name] = value
                runs[mode].append(say(talker, codec, text, options))

    result = {
        "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "notes": notes,
        "prefill_15_tokens_cpu_ms": {
            m: {h: round(1000 * statistics.median(v), 1) for h, v in by.items()} for m, by in prefill.items()
        },
        "say": {
            m: {
                "runs": len(r),
                "first_audio_cpu_s_median": round(statistics.median(x.first_audio_cpu_s for x in r), 4),
                "rtf_cpu_median": round(statistics.median(x.cpu_s / x.audio_s for x in r if x.audio_s), 4),
            }
            for m, r in runs.items()
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
