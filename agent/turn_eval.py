"""Measuring turn detection on voiced conversations: false cut-offs, end-of-turn latency, wait policies.

A conversation file holds cases (a complete turn, or a fragment, a pause and its continuation) with
long gaps between them. ``ttt listen`` hears it once; every speech end it scored (a ``turn_scored``
event) is a candidate end of turn. From the candidates, any wait policy can be replayed: a case is
cut off if some candidate before its last speech would have ended the turn (the silence after it
outlasts the policy's wait for its P), and its latency is when the last candidate would end it.
The replay draws the cut-offs-vs-latency curve; the benchmark also reports what the listener itself
did with its policy. A policy is chosen on a dev set from the scores alone (:func:`choose_policy`).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.events import EndOfTurn, HearingEvent, SpeechStarted, TurnScored

CASE_GAP_S = 2.6  # silence between cases: longer than the longest wait (max_silence_ms) plus the VAD's delay
MAX_PAUSE_S = 1.5  # the longest pause inside a phrase the policy must wait through
PAUSE_MARGIN_S = 0.3  # dev fragments must wait this much longer than MAX_PAUSE_S (the VAD hears pauses longer)
# A clause before a comma often reads as a whole sentence ("We ran out of milk."), so no text scorer
# can wait through every comma pause without slowing real ends of turn; most of them it must.
COMMA_KEEP_SHARE = 2 / 3  # share of dev sentences with commas a policy must not cut at a comma pause


def pause_lengths(n: int, low: float = 0.5, high: float = 1.5) -> list[float]:
    """``n`` pauses spread evenly over [low, high], in a fixed shuffled order (no trend along the file)."""
    values = list(np.linspace(low, high, n)) if n > 1 else [low]
    order = np.random.default_rng(13).permutation(n)
    return [round(float(values[i]), 3) for i in order]


@dataclass
class CaseResult:
    """What the listener did on one case, and the candidates for replaying other policies."""

    start: float  # speech start of the case (seconds in the file)
    end: float  # speech end of the whole case
    candidates: list[tuple[float, float, float, float | None]]  # (speech end, ready, P, next speech start)
    turn_times: list[float]  # end_of_turn times the listener gave inside (start, next case)
    texts: list[str]  # their transcripts (from parts: the transcript of the whole case)
    scored: list[str] = field(default_factory=list)  # from parts: the transcript at each candidate

    @property
    def cut_off(self) -> bool:
        """The listener ended the turn before the case's speech was over."""
        return any(t < self.end for t in self.turn_times)

    @property
    def latency(self) -> float | None:
        """First end of turn after the speech end, minus the speech end; None when none came."""
        after = [t for t in self.turn_times if t >= self.end]
        return after[0] - self.end if after else None


def split_cases(events: list[HearingEvent], spans: Sequence[tuple[float, float]]) -> list[CaseResult]:
    """Assign a listen pass's events to the cases whose speech spans are ``spans``."""
    starts = [e.t for e in events if isinstance(e, SpeechStarted)]
    scored = [e for e in events if isinstance(e, TurnScored)]
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    results = []
    for i, (start, end) in enumerate(spans):
        limit = spans[i + 1][0] if i + 1 < len(spans) else float("inf")
        lo = start - 0.2  # the VAD back-dates a speech start slightly before the trimmed audio
        mine = [s for s in scored if lo <= s.speech_end < limit]
        candidates = []
        for s in mine:
            nxt = next((t for t in starts if s.speech_end < t < limit - 0.2), None)
            candidates.append((s.speech_end, s.t, s.probability, nxt))
        inside = [e for e in turns if lo < e.t < limit]
        results.append(CaseResult(start, end, candidates, [e.t for e in inside], [e.text for e in inside]))
    return results


def hear_sets(
    settings,
    pauses: Sequence[tuple[str, str]],
    completes: Sequence[str],
    listener=None,  # noqa: ANN001
) -> tuple[list[CaseResult], list[CaseResult]]:
    """Voice the pause cases and the complete turns with the steady teacher voice, and hear them.

    Pauses are spread over 0.5-1.5 s. Each file is heard by ``listener`` (or one built from
    ``settings``), and its events are split by case.
    """
    import tempfile

    from agent.bench import listen_file
    from training.teacher import teacher_voice, write_conversation

    own = listener is None
    if own:
        from agent.listen import Listener

        listener = Listener.from_settings(settings)
    voice = teacher_voice(settings.assets.piper_voice, steady=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ttt-turns-") as tmp:
            pause_path, complete_path = Path(tmp) / "pauses.wav", Path(tmp) / "complete.wav"
            pause_spans = write_conversation(
                [list(c) for c in pauses], pause_path, CASE_GAP_S, pause_lengths(len(pauses)), voice=voice
            )
            complete_spans = write_conversation(list(completes), complete_path, CASE_GAP_S, voice=voice)
            pause_events = listen_file(listener, pause_path).events
            complete_events = listen_file(listener, complete_path).events
    finally:
        if own:
            listener.close()
    return split_cases(pause_events, pause_spans), split_cases(complete_events, complete_spans)


SPECULATE_S = 0.064  # the listener decodes and scores the turn so far after this much silence (agent/listen.py)


def score_parts(
    cases: Sequence[Sequence[np.ndarray]],
    pauses: Sequence[Sequence[float]],
    asr,
    scorers: dict,  # noqa: ANN001
) -> dict[str, list[CaseResult]]:
    """Cases heard from their parts, without the listener's clock: for each scorer, a CaseResult per case.

    A case is its speech segments (16 kHz) with ``pauses[i]`` seconds between them. After each segment
    the audio so far is decoded by ``asr`` and its readings scored by every scorer (the least P counts),
    as the listener does at a speech end; a candidate is ready ``SPECULATE_S`` plus the CPU time of that decode and
    score after the segment's end. CPU time (all threads) bounds the wall time an idle machine would
    take, so the figures do not depend on what else the machine runs.
    """
    import time

    from agent.turn_detector import least_probability
    from audio_io.frames import SAMPLE_RATE

    results: dict[str, list[CaseResult]] = {name: [] for name in scorers}
    lead = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)  # the listener's pre-roll before the speech start
    tail = np.zeros(int(0.1 * SAMPLE_RATE), np.float32)
    for segments, gaps in zip(cases, pauses, strict=True):
        audio, t = [lead], 0.0
        candidates: dict[str, list] = {name: [] for name in scorers}
        texts = []
        for i, segment in enumerate(segments):
            audio.append(segment)
            t += len(segment) / SAMPLE_RATE
            started = time.process_time()
            readings = asr.decode(np.concatenate([*audio, tail])).readings
            decode_s = time.process_time() - started
            texts.append(readings[0] if readings else "")
            nxt = t + gaps[i] if i < len(gaps) else None
            for name, scorer in scorers.items():
                started = time.process_time()
                p = least_probability(scorer.probability, readings, default=0.0)
                ready = t + SPECULATE_S + decode_s + time.process_time() - started
                candidates[name].append((t, ready, p, nxt))
            if nxt is not None:
                audio.append(np.zeros(int(gaps[i] * SAMPLE_RATE), np.float32))
                t = nxt
        for name in scorers:
            results[name].append(CaseResult(0.0, t, candidates[name], [], [texts[-1]], texts))
    return results


def speech_segments(audio: np.ndarray, vad) -> tuple[list[np.ndarray], list[float]]:  # noqa: ANN001 - StreamingVad
    """``audio`` cut at the pauses ``vad`` hears inside it: the segments (speech ends), and the pauses."""
    from audio_io.frames import SAMPLE_RATE, AudioFrame

    vad.reset()
    events = vad.process(AudioFrame(audio, 0.0)) + vad.flush()
    ends = [e.t for e in events if e.kind == "speech_end"]
    starts = [e.t for e in events if e.kind == "speech_start"]
    cuts = [(end, nxt) for end in ends[:-1] for nxt in [min((s for s in starts if s > end), default=None)] if nxt]
    segments, pauses, previous = [], [], 0
    for end, nxt in cuts:
        segments.append(audio[previous : int(end * SAMPLE_RATE)])
        pauses.append(nxt - end)
        previous = int(nxt * SAMPLE_RATE)
    segments.append(audio[previous:])
    return segments, pauses


def replay(case: CaseResult, wait) -> tuple[bool, float | None]:  # noqa: ANN001 - wait: P -> seconds
    """(cut off?, latency) of ``case`` under the policy ``wait``; the latency is None after a cut-off."""
    for speech_end, ready, p, next_start in case.candidates:
        w = wait(p)
        if next_start is not None and next_start - speech_end <= w:
            continue  # the user went on before the wait ran out
        t = max(speech_end + w, ready)
        if t < case.end - 0.05:
            return True, None
        return False, t - case.end
    return False, None


def summarize(pauses: list[CaseResult], completes: list[CaseResult], wait=None) -> dict:  # noqa: ANN001
    """Cut-off rate on the pause cases and latency on complete turns: as heard, or replayed under ``wait``."""
    if wait is None:
        cuts = [c.cut_off for c in pauses] + [c.cut_off for c in completes]
        lat = [c.latency for c in completes if c.latency is not None]
        pause_cuts = sum(c.cut_off for c in pauses)
    else:
        pause_replays = [replay(c, wait) for c in pauses]
        complete_replays = [replay(c, wait) for c in completes]
        cuts = [cut for cut, _ in pause_replays + complete_replays]
        lat = [x for _, x in complete_replays if x is not None]
        pause_cuts = sum(cut for cut, _ in pause_replays)
    return {
        "pause_cases": len(pauses),
        "false_cutoffs": int(pause_cuts),
        "false_cutoff_rate": round(pause_cuts / max(1, len(pauses)), 3),
        "complete_cutoffs": int(sum(cuts) - pause_cuts),
        "complete_turns": len(completes),
        "turns_found": len(lat),
        "latency_p50_ms": round(1000 * statistics.median(lat)) if lat else None,
        "latency_p90_ms": round(1000 * float(np.percentile(lat, 90))) if lat else None,
    }


def policy_grid() -> list[dict]:
    """The wait policies a dev set chooses from (max_silence_ms fixed at 2000)."""
    grid = []
    thresholds = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
    holds = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    for lo, threshold, hold in itertools.product((200, 250, 300), thresholds, holds):
        if hold < threshold:
            grid.append({"min_silence_ms": lo, "max_silence_ms": 2000, "eot_threshold": threshold, "eot_hold": hold})
    return grid


def _wait(policy: dict):  # noqa: ANN202 - P -> seconds
    from agent.turn_detector import TurnDetector

    return TurnDetector(None, **policy).required_silence


def choose_policy(
    fragments: Sequence[float], completes: Sequence[CaseResult], commas: Sequence[CaseResult] = ()
) -> tuple[dict, dict]:
    """The policy of :func:`policy_grid` with the shortest waits on complete turns that keeps every fragment.

    ``fragments`` are P(end of turn) of a dev set's unfinished fragments (as text); ``completes`` and
    ``commas`` are dev complete turns and sentences with comma pauses, voiced and heard from their
    parts (:func:`score_parts`), replayed under each policy. Every fragment must get a wait of at least
    ``MAX_PAUSE_S`` plus a margin, so no pause up to 1.5 s cuts it, and at least ``COMMA_KEEP_SHARE``
    of the comma sentences must not be cut at a comma; among those policies, the lowest median
    latency on the complete turns wins, then the lowest mean. The waits depend on the scores and
    the audio only, not on how busy the CPU was. Returns the policy and its dev figures; ValueError
    if no policy of the grid qualifies.
    """
    best = None
    for policy in policy_grid():
        wait = _wait(policy)
        shortest = min((wait(p) for p in fragments), default=float("inf"))
        if shortest < MAX_PAUSE_S + PAUSE_MARGIN_S:
            continue
        comma_cuts = sum(replay(case, wait)[0] for case in commas)
        if len(commas) - comma_cuts < COMMA_KEEP_SHARE * len(commas):
            continue
        latencies = [latency for case in completes for cut, latency in [replay(case, wait)] if not cut]
        if len(latencies) < len(completes) or any(x is None for x in latencies):
            continue
        key = (statistics.median(latencies), statistics.mean(latencies), -policy["eot_hold"])
        if best is None or key < best[0]:
            figures = {
                "fragments": len(fragments),
                "shortest_fragment_wait_ms": round(1000 * shortest),
                "comma_sentences": len(commas),
                "comma_sentences_cut": comma_cuts,
                "complete_turns": len(completes),
                "complete_latency_p50_ms": round(1000 * key[0]),
                "complete_latency_mean_ms": round(1000 * key[1]),
                "complete_latency_p90_ms": round(1000 * float(np.percentile(latencies, 90))),
            }
            best = (key, policy, figures)
    if best is None:
        raise ValueError(
            "no wait policy of the grid keeps every dev fragment waiting 1.8 s and "
            f"{COMMA_KEEP_SHARE:.0%} of the comma sentences uncut; the scores overlap"
        )
    return best[1], best[2]


def hear_dev_cases(settings, scorer) -> tuple[list[CaseResult], list[CaseResult]]:  # noqa: ANN001
    """The dev complete turns and comma sentences, voiced by the steady teacher and heard from their parts.

    A comma sentence is voiced whole and cut where the VAD hears its pauses, so each comma pause is
    as long as the teacher makes it. ``scorer`` is the end-of-turn model being tuned.
    """
    from agent.asr import WhisperAsr
    from audio_io.vad import SileroVad
    from training.teacher import teacher_voice, voiced_16k
    from training.turn_data import comma_sentences, dev_sets

    voice = teacher_voice(settings.assets.piper_voice, steady=True)
    asr = WhisperAsr(settings.asr, settings.assets.whisper)
    vad = SileroVad.from_settings(settings)
    _, completes = dev_sets()
    voiced = [[voiced_16k(voice, t)] for t in completes]
    heard_completes = score_parts(voiced, [[] for _ in completes], asr, {"s": scorer})
    cut = [speech_segments(voiced_16k(voice, s), vad) for s in comma_sentences()]
    heard_commas = score_parts([segments for segments, _ in cut], [gaps for _, gaps in cut], asr, {"s": scorer})
    return heard_completes["s"], heard_commas["s"]


def policy_table(pauses: list[CaseResult], completes: list[CaseResult]) -> list[dict]:
    """Every grid policy replayed on the cases: the policy with its cut-offs and latencies."""
    return [policy | summarize(pauses, completes, _wait(policy)) for policy in policy_grid()]


def curve(table: list[dict]) -> list[tuple[float, float]]:
    """(false cut-off rate, median latency in ms) of every policy of a :func:`policy_table`."""
    return sorted(
        {(r["false_cutoff_rate"], float(r["latency_p50_ms"])) for r in table if r["latency_p50_ms"] is not None}
    )


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cut-off rate and latency."""
    front, best = [], float("inf")
    for rate, latency in sorted(points):
        if latency < best:
            front.append((rate, latency))
            best = latency
    return front


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: str | Path, marks: dict | None = None) -> None:
    """Cut-off rate (y) against median latency (x) as a PNG.

    Every replayed policy is a dot, each scorer's Pareto front a line, and ``marks[name]`` =
    (latency ms, rate) as heard a star.
    """
    from PIL import Image, ImageDraw

    width, height, left, bottom, top, right = 720, 460, 70, 50, 40, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    every = [p for points in curves.values() for p in points] + [(r, x) for x, r in (marks or {}).values() if x]
    x_max = max(500.0, max((x for _, x in every), default=500.0) * 1.05)
    y_max = max(0.1, max((r for r, _ in every), default=0.1) * 1.1)

    def at(latency: float, rate: float) -> tuple[float, float]:
        return (
            left + (width - left - right) * latency / x_max,
            height - bottom - (height - bottom - top) * rate / y_max,
        )

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(6):
        latency, rate = x_max * i / 5, y_max * i / 5
        x, _ = at(latency, 0)
        _, y = at(0, rate)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 12, height - bottom + 6), f"{latency:.0f}", fill="black")
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 40, y - 6), f"{100 * rate:.0f}%", fill="black")
    draw.text((left + 120, height - 20), "median end-of-turn latency on complete turns (ms)", fill="black")
    draw.text(
        (8, 8),
        "false cut-offs on pause cases; dots: replayed wait policies, star: the scorer's own policy",
        fill="black",
    )
    for (name, points), color in zip(curves.items(), ((230, 120, 20), (30, 90, 200), (40, 160, 60)), strict=False):
        faint = tuple(int(c + (255 - c) * 0.6) for c in color)
        for rate, latency in points:
            x, y = at(latency, rate)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=faint)
        front = pareto(points)
        steps = []
        for (rate, latency), nxt in zip(front, front[1:] + [None], strict=True):
            steps.append(at(latency, rate))
            if nxt is not None:
                steps.append(at(latency, nxt[0]))
        if len(steps) > 1:
            draw.line(steps, fill=color, width=2)
        if marks and marks.get(name) and marks[name][0] is not None:
            x, y = at(*marks[name])
            draw.regular_polygon((x, y, 8), 5, fill=color, outline="black")
        legend_y = top + 10 + 16 * list(curves).index(name)
        draw.line([width - 200, legend_y + 6, width - 180, legend_y + 6], fill=color, width=3)
        draw.text((width - 175, legend_y), f"{name} (Pareto front)", fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(str(path))
