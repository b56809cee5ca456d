"""The unit of sound that flows through the agent: timestamped 16 kHz mono float32 frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000  # every frame in the pipeline is 16 kHz mono
FRAME_SAMPLES = 512  # 32 ms: silero VAD's chunk size at 16 kHz


class AudioError(ValueError):
    """Audio that cannot be used as given (wrong rate, NaNs, empty...); the message says what to do."""


@dataclass(frozen=True)
class AudioFrame:
    """``samples`` (float32, mono, 16 kHz) captured starting at ``t`` seconds on the source's clock."""

    samples: np.ndarray  # shape (n,), float32 in [-1, 1]
    t: float  # capture time of the first sample, seconds on the source clock

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE

    @property
    def end(self) -> float:
        """Capture time just after the last sample."""
        return self.t + self.duration
