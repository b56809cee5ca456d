"""Codec speed: median real-time factors of encode, whole decode and streaming decode.

Usage: .venv/bin/python benchmarks/codec_rtf.py [--threads 1] [--repeats 5] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from audio_io.resample import to_mono_16k
    from model.codec import load_codec
    from training.evaluate import stream_decode_seconds
    from training.teacher import teacher_voice

    codec = load_codec(args.checkpoint, allow_untrained=True)
    utt = teacher_voice().speak(
        "Sure, I have set a timer for twenty minutes. Would you like me to remind you about the laundry "
        "as well, or is there anything else I can do for you this evening?"
    )
    audio = torch.from_numpy(to_mono_16k(utt.samples, utt.sample_rate))[None]
    seconds = audio.shape[1] / 16000
    result = {"audio_s": round(seconds, 2), "threads": args.threads}
    runs: dict[str, list[float]] = {"encode": [], "decode": [], "stream1": [], "stream3": [], "stream10": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        codes = codec.encode(audio)
        runs["encode"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        codec.decode(codes)
        runs["decode"].append(time.perf_counter() - t0)
        for chunk in (1, 3, 10):
            runs[f"stream{chunk}"].append(stream_decode_seconds(codec, codes[0], chunk))
    for name, values in runs.items():
        result[f"{name}_rtf_median"] = round(statistics.median(values) / seconds, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
