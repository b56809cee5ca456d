"""Causal STFT, log-mel and overlap-add iSTFT at 16 kHz (hop 10 ms), plus Griffin-Lim.

Frame ``i`` covers samples ``[(i + 1) * hop - n_fft, (i + 1) * hop)``: it ends where its hop ends,
so nothing in frame ``i`` comes from the future, and ``T`` samples (a multiple of ``hop``) give
exactly ``T / hop`` frames.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16_000
N_FFT = 640  # 40 ms window, 4x overlap
HOP = 160  # 10 ms: 8 mel frames per 80 ms codec frame
N_MELS = 80


@functools.lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """HTK mel filters ``[n_mels, n_fft // 2 + 1]``, area-normalised (Slaney style)."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    fb = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    with torch.inference_mode(False):  # cached: must stay usable by autograd if first made in inference
        return torch.tensor(fb, dtype=torch.float32)


@functools.lru_cache(maxsize=4)
def window(n_fft: int = N_FFT) -> torch.Tensor:
    """The periodic Hann analysis/synthesis window."""
    with torch.inference_mode(False):  # cached: must stay usable by autograd if first made in inference
        return torch.hann_window(n_fft, periodic=True)


def stft(audio: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Causal complex STFT: ``[B, T]`` (T a multiple of ``hop``) -> ``[B, n_fft // 2 + 1, T // hop]``."""
    padded = F.pad(audio, (n_fft - hop, 0))
    return torch.stft(padded, n_fft, hop, window=window(n_fft).to(audio.device), center=False, return_complex=True)


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` at 16 kHz -> natural-log magnitude mel ``[B, 80, T // 160]``."""
    mag = stft(audio).abs()
    mel = torch.matmul(mel_filterbank().to(audio.device), mag)
    return torch.log(mel.clamp(min=1e-5))


def istft(spec: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Inverse of :func:`stft` by windowed overlap-add: ``[B, n_fft // 2 + 1, M]`` -> ``[B, M * hop]``.

    The last ``n_fft / hop - 1`` hops lack their later frames; they are normalised by the window
    energy actually present (clamped), identically in whole and chunked decoding.
    """
    frames = torch.fft.irfft(spec, n=n_fft, dim=1) * window(n_fft).to(spec.device)[None, :, None]
    m = frames.shape[-1]
    length = (m - 1) * hop + n_fft
    audio = F.fold(frames, (1, length), (1, n_fft), stride=(1, hop)).reshape(frames.shape[0], length)
    wsq = (window(n_fft).to(spec.device) ** 2)[None, :, None].expand(1, n_fft, m)
    env = F.fold(wsq, (1, length), (1, n_fft), stride=(1, hop)).reshape(1, length)
    audio = audio / env.clamp(min=0.1)
    return audio[:, n_fft - hop :]


def griffin_lim(logmel: torch.Tensor, iterations: int = 32) -> torch.Tensor:
    """Zero-training vocoder: ``[B, 80, M]`` log-mel -> ``[B, M * 160]`` by Griffin-Lim phase recovery."""
    fb = mel_filterbank().to(logmel.device)
    mag = torch.matmul(torch.linalg.pinv(fb), logmel.exp()).clamp(min=0.0)
    gen = torch.Generator().manual_seed(0)  # fixed initial phase: the same mel gives the same audio
    phase = torch.exp(2j * np.pi * torch.rand(mag.shape, generator=gen)).to(logmel.device)
    audio = istft(mag * phase)
    for _ in range(iterations):
        spec = stft(audio)
        audio = istft(mag * torch.exp(1j * spec.angle()))
    return audio
