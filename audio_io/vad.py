"""Streaming voice activity detection: silero VAD (onnx) per 32 ms chunk, with hysteresis.

The model is recurrent: each 512-sample chunk is scored together with the last 64 samples of the
previous chunk (its "context") and a (2, 1, 128) state carried from call to call. Both are kept
here explicitly, so the detector can be reset, and frames of any length can be fed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from audio_io.frames import FRAME_SAMPLES, SAMPLE_RATE, AudioError, AudioFrame

CHUNK = FRAME_SAMPLES  # silero's chunk at 16 kHz (512 samples, 32 ms)
CONTEXT = 64  # samples of the previous chunk the v5/v6 model sees in front of each chunk at 16 kHz
STATE_SHAPE = (2, 1, 128)  # the model's recurrent state for a batch of one


@dataclass
class VadEvent:
    """Speech starting or ending, back-dated to when it really happened."""

    kind: Literal["speech_start", "speech_end"]
    t: float  # when speech really started/ended (back-dated to the frame boundary)
    detected_at: float  # end time of the frame that confirmed it
    probability: float  # speech probability of the confirming chunk


def _session(model_path: str | os.PathLike | None) -> Any:
    """An onnxruntime session on the silero model, single-threaded (32 ms chunks gain nothing from more)."""
    import onnxruntime

    from model.assets import VAD, AssetError, locate

    path = locate(VAD, model_path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise AssetError(
            f"cannot load the silero VAD model {path} ({exc}); point --vad-model at a silero v5/v6 .onnx "
            f"file or reinstall it with `{VAD.install_hint()} --force-reinstall`"
        ) from exc


class StreamingVad(ABC):
    """Feed frames, get speech_start / speech_end events; subclasses say how speech-like a chunk is.

    Speech starts when the probability stays >= ``threshold`` for ``min_speech_ms`` (back-dated to the
    first such chunk) and ends when it stays < ``neg_threshold`` for ``min_silence_ms`` (back-dated
    to the end of the last chunk that was not silence).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_ms: int = 96,
        min_silence_ms: int = 160,
    ):
        if not 0.0 <= neg_threshold <= threshold <= 1.0:
            raise ValueError(
                f"VAD thresholds must satisfy 0 <= neg_threshold <= threshold <= 1, got "
                f"neg_threshold={neg_threshold}, threshold={threshold}"
            )
        if min_speech_ms < 0 or min_silence_ms < 0:
            raise ValueError(f"VAD durations must be >= 0 ms, got {min_speech_ms} and {min_silence_ms}")
        self.threshold = threshold  # probability that opens speech
        self.neg_threshold = neg_threshold  # probability below which a chunk counts as silence
        self.min_speech = round(min_speech_ms * SAMPLE_RATE / 1000)  # samples of speech needed to start
        self.min_silence = round(min_silence_ms * SAMPLE_RATE / 1000)  # samples of silence needed to end
        self.reset()

    @abstractmethod
    def probability(self, chunk: np.ndarray) -> float:
        """Score one 512-sample chunk, advancing the model's state (no event logic)."""

    def reset(self) -> None:
        """Forget everything: buffered samples and the speech/silence decision."""
        self._pending = np.zeros(0, np.float32)  # samples waiting for a full chunk
        self._pending_t = 0.0  # time of _pending[0]
        self._in_speech = False
        self._run_start: float | None = None  # start of the current run of speech (or silence) chunks
        self._run = 0  # samples in that run
        self.last_probability: float = 0.0  # probability of the last chunk scored
        self.silence_s = 0.0  # seconds of the latest run of silent chunks (p < neg_threshold); 0 after speech

    @property
    def in_speech(self) -> bool:
        """Whether speech has started and not yet ended."""
        return self._in_speech

    @property
    def speaking(self) -> bool:
        """Whether the last chunk scored sounded like speech (p >= threshold), whatever the hysteresis says."""
        return self.last_probability >= self.threshold

    def process(self, frame: AudioFrame) -> list[VadEvent]:
        """Feed a frame of any length; returns the events its complete chunks confirm."""
        samples = np.asarray(frame.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise AudioError(f"the VAD takes mono frames of shape (n,), got {samples.shape}")
        if not np.isfinite(samples).all():
            raise AudioError(f"frame at t={frame.t:.3f} s contains NaN or infinite samples; fix the audio source")
        if not len(self._pending):
            self._pending_t = frame.t
        self._pending = np.concatenate([self._pending, samples])
        events: list[VadEvent] = []
        while len(self._pending) >= CHUNK:
            chunk, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            start = self._pending_t
            self._pending_t += CHUNK / SAMPLE_RATE
            event = self._decide(self.probability(chunk), start)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VadEvent]:
        """Score a last partial chunk (zero-padded), e.g. at the end of a file."""
        if not len(self._pending):
            return []
        n = CHUNK - len(self._pending)
        return self.process(AudioFrame(np.zeros(n, np.float32), self._pending_t + len(self._pending) / SAMPLE_RATE))

    def _decide(self, p: float, start: float) -> VadEvent | None:
        """Hysteresis on one chunk's probability ``p``; the chunk covers [start, start + 32 ms)."""
        self.last_probability = p
        self.silence_s = self.silence_s + CHUNK / SAMPLE_RATE if p < self.neg_threshold else 0.0
        end = start + CHUNK / SAMPLE_RATE
        # Outside speech a run counts speech chunks; inside, silent chunks.
        counts = p < self.neg_threshold if self._in_speech else p >= self.threshold
        if not counts:
            self._run_start, self._run = None, 0
            return None
        if self._run_start is None:
            self._run_start = start
        self._run += CHUNK
        if self._run < (self.min_silence if self._in_speech else self.min_speech):
            return None
        kind: Literal["speech_start", "speech_end"] = "speech_end" if self._in_speech else "speech_start"
        event = VadEvent(kind, self._run_start, end, p)
        self._in_speech = not self._in_speech
        self._run_start, self._run = None, 0
        return event


class SileroVad(StreamingVad):
    """:class:`StreamingVad` scored by the silero model (onnx), its recurrent state kept explicitly."""

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_ms: int = 96,
        min_silence_ms: int = 160,
    ):
        self._session = _session(model_path)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        super().__init__(threshold, neg_threshold, min_speech_ms, min_silence_ms)

    @classmethod
    def from_settings(cls, settings: Any) -> SileroVad:
        """A detector configured by a :class:`agent.settings.Settings` (its ``vad`` and ``assets``)."""
        vad = settings.vad
        return cls(settings.assets.vad, vad.threshold, vad.neg_threshold, vad.min_speech_ms, vad.min_silence_ms)

    def reset(self) -> None:
        """Forget everything: model state, buffered samples and the speech/silence decision."""
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        super().reset()

    def probability(self, chunk: np.ndarray) -> float:
        """Score one 512-sample chunk, advancing the model's state (no event logic)."""
        x = np.concatenate([self._context, chunk])[None, :]
        out, state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._state = state
        self._context = x[0, -CONTEXT:]
        return float(out[0, 0])
