"""Keeping the agent's own voice out of what it hears: an adaptive echo canceller on the microphone.

A microphone near a loudspeaker picks up the agent's reply: late, quieter, and smeared by the
room. The canceller learns that echo path as a filter over what the agent played (a partitioned
block frequency-domain NLMS filter, the family of speex's and WebRTC's cancellers), predicts the
echo in every microphone block and subtracts it. Hearing (VAD, whisper) then runs on what is left:
the user's voice, not the agent's, so the agent's echo cannot barge in on it.

Until the filter works (it removes WORKING_ERLE of the echo, after one or two seconds of the
agent's speech), the microphone is muted while the agent's sound is within the filter's reach: half
duplex, as a speakerphone, rather than the agent hearing itself and pausing. Then it is full duplex.

While the user talks over the agent (double talk), the user's voice in the residual would pull a
learning filter away from the room. So two filters run, as in speex and WebRTC: one learns on every
block, the other removes the echo and only takes the learned path when it clearly does better
(at the start, or when someone moved the laptop); a learner led astray starts again from it.

The reference is ``played(begin, end)``: what the agent's sink played over those samples of the
session's 16 kHz timeline (``VirtualSpeaker.render``, ``SpeakerSink.render``). Each output block is
the input block less the echo, on the same timeline; a frame that is not a whole number of blocks
has its last samples held back (less than one block) until the next frame completes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np

from audio_io.frames import SAMPLE_RATE, AudioFrame
from audio_io.sources import AudioSource

QUIET = 1e-6  # reference power per sample below which the agent is silent: nothing to learn from
WORKING_ERLE = 30.0  # the filter works once it removes this share of the echo's power (15 dB): full duplex


class EchoCanceller:
    """Subtracts the echo of the played audio from the microphone, through a filter it keeps learning."""

    def __init__(
        self,
        played: Callable[[int, int], np.ndarray],
        filter_s: float = 0.2,
        block: int = 256,
        step: float = 1.0,
        memory: float = 0.95,
    ):
        self.played = played  # played(begin, end): the agent's audio over those 16 kHz session samples
        self.block = block  # samples per filter block (16 ms): a partition of the filter
        self.partitions = max(1, round(filter_s * SAMPLE_RATE / block))  # filter length / block: delay + tail
        self.step = step  # NLMS step size of the learning filter (0-2): larger learns faster and is noisier
        self.memory = memory  # per block: weight of the past in the residual energies the filters are judged by
        bins = block + 1
        self.spectra = np.zeros((self.partitions, bins), np.complex128)  # the last reference blocks, newest first
        self.weights = np.zeros((self.partitions, bins), np.complex128)  # the echo path in use
        self.learning = np.zeros_like(self.weights)  # the echo path being learned, on every block
        self.residuals = np.zeros(3)  # smoothed energies: residual of the filter in use, of the learner, the mic's
        self.working = False  # the filter in use removes most of the echo: the user may talk over the agent
        self.pending = np.zeros(0, np.float32)  # microphone samples not yet a whole block
        self.pending_start = 0  # session sample of pending[0]
        self.next_block: int | None = None  # session sample the next block starts at (reference continuity)

    def reset(self) -> None:
        """Forget the echo path (a new device, a new room)."""
        for state in (self.spectra, self.weights, self.learning, self.residuals):
            state[:] = 0
        self.working = False

    def process(self, frame: AudioFrame) -> list[AudioFrame]:
        """``frame`` less the agent's echo, as the whole blocks of it so far (samples held from before first).

        A frame that does not follow the last one (a gap in the input) first lets the held samples
        out as they were: nothing is lost.
        """
        mic = np.asarray(frame.samples, dtype=np.float32)
        start = round(frame.t * SAMPLE_RATE)
        out: list[AudioFrame] = []
        if start != self.pending_start + len(self.pending):
            if len(self.pending):
                out.append(AudioFrame(self.pending, self.pending_start / SAMPLE_RATE))
            self.pending, self.pending_start = np.zeros(0, np.float32), start
        self.pending = np.concatenate([self.pending, mic])
        whole = len(self.pending) // self.block * self.block
        if whole:
            cleaned = np.empty(whole, np.float32)
            for i in range(0, whole, self.block):
                cleaned[i : i + self.block] = self._block(self.pending[i : i + self.block], self.pending_start + i)
            out.append(AudioFrame(cleaned, self.pending_start / SAMPLE_RATE))
            self.pending = self.pending[whole:]
            self.pending_start += whole
        return out

    def _block(self, mic: np.ndarray, start: int) -> np.ndarray:
        n = self.block
        if self.next_block is not None and start != self.next_block:
            self.spectra[:] = 0  # the reference history no longer lines up with this block
        self.next_block = start + n
        reference = self.played(start - n, start + n).astype(np.float64)  # the last block and this one
        talking = float(np.mean(reference[n:] ** 2)) > QUIET
        if not talking and not self.spectra.any():
            return mic  # nothing played within the filter's reach: nothing to remove
        self.spectra = np.roll(self.spectra, 1, axis=0)
        self.spectra[0] = np.fft.rfft(reference)
        residual = mic - self._echo(self.weights)
        if talking:
            self._learn(mic, residual)
        if not self.working:
            return np.zeros_like(mic)  # half duplex until the room is learned: the echo would sound like a user
        return residual.astype(np.float32)

    def _echo(self, weights: np.ndarray) -> np.ndarray:
        return np.fft.irfft((weights * self.spectra).sum(axis=0))[self.block :]

    def _learn(self, mic: np.ndarray, residual: np.ndarray) -> None:
        """One NLMS step of the learning filter; the better of the two filters becomes the one in use.

        The learning filter follows every block, so the user's voice over the agent (double talk)
        pulls it off the echo path: its residual grows, and it is reset to the filter in use, which
        did not move. When the room changes, the learning filter finds the new path first and replaces it.
        """
        n = self.block
        learning_residual = mic - self._echo(self.learning)
        mic_energy = float(np.sum(mic.astype(np.float64) ** 2))
        energies = np.array([np.sum(residual.astype(np.float64) ** 2), np.sum(learning_residual**2), mic_energy])
        self.residuals = self.memory * self.residuals + (1 - self.memory) * energies
        used, learned, heard = self.residuals
        self.working = self.working or used * WORKING_ERLE < heard
        if learned < 0.8 * used:
            self.weights[:] = self.learning  # learned a better path (at the start, or the room changed)
            self.residuals[0] = learned
        elif learned > 4 * used:
            self.learning[:] = self.weights  # led astray (the user talking over the agent): start from the good one
            self.residuals[1] = used
            learning_residual = residual
        # Normalised by the reference power in the filter's reach, per bin; bins the reference barely
        # excites would get a huge step, so the mean power regularises.
        power = np.sum(np.abs(self.spectra) ** 2, axis=0)
        gain = self.step / (power + 0.01 * power.mean() + 1e-12)
        error = np.fft.rfft(np.concatenate([np.zeros(n), learning_residual]))
        update = gain * np.conj(self.spectra) * error
        # Keep each partition a causal filter of one block: the gradient's circular tail is cut.
        taps = np.fft.irfft(update, axis=1)[:, :n]
        self.learning += np.fft.rfft(np.concatenate([taps, np.zeros_like(taps)], axis=1), axis=1)


class EchoCancelledSource(AudioSource):
    """``source`` with the agent's echo removed from every frame; same clock, same pacing."""

    def __init__(self, source: AudioSource, canceller: EchoCanceller):
        self.source = source
        self.canceller = canceller
        self.realtime = getattr(source, "realtime", True)  # hearing stamps events as the source is paced

    def now(self) -> float:
        """The source's clock."""
        return self.source.now()

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """The source's frames, echo removed."""
        async for frame in self.source.frames():
            for cleaned in self.canceller.process(frame):
                yield cleaned

    async def close(self) -> None:
        """Close the source."""
        await self.source.close()
