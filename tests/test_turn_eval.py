from __future__ import annotations

import pytest

from agent.events import EndOfTurn, SpeechEnded, SpeechStarted, TurnScored
from agent.turn_eval import (
    COMMA_KEEP_SHARE,
    MAX_PAUSE_S,
    CaseResult,
    choose_policy,
    pareto,
    pause_lengths,
    replay,
    split_cases,
    summarize,
)


def _case(end: float, candidates, turn_times=()):
    return CaseResult(0.0, end, list(candidates), list(turn_times), ["x"] * len(turn_times))


def test_pause_lengths_cover_the_range_in_a_fixed_order():
    pauses = pause_lengths(60)
    assert min(pauses) == 0.5 and max(pauses) == 1.5 and len(set(pauses)) == 60
    assert pauses == pause_lengths(60) and pauses != sorted(pauses)


def test_split_cases_assigns_events_to_their_case():
    events = [
        SpeechStarted(0.5),
        SpeechEnded(1.5),
        TurnScored(1.7, 1.5, "book a table for", 0.01, 2.0),
        SpeechStarted(2.5),
        SpeechEnded(3.5),
        TurnScored(3.7, 3.5, "book a table for four", 0.9, 0.2),
        EndOfTurn(3.75, "book a table for four", 0.9, 0.25, 0.8),
        SpeechStarted(6.0),
        SpeechEnded(7.0),
        TurnScored(7.2, 7.0, "yes", 0.8, 0.2),
        EndOfTurn(7.3, "yes", 0.8, 0.3, 0.9),
    ]
    first, second = split_cases(events, [(0.5, 3.5), (6.0, 7.0)])
    assert first.candidates == [(1.5, 1.7, 0.01, 2.5), (3.5, 3.7, 0.9, None)]
    assert not first.cut_off and first.latency == pytest.approx(0.25)
    assert second.candidates == [(7.0, 7.2, 0.8, None)] and second.latency == pytest.approx(0.3)


def test_replay_cuts_when_the_wait_is_shorter_than_the_pause():
    case = _case(3.5, [(1.5, 1.7, 0.3, 2.5), (3.5, 3.7, 0.9, None)])
    assert replay(case, lambda p: 0.2 if p > 0.5 else 2.0) == (False, pytest.approx(0.2))
    assert replay(case, lambda p: 0.2) == (True, None)  # 0.2 s < the 1 s pause: cut after the fragment
    # The listener cannot end a turn before its transcript is ready.
    late = _case(3.5, [(3.5, 3.9, 0.9, None)])
    assert replay(late, lambda p: 0.2) == (False, pytest.approx(0.4))


def test_summarize_counts_cutoffs_and_latency():
    pauses = [_case(3.5, [(1.5, 1.7, 0.1, 2.5), (3.5, 3.7, 0.9, None)], [3.8]), _case(3.5, [], [1.9, 3.8])]
    completes = [_case(2.0, [(2.0, 2.2, 0.9, None)], [2.3]), _case(2.0, [(2.0, 2.2, 0.4, None)], [2.5])]
    heard = summarize(pauses, completes)
    assert heard["false_cutoffs"] == 1 and heard["false_cutoff_rate"] == 0.5
    assert heard["turns_found"] == 2 and heard["latency_p50_ms"] == 400


def _complete(p: float, ready: float = 0.1):
    """A complete turn heard from its parts: one candidate at its end (2.0 s), scored ``p``."""
    return _case(2.0, [(2.0, 2.0 + ready, p, None)])


def _comma(p: float, pause: float = 0.42, final_p: float = 0.99):
    """A sentence with one comma pause after 1 s (the clause scored ``p``) and its end 2 s later."""
    end = 1.0 + pause + 2.0
    return _case(end, [(1.0, 1.1, p, 1.0 + pause), (end, end + 0.1, final_p, None)])


def test_choose_policy_keeps_fragments_waiting_and_completes_fast():
    from agent.turn_detector import TurnDetector

    fragments = [0.001, 0.03, 0.08]
    completes = [_complete(p) for p in (0.95, 0.85, 0.6, 0.7, 0.2)]
    policy, figures = choose_policy(fragments, completes)
    detector = TurnDetector(None, **policy)
    assert min(detector.required_silence(p) for p in fragments) >= MAX_PAUSE_S + 0.3
    assert figures["complete_latency_p50_ms"] == policy["min_silence_ms"] == 200
    assert figures["shortest_fragment_wait_ms"] >= 1800
    # A fragment scored like the completes cannot be kept waiting by any policy of the grid.
    with pytest.raises(ValueError, match="no wait policy"):
        choose_policy([0.99], completes)


def test_choose_policy_waits_through_most_comma_pauses():
    from agent.turn_detector import TurnDetector

    fragments = [0.001, 0.03]
    completes = [_complete(p) for p in (0.99, 0.995, 0.98, 0.999, 0.1)]
    commas = [_comma(p) for p in (0.3, 0.45, 0.6, 0.99)]
    free, _ = choose_policy(fragments, completes)
    assert TurnDetector(None, **free).required_silence(0.45) < 0.42  # without them the milk clause is cut
    policy, figures = choose_policy(fragments, completes, commas)
    assert figures["comma_sentences"] - figures["comma_sentences_cut"] >= COMMA_KEEP_SHARE * len(commas)
    wait = TurnDetector(None, **policy).required_silence
    assert figures["comma_sentences_cut"] == sum(replay(c, wait)[0] for c in commas)
    assert figures["complete_latency_p50_ms"] == policy["min_silence_ms"]
    # A clause scored as surely complete as every complete turn is left to end early.
    assert wait(0.99) < 0.42


def test_pareto_front():
    assert pareto([(0.0, 900), (0.1, 400), (0.2, 500), (0.3, 200), (0.0, 800)]) == [(0.0, 800), (0.1, 400), (0.3, 200)]


def test_curve_png(tmp_path):
    from PIL import Image

    from agent.turn_eval import plot_curves

    path = tmp_path / "curve.png"
    plot_curves({"zero_shot": [(0.3, 250), (0.0, 900)], "trained": [(0.0, 260)]}, path, {"trained": (260, 0.0)})
    assert Image.open(path).size == (720, 460)


def test_score_parts_decodes_after_each_part_and_charges_its_cpu_time():
    import numpy as np

    from agent.turn_eval import score_parts

    class WordsAsr:  # one word per 0.5 s of loud audio
        def decode(self, audio):
            from types import SimpleNamespace

            words = int(np.sum(np.abs(audio) > 0.1) / 8000)
            text = " ".join(["word"] * words)
            return SimpleNamespace(readings=(text,) if text else ())

    class Length:  # P(end) grows with the number of words
        def probability(self, text):
            return min(1.0, len(text.split()) / 4)

    loud = np.full(16000, 0.5, np.float32)  # 1 s: two words
    results = score_parts([[loud, loud]], [[0.8]], WordsAsr(), {"length": Length()})
    (case,) = results["length"]
    assert case.scored == ["word word", "word word word word"] and case.texts == ["word word word word"]
    (end1, ready1, p1, next1), (end2, ready2, p2, next2) = case.candidates
    assert (end1, next1, p1) == (1.0, 1.8, 0.5) and (end2, next2, p2) == (pytest.approx(2.8), None, 1.0)
    assert 1.064 <= ready1 < 1.5 and case.end == pytest.approx(2.8)
    # A wait shorter than the 0.8 s pause cuts the case after its first part.
    assert replay(case, lambda p: 0.5)[0] and not replay(case, lambda p: 0.2 if p == 1.0 else 2.0)[0]
