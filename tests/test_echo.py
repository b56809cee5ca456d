"""The echo canceller on a simulated room: a delayed, reverberant copy of the agent's voice at the microphone."""

from __future__ import annotations

import numpy as np
import pytest

from agent.echo import EchoCanceller
from audio_io.frames import SAMPLE_RATE, AudioFrame
from audio_io.sinks import PlayedHistory
from tests.fakes import babble, room


def cancel(mic: np.ndarray, far: np.ndarray, frame: int = 512, **kw) -> np.ndarray:
    canceller = EchoCanceller(PlayedHistory.of(far).render, **kw)
    out = []
    for i in range(0, len(mic), frame):
        for cleaned in canceller.process(AudioFrame(mic[i : i + frame], i / SAMPLE_RATE)):
            assert cleaned.t * SAMPLE_RATE == pytest.approx(sum(len(o) for o in out))  # one timeline, no gaps
            out.append(cleaned.samples)
    return np.concatenate(out)


def db(signal: np.ndarray, rest: np.ndarray) -> float:
    return 10 * np.log10(np.mean(signal.astype(np.float64) ** 2) / np.mean(rest.astype(np.float64) ** 2))


def seconds(a: float, b: float) -> slice:
    return slice(round(a * SAMPLE_RATE), round(b * SAMPLE_RATE))


def test_the_echo_of_a_reverberant_room_is_learned_and_removed():
    far = babble(6.0, seed=1)
    echo = np.convolve(far, room(0.04, seed=2))[: len(far)].astype(np.float32)
    out = cancel(echo, far)
    late = seconds(4.0, 6.0)
    assert db(echo[late], out[late]) >= 20  # echo return loss enhancement once learned
    # Until then (about two seconds of the agent's voice) the microphone is muted while the agent plays.
    working = np.flatnonzero(out)[0] / SAMPLE_RATE
    assert 0.5 < working < 3.0 and db(echo[seconds(working, working + 0.5)], out[seconds(working, working + 0.5)]) >= 15


def test_the_users_voice_over_the_agent_comes_through_and_the_filter_does_not_diverge():
    far = babble(9.0, seed=3)
    echo = np.convolve(far, room(0.05, seed=4))[: len(far)].astype(np.float32)
    near = np.zeros_like(far)
    talk = seconds(4.0, 6.0)
    near[talk] = 2.0 * babble(2.0, seed=5)  # the user, louder than the echo at the microphone
    out = cancel(echo + near, far)
    heard = out[talk] - near[talk]  # what is left over the user's voice: the echo not removed
    assert db(near[talk], heard) >= 25 and db(echo[talk], heard) >= 15
    assert db(echo[seconds(3.0, 4.0)], out[seconds(3.0, 4.0)]) >= 15  # it works before the user talks
    after = seconds(7.0, 9.0)
    assert db(echo[after], out[after]) >= 15  # the filter in use did not follow the user's voice


def test_a_changed_echo_path_is_learned_again():
    far = babble(10.0, seed=6)
    before = np.convolve(far, room(0.04, seed=7))[: len(far)]
    moved = np.convolve(far, room(0.09, seed=8, gain=0.7))[: len(far)]
    switch = round(4.0 * SAMPLE_RATE)
    echo = np.concatenate([before[:switch], moved[switch:]]).astype(np.float32)
    out = cancel(echo, far)
    assert db(echo[seconds(2.5, 4.0)], out[seconds(2.5, 4.0)]) >= 18
    assert db(echo[seconds(4.0, 4.5)], out[seconds(4.0, 4.5)]) < 3  # the old path's copy no longer cancels
    assert db(echo[seconds(8.5, 10.0)], out[seconds(8.5, 10.0)]) >= 12


def test_frames_of_any_size_give_the_same_samples():
    far = babble(3.0, seed=9)
    mic = np.convolve(far, room(0.03, seed=10))[: len(far)].astype(np.float32) + 0.01 * babble(3.0, seed=11)
    whole = cancel(mic, far, frame=512)
    odd = cancel(mic, far, frame=300)
    n = min(len(whole), len(odd))
    assert n >= len(mic) - 256  # at most one block is held back at the end
    np.testing.assert_allclose(odd[:n], whole[:n], atol=1e-5)


def test_without_the_agent_talking_the_microphone_passes_untouched():
    near = babble(2.0, seed=12)
    out = cancel(near, np.zeros(0, np.float32))
    np.testing.assert_array_equal(out, near[: len(out)])


def test_a_gap_in_the_input_loses_no_samples():
    canceller = EchoCanceller(PlayedHistory.of(np.zeros(0, np.float32)).render)
    first = canceller.process(AudioFrame(np.ones(300, np.float32), 0.0))
    later = canceller.process(AudioFrame(np.full(512, 2.0, np.float32), 1.0))  # not where the last one ended
    assert [len(f.samples) for f in first] == [256]
    assert [(f.t, len(f.samples)) for f in later] == [(256 / SAMPLE_RATE, 44), (1.0, 512)]
