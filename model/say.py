"""``ttt say``: the talker voices a given text (text forced, audio diffused), timed; and its benchmark."""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.generate import AudioChunk, GenerationOptions
from model.talker import SAY_MESSAGES, Talker

log = logging.getLogger(__name__)

# One-sentence replies for the benchmark: typical assistant answers, 10-20 words each.
BENCH_SENTENCES = [
    "Sure, the meeting is moved to three o'clock tomorrow afternoon.",
    "It will be sunny today, with a light breeze and a high of twenty degrees.",
    "I have set a timer for ten minutes, and I will tell you when it rings.",
    "The nearest pharmacy is two blocks north, and it stays open until nine.",
    "Paris is the capital of France, and it is famous for its museums.",
]


@dataclass
class SayResult:
    """One voiced text and its timings."""

    samples: np.ndarray  # float32 mono at ``sample_rate``
    sample_rate: int  # the codec's rate (16 kHz)
    text: str  # the text voiced
    first_audio_s: float  # from the call (model loaded) to the first audio sample ready
    total_s: float  # wall time of the whole generation, codec decoding included
    frames: int  # audio frames generated
    passes: int  # backbone forward passes
    first_audio_cpu_s: float = 0.0  # CPU time of the process until the first sample (see bench_say)
    cpu_s: float = 0.0  # CPU time of the process for the whole generation

    @property
    def audio_s(self) -> float:
        """Duration of the audio."""
        return len(self.samples) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: generation time over audio duration (< 1 is faster than real time)."""
        return self.total_s / self.audio_s if self.audio_s > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        """The ``ttt say --json`` line."""
        return {
            "first_audio_s": round(self.first_audio_s, 4),
            "audio_s": round(self.audio_s, 3),
            "rtf": round(self.rtf, 4),
            "text": self.text,
        }


def say(
    talker: Talker,
    codec: Any,
    text: str,
    options: GenerationOptions | None = None,
    messages: list[dict[str, str]] | None = None,
) -> SayResult:
    """Voice ``text`` with ``talker`` and ``codec``; timings start when this is called."""
    if not text or not text.strip():
        raise ValueError("nothing to say: the text is empty")
    start, cpu_start = time.perf_counter(), time.process_time()
    first: float | None = None
    first_cpu = 0.0
    pieces: list[np.ndarray] = []
    frames = 0
    stats: dict[str, Any] = {}
    messages = messages if messages is not None else SAY_MESSAGES
    stream = talker.stream(messages, codec, text=text, options=options, stats=stats)
    with torch.inference_mode():
        for event in stream:
            if isinstance(event, AudioChunk):
                frames += len(event.codes)
                if len(event.samples):
                    if first is None:
                        first = time.perf_counter() - start
                        first_cpu = time.process_time() - cpu_start
                    pieces.append(event.samples)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    passes = int(stats.get("passes", 0))
    return SayResult(samples, int(codec.sample_rate), text, first or total, total, frames, passes, first_cpu, cpu)


def load_for_say(settings: Any) -> tuple[Talker, Any, list[str]]:
    """The talker and codec ``ttt say`` uses, and notes on what is untrained."""
    from model.codec import CHECKPOINT, load_codec
    from model.talker import load_talker

    notes = []
    path = settings.assets.codec
    if path is None and not CHECKPOINT.is_file():
        notes.append(f"no trained codec at {CHECKPOINT}: using an UNTRAINED codec (the audio is noise)")
    codec = load_codec(path, allow_untrained=True)
    talker, trained = load_talker(settings, codec)
    talker.prime(SAY_MESSAGES)  # the fixed prompt's KV cache is part of loading, not of each call
    if not trained:
        notes.append("no trained talker checkpoint: the audio parameters are random (timing only)")
    return talker, codec, notes


def bench_say(settings: Any, repeats: int = 3, sentences: list[str] | None = None) -> dict[str, Any]:
    """Median first-audio latency and RTF of ``say`` over ``sentences`` x ``repeats`` runs.

    Wall-clock figures are what a user sees on this machine now. With one torch thread the
    process's CPU time is what the same run takes on an idle core, so the ``*_cpu`` figures
    (CPU time in place of wall time) stay comparable when the machine is shared.
    """
    talker, codec, notes = load_for_say(settings)
    options = GenerationOptions.from_settings(settings.talker)
    say(talker, codec, "Warm up.", options)  # first call pays one-off allocations
    runs = []
    for _ in range(repeats):
        for text in sentences or BENCH_SENTENCES:
            runs.append(say(talker, codec, text, options))
    first = [r.first_audio_s for r in runs]
    rtf = [r.rtf for r in runs]
    return {
        "runs": len(runs),
        "first_audio_s_median": round(statistics.median(first), 4),
        "first_audio_s_max": round(max(first), 4),
        "rtf_median": round(statistics.median(rtf), 4),
        "rtf_max": round(max(rtf), 4),
        "audio_s_median": round(statistics.median(r.audio_s for r in runs), 3),
        "first_audio_cpu_s_median": round(statistics.median(r.first_audio_cpu_s for r in runs), 4),
        "rtf_cpu_median": round(statistics.median(r.cpu_s / r.audio_s for r in runs if r.audio_s), 4),
        "passes_median": statistics.median(r.passes for r in runs),
        "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "notes": notes,
    }
