"""The speech codec: 16 kHz audio <-> frames of G FSQ codes at 12.5 Hz, with a streaming decoder."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.assets import AssetError
from model.codec.decoder import MEL_PER_FRAME, MelDecoder
from model.codec.dsp import HOP, N_FFT, N_MELS, SAMPLE_RATE, griffin_lim, log_mel, window
from model.codec.encoder import Encoder
from model.codec.fsq import FSQ
from model.codec.layers import CausalConv1d
from model.codec.vocoder import Vocoder

log = logging.getLogger(__name__)

FRAME_SAMPLES = HOP * MEL_PER_FRAME  # 1280 samples = 80 ms
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "codec.safetensors"
GUESS_FADE_SAMPLES = 160  # 10 ms over which a guessed tail hands over to the true samples
CTC_PER_FRAME = 4  # CTC steps per 80 ms frame (50 Hz): phonemes come faster than 12.5 a second
# espeak phoneme symbols the CTC head predicts (Piper's phoneme_id_map minus stress, pauses, punctuation)
PHONEMES = (
    "abcdefhijklmnopqrstuvwxyzæçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛ"
    "ʜʝʟʡʢʲːˑ˞βθχᵻⱱ\u0327\u0303\u032a\u032f\u0329ʰˤ"
)


@dataclass
class CodecConfig:
    """Sizes of the codec; saved as ``codec.json`` beside the weights."""

    groups: int = 4  # G: FSQ code groups per 80 ms frame
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # FSQ levels per group (K = product)
    enc_dim: int = 256  # encoder width at 12.5 Hz
    enc_blocks: int = 4  # encoder ConvNeXt blocks at 12.5 Hz
    dec_dim: int = 320  # decoder width at 12.5 Hz
    dec_blocks: int = 4  # decoder ConvNeXt blocks at 12.5 Hz
    dec_mel_dim: int = 192  # decoder width at the 100 Hz mel rate
    dec_mel_blocks: int = 2  # decoder ConvNeXt blocks at 100 Hz
    voc_dim: int = 256  # vocoder width
    voc_blocks: int = 4  # vocoder ConvNeXt blocks
    mel_mean: float = -5.0  # log-mel normalisation: (logmel - mean) / std is what the networks see
    mel_std: float = 2.5
    phonemes: str = PHONEMES  # CTC vocabulary (blank = index 0, symbol i = index i + 1)
    vocoder: bool = True  # False: the checkpoint has no vocoder weights; decode with Griffin-Lim

    @classmethod
    def from_dict(cls, data: dict) -> CodecConfig:
        """Build from a dict, ignoring unknown keys (training info lives in the same JSON)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class SpeechCodec(nn.Module):
    """Encoder + FSQ + CTC head + mel decoder + vocoder. See ``model/codec/__init__.py`` for the API."""

    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / FRAME_SAMPLES  # 12.5
    frame_samples = FRAME_SAMPLES

    def __init__(self, config: CodecConfig | None = None):
        super().__init__()
        self.config = cfg = config or CodecConfig()
        self.fsq = FSQ(cfg.levels, cfg.groups)
        qdim = cfg.groups * len(cfg.levels)
        self.encoder = Encoder(N_MELS, cfg.enc_dim, cfg.enc_blocks, qdim)
        self.ctc = nn.Sequential(
            CausalConv1d(qdim, 256, 3, lookahead=1), nn.GELU(), nn.Conv1d(256, CTC_PER_FRAME * self.n_ctc, 1)
        )
        self.decoder = MelDecoder(qdim, cfg.dec_dim, cfg.dec_blocks, cfg.dec_mel_dim, cfg.dec_mel_blocks, N_MELS)
        self.vocoder = Vocoder(N_MELS, cfg.voc_dim, cfg.voc_blocks)

    @property
    def n_ctc(self) -> int:
        """CTC classes: blank plus one per phoneme symbol."""
        return len(self.config.phonemes) + 1

    @property
    def groups(self) -> int:
        """G: codes per frame."""
        return self.config.groups

    @property
    def codebook_size(self) -> int:
        """K: values one group code takes."""
        return self.fsq.codebook_size

    @property
    def bitrate(self) -> float:
        """Bits per second of the code stream."""
        return self.frame_rate * self.groups * math.log2(self.codebook_size)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.parameters()).device

    # --- pieces used by training and by the public API -------------------------------------

    def pad(self, audio: torch.Tensor) -> torch.Tensor:
        """Right-pad ``[B, T]`` with zeros to ``ceil(T / 1280) * 1280`` samples."""
        frames = math.ceil(audio.shape[-1] / FRAME_SAMPLES)
        return nn.functional.pad(audio, (0, frames * FRAME_SAMPLES - audio.shape[-1]))

    def norm_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel ``[B, 80, 8F]`` of padded audio."""
        return (log_mel(audio) - self.config.mel_mean) / self.config.mel_std

    def quantized(self, audio: torch.Tensor) -> torch.Tensor:
        """Padded audio -> straight-through quantised latents ``[B, F, G * D]``."""
        return self.fsq.quantize(self.encoder(self.norm_mel(audio)))

    def ctc_logits(self, q: torch.Tensor) -> torch.Tensor:
        """Quantised latents ``[B, F, G*D]`` -> CTC log-probs ``[B, 4F, n_ctc]``."""
        x = self.ctc(q.transpose(1, 2))  # [B, 4 * n_ctc, F]
        b, _, f = x.shape
        x = x.reshape(b, CTC_PER_FRAME, self.n_ctc, f).permute(0, 3, 1, 2).reshape(b, f * CTC_PER_FRAME, -1)
        return x.log_softmax(-1)

    def mel_from_q(self, q: torch.Tensor) -> torch.Tensor:
        """Quantised latents -> natural-log mel ``[B, 80, 8F]`` (denormalised)."""
        return self.decoder(q) * self.config.mel_std + self.config.mel_mean

    def waveform(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel -> audio, by the vocoder, or by Griffin-Lim when the checkpoint has none."""
        if self.config.vocoder:
            return self.vocoder(logmel)
        return griffin_lim(logmel)

    # --- public API ------------------------------------------------------------------------

    def _check_audio(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor):
            audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        if audio.ndim == 1:
            audio = audio[None]
        if audio.ndim != 2:
            raise ValueError(f"encode expects audio of shape [B, T] at 16 kHz, got {tuple(audio.shape)}")
        if audio.shape[-1] == 0:
            raise ValueError("encode got empty audio (T = 0); pass at least one sample")
        if not torch.isfinite(audio).all():
            raise ValueError("encode got NaN or infinite samples; clean the audio first")
        return audio.float().to(self.device)

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """FloatTensor ``[B, T]`` at 16 kHz -> LongTensor codes ``[B, ceil(T / 1280), G]``."""
        audio = self._check_audio(audio)
        return self.fsq.to_codes(self.quantized(self.pad(audio)))

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        return codes.long().to(self.device)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """LongTensor ``[B, F, G]`` -> FloatTensor ``[B, F * 1280]`` at 16 kHz."""
        codes = self._check_codes(codes)
        if codes.ndim != 3:
            raise ValueError(f"decode expects codes of shape [B, F, G], got {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return torch.zeros(codes.shape[0], 0, device=self.device)
        return self.waveform(self.mel_from_q(self.fsq.from_codes(codes)))

    def stream_decoder(self) -> StreamDecoder:
        """A fresh streaming decoder (explicit state; one per audio stream)."""
        return StreamDecoder(self)


class StreamDecoder:
    """Decode frames as they arrive; the concatenated output equals :meth:`SpeechCodec.decode`.

    Moshi-style explicit state: every causal conv keeps a cache of its last inputs, so each push
    computes only the new positions. The mel decoder runs one frame behind (its lookahead) and the
    overlap-add holds back the last ``n_fft - hop`` samples until the frames after them arrive:
    after ``F`` frames, ``(F - 1) * 1280 - 480`` samples are final (110 ms of lookahead in all).

    ``push(codes, ahead=True)`` also gives out those held-back samples, decoded as if the stream
    ended there: a guess, of which the last GUESS_FADE_SAMPLES stay held and are crossfaded into the
    true samples once the next frames make them final (the true ones under the played guess are
    dropped). For a reply's first word, which is often one or two frames: without it only its first
    50 ms could be played before the next words are generated.
    """

    def __init__(self, codec: SpeechCodec):
        self.codec = codec
        self.dec_state: dict = {}  # conv caches of the mel decoder
        self.voc_state: dict = {}  # conv caches of the vocoder
        overlap = N_FFT - HOP
        self.acc = torch.zeros(overlap, device=codec.device)  # overlap-add tail (padded positions)
        self.env = torch.zeros(overlap, device=codec.device)  # window energy of that tail
        self.emitted = 0  # padded positions emitted (the first n_fft - hop lie before time 0)
        self.frames = 0  # frames pushed
        self.gl_codes: list[torch.Tensor] = []  # Griffin-Lim is not causal: it decodes all at flush
        self.guess: np.ndarray | None = None  # guessed samples after the final ones (the last fade still held)
        self.true_after_guess = np.zeros(0, np.float32)  # true samples decoded since, until they cover the guess

    @torch.inference_mode()
    def push(self, codes: torch.Tensor, ahead: bool = False) -> np.ndarray:
        """``[F, G]`` new frames (F >= 1) -> the samples that became final (float32).

        ``ahead``: also the samples still waiting for later frames, guessed (see the class).
        """
        codes = self.codec._check_codes(codes)
        if codes.ndim != 2 or codes.shape[0] < 1:
            raise ValueError(f"push expects codes of shape [F >= 1, G], got {tuple(codes.shape)}")
        self.frames += codes.shape[0]
        if not self.codec.config.vocoder:
            self.gl_codes.append(codes)
            return np.zeros(0, np.float32)
        out = self._after_guess(self._advance(self.codec.fsq.from_codes(codes)[None]))
        if not ahead or self.guess is not None:
            return out
        guess = self._fork().flush()
        fade = min(GUESS_FADE_SAMPLES, len(guess))
        self.guess = guess
        return np.concatenate([out, guess[: len(guess) - fade]])

    def _fork(self) -> StreamDecoder:
        """A copy of this decoder's state, for decoding a guess without touching the stream."""
        fork = copy.copy(self)
        for name in ("dec_state", "voc_state", "acc", "env"):
            setattr(fork, name, copy.deepcopy(getattr(self, name)))
        fork.guess = None
        return fork

    def _after_guess(self, true: np.ndarray) -> np.ndarray:
        """``true`` samples, less those under a played guess, with the guess's held tail faded into them."""
        if self.guess is None:
            return true
        self.true_after_guess = np.concatenate([self.true_after_guess, true])
        n = len(self.guess)
        if len(self.true_after_guess) < n:
            return np.zeros(0, np.float32)
        fade = min(GUESS_FADE_SAMPLES, n)
        ramp = np.linspace(0.0, 1.0, fade + 2, dtype=np.float32)[1:-1]
        mixed = self.guess[n - fade :] * (1 - ramp) + self.true_after_guess[n - fade : n] * ramp
        out = np.concatenate([mixed, self.true_after_guess[n:]]).astype(np.float32)
        self.guess, self.true_after_guess = None, np.zeros(0, np.float32)
        return out

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        """The remaining samples, decoding the last frames as if no more will come."""
        if not self.codec.config.vocoder:
            if not self.gl_codes:
                return np.zeros(0, np.float32)
            codes, self.gl_codes = torch.cat(self.gl_codes), []
            return self.codec.decode(codes[None])[0].cpu().numpy()
        if not self.frames:
            return np.zeros(0, np.float32)
        width = self.codec.fsq.groups * self.codec.fsq.dim
        out = self._advance(torch.zeros(1, MelDecoder.LOOKAHEAD, width, device=self.codec.device))
        tail = self._emit(self.acc / self.env.clamp(min=0.1))
        self.acc.zero_()
        self.env.zero_()
        return self._after_guess(np.concatenate([out, tail]))

    def _advance(self, q: torch.Tensor) -> np.ndarray:
        cfg = self.codec.config
        mel = self.codec.decoder.step(q, self.dec_state) * cfg.mel_std + cfg.mel_mean
        if mel.shape[-1] == 0:
            return np.zeros(0, np.float32)
        return self._overlap_add(self.codec.vocoder.step(mel, self.voc_state)[0])

    def _overlap_add(self, spec: torch.Tensor) -> np.ndarray:
        """Overlap-add new STFT frames onto the tail; return the samples no later frame reaches."""
        win = window(N_FFT).to(spec.device)
        frames = torch.fft.irfft(spec, n=N_FFT, dim=0) * win[:, None]
        m = frames.shape[1]
        length = (m - 1) * HOP + N_FFT
        fold = nn.functional.fold
        buf = fold(frames[None], (1, length), (1, N_FFT), stride=(1, HOP)).reshape(length)
        wsq = (win**2)[None, :, None].expand(1, N_FFT, m)
        env = fold(wsq, (1, length), (1, N_FFT), stride=(1, HOP)).reshape(length)
        overlap = N_FFT - HOP
        buf[:overlap] += self.acc
        env[:overlap] += self.env
        done = m * HOP
        self.acc, self.env = buf[done:].clone(), env[done:].clone()
        return self._emit(buf[:done] / env[:done].clamp(min=0.1))

    def _emit(self, audio: torch.Tensor) -> np.ndarray:
        skip = min(len(audio), max(0, (N_FFT - HOP) - self.emitted))
        self.emitted += len(audio)
        return audio[skip:].cpu().numpy().astype(np.float32)


# --- loading and saving --------------------------------------------------------------------


def save_codec(codec: SpeechCodec, path: str | os.PathLike, info: dict | None = None) -> None:
    """Write ``path`` (safetensors, fp16 to halve the size) and ``codec.json`` (config + ``info``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half().contiguous() for k, v in codec.state_dict().items()}
    if not codec.config.vocoder:
        state = {k: v for k, v in state.items() if not k.startswith("vocoder.")}
    save_file(state, str(path))
    meta = dataclasses.asdict(codec.config) | {"info": info or {}}
    path.with_name(path.stem + ".json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


def load_codec(
    path: str | os.PathLike | None = None, device: str = "cpu", allow_untrained: bool = False
) -> SpeechCodec:
    """The trained codec at ``path`` (default: the shipped checkpoint), in eval mode.

    No checkpoint: ``allow_untrained`` gives a randomly initialised default codec (with a warning),
    otherwise :class:`AssetError` says how to train one. A corrupt file raises AssetError too.
    """
    path = Path(path) if path else CHECKPOINT
    if not path.is_file():
        if allow_untrained:
            log.warning("no codec checkpoint at %s: using an UNTRAINED codec (noise out)", path)
            torch.manual_seed(0)
            return SpeechCodec().to(device).eval()
        raise AssetError(
            f"no trained codec at {path}. Train one with `ttt data synth` then `ttt train codec "
            f"--export {path.parent}`, or pass the path of a codec.safetensors."
        )
    config_path = path.with_name(path.stem + ".json")
    try:
        config = CodecConfig.from_dict(json.loads(config_path.read_text()))
    except FileNotFoundError:
        raise AssetError(f"codec config {config_path} is missing (it must sit beside {path.name})") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise AssetError(f"codec config {config_path} is corrupt ({exc}); re-export the codec") from None
    try:
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(str(path)).items()}
    except Exception as exc:  # safetensors raises several types for truncated/foreign files
        raise AssetError(f"codec checkpoint {path} is corrupt or not safetensors ({exc}); re-export it") from None
    config.vocoder = any(k.startswith("vocoder.") for k in state)
    codec = SpeechCodec(config)
    if not config.vocoder:
        state |= {k: v for k, v in codec.state_dict().items() if k.startswith("vocoder.")}
        log.warning("codec checkpoint %s has no vocoder weights: decoding with Griffin-Lim", path)
    try:
        codec.load_state_dict(state)
    except RuntimeError as exc:
        raise AssetError(f"codec checkpoint {path} does not match its codec.json ({exc})") from None
    return codec.to(device).eval()
