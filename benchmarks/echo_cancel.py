"""Echo canceller on simulated rooms: the agent's Piper voice as the echo, a real human voice talking over it.

For each room (a delay, then a direct path and an exponentially decaying reverberant tail) the agent
speaks 12 s of replies through the loudspeaker; from 8 s to 10 s an Asterisk studio recording (a real
speaker) talks over it. Reported per room: when the canceller starts working (full duplex), the echo
removed (ERLE, dB) in the agent-alone stretches before and after the double talk, the echo left
under the user's voice (the user as loud as the echo at the microphone), and the CPU cost.

Usage: .venv/bin/python benchmarks/echo_cancel.py  (needs asterisk-core-sounds-en-g722 and asterisk-core-sounds-en)
"""

from __future__ import annotations

import json
import time

import numpy as np

ROOMS = {  # name: (delay s, direct-to-reverberant energy ratio, reverberation decay s, echo gain)
    "desk, close": (0.02, 4.0, 0.01, 0.3),
    "laptop": (0.04, 1.0, 0.02, 0.5),
    "living room": (0.06, 0.3, 0.04, 0.5),
}


def impulse_response(delay_s: float, direct_ratio: float, decay_s: float, gain: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sr = 16_000
    tail_n = round(5 * decay_s * sr)
    tail = rng.standard_normal(tail_n) * np.exp(-np.arange(tail_n) / (decay_s * sr))
    tail *= np.sqrt(1.0 / (direct_ratio * np.sum(tail**2)))  # tail energy = direct energy / ratio
    response = np.zeros(round(delay_s * sr) + tail_n + 1)
    response[round(delay_s * sr)] = 1.0
    response[round(delay_s * sr) + 1 :] = tail
    return gain * response / np.sqrt(np.sum(response**2))


def db(signal: np.ndarray, rest: np.ndarray) -> float:
    power = np.mean(signal.astype(np.float64) ** 2)
    return float(10 * np.log10(power / max(np.mean(rest.astype(np.float64) ** 2), 1e-20)))


def main() -> None:
    from agent.echo import EchoCanceller
    from agent.real_speech import choose_prompts, load_prompt, read_prompts
    from audio_io.frames import SAMPLE_RATE, AudioFrame
    from audio_io.sinks import PlayedHistory
    from training.teacher import teacher_voice, voiced_16k

    voice = teacher_voice()
    replies = [
        "The capital of France is Paris, a city on the river Seine.",
        "A week has seven days, and a day has twenty four hours.",
        "Bees make honey from the nectar of flowers, and wax for their combs.",
        "The sky on a clear day is blue, because air scatters blue light the most.",
    ]
    far = np.concatenate([np.concatenate([voiced_16k(voice, r), np.zeros(3200, np.float32)]) for r in replies])
    far = np.concatenate([far, far])[: 12 * SAMPLE_RATE]
    user = load_prompt(choose_prompts(read_prompts(), 1, min_words=8)[0])[: 2 * SAMPLE_RATE]
    talk = slice(8 * SAMPLE_RATE, 8 * SAMPLE_RATE + len(user))
    near = np.zeros_like(far)
    results = {}
    for seed, (name, params) in enumerate(ROOMS.items()):
        echo = np.convolve(far, impulse_response(*params, seed=seed))[: len(far)].astype(np.float32)
        near[:] = 0
        near[talk] = user * (np.sqrt(np.mean(echo[talk] ** 2) / np.mean(user**2)))  # as loud as the echo
        mic = echo + near

        canceller = EchoCanceller(PlayedHistory.of(far).render)
        out = np.zeros_like(mic)
        started = time.process_time()
        for i in range(0, len(mic), 512):
            for frame in canceller.process(AudioFrame(mic[i : i + 512], i / SAMPLE_RATE)):
                at = round(frame.t * SAMPLE_RATE)
                out[at : at + len(frame.samples)] = frame.samples
        cpu = time.process_time() - started
        working = float(np.flatnonzero(out)[0] / SAMPLE_RATE) if out.any() else None

        def window(a: float, b: float) -> slice:
            return slice(round(a * SAMPLE_RATE), round(b * SAMPLE_RATE))

        left = out[talk] - near[talk]
        results[name] = {
            "full_duplex_after_s": round(working, 2) if working is not None else None,
            "erle_db_4_8s": round(db(echo[window(4, 8)], out[window(4, 8)]), 1),
            "erle_db_10_12s": round(db(echo[window(10.2, 12)], out[window(10.2, 12)]), 1),
            "echo_under_user_db": round(db(echo[talk], left), 1),
            "cpu_percent_of_a_core": round(100 * cpu / (len(mic) / SAMPLE_RATE), 1),
        }
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps({"bench": "echo_cancel", "rooms": results}))


if __name__ == "__main__":
    main()
