"""Bringing any audio to the pipeline's format: 16 kHz mono float32, resampled with soxr."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audio_io.frames import SAMPLE_RATE, AudioError


def as_float32(samples: np.ndarray) -> np.ndarray:
    """``samples`` as float32 in [-1, 1]: integer PCM is scaled by its full range, floats are kept."""
    samples = np.asarray(samples)
    kind = samples.dtype.kind
    if kind == "f":
        return samples.astype(np.float32, copy=False)
    if kind == "i":
        scale = float(np.iinfo(samples.dtype).max) + 1.0  # int16: 32768, so -32768 maps to exactly -1
        return (samples.astype(np.float32) / scale).astype(np.float32, copy=False)
    if kind == "u":
        # Unsigned PCM (8-bit WAV) is centred on half its range.
        half = (float(np.iinfo(samples.dtype).max) + 1.0) / 2.0
        return ((samples.astype(np.float32) - half) / half).astype(np.float32, copy=False)
    if kind == "b":
        return samples.astype(np.float32)
    raise AudioError(f"audio samples of dtype {samples.dtype} cannot be used; pass an int or float array")


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix ``samples`` down to mono and resample it to 16 kHz, as contiguous float32.

    ``samples`` has shape (n,) or (n, channels) and any int or float dtype. Empty in, empty out.
    """
    if sample_rate is None or sample_rate <= 0:
        raise AudioError(f"sample rate must be a positive number of Hz, got {sample_rate!r}")
    samples = np.asarray(samples)
    if samples.ndim > 2:
        raise AudioError(
            f"audio must have shape (samples,) or (samples, channels), got {samples.shape}; pass one clip at a time"
        )
    audio = as_float32(samples)
    if audio.ndim == 2:
        # Mean, not sum: a stereo recording of one voice keeps its level.
        audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] else np.zeros(len(audio), np.float32)
    if audio.size == 0:
        return np.zeros(0, np.float32)
    if not np.isfinite(audio).all():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(
            f"audio contains {bad} NaN or infinite samples; fix the source (a failed decode or a "
            "division by zero upstream) or replace them with np.nan_to_num before passing it in"
        )
    if sample_rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """Read an audio file (any format soundfile reads) as 16 kHz mono float32."""
    import soundfile as sf

    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not an audio file" if path.is_dir() else "does not exist"
        raise AudioError(f"audio file {path} {what}; check the path")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        formats = ", ".join(sorted(sf.available_formats()))
        raise AudioError(
            f"cannot read {path} as audio ({exc}); it may be corrupt or in an unsupported format. "
            f"Convert it to WAV or FLAC (readable formats: {formats})"
        ) from exc
    if len(samples) == 0:
        raise AudioError(f"the file has no audio: {path} holds 0 samples; record or pick another file")
    try:
        return to_mono_16k(samples, rate)
    except AudioError as exc:
        raise AudioError(f"{path}: {exc}") from exc
