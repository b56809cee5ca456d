from __future__ import annotations

import pytest

from agent.bench import COMPLETE_PHRASES, UNFINISHED_PHRASES
from agent.turn_detector import EndOfTurnModel, TurnDetector, strip_final_punctuation


def test_required_silence_is_monotone_in_p():
    detector = TurnDetector(None, min_silence_ms=250, max_silence_ms=2000, eot_threshold=0.4)
    ps = [i / 100 for i in range(101)]
    waits = [detector.required_silence(p) for p in ps]
    assert all(a >= b for a, b in zip(waits, waits[1:], strict=False))
    assert waits[0] == pytest.approx(2.0)
    assert detector.required_silence(0.4) == pytest.approx(0.25)
    assert detector.required_silence(0.9) == pytest.approx(0.25)
    assert detector.turn_over(0.3, 0.9) and not detector.turn_over(0.3, 0.05)
    # Strictly longer waits for less likely ends, below the threshold.
    assert detector.required_silence(0.1) > detector.required_silence(0.2) > detector.required_silence(0.3)


def test_turn_detector_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_silence_ms <= max_silence_ms"):
        TurnDetector(None, min_silence_ms=900, max_silence_ms=300)
    with pytest.raises(ValueError, match="eot_threshold"):
        TurnDetector(None, eot_threshold=0.0)


def test_strip_final_punctuation_keeps_signs_of_continuation():
    assert strip_final_punctuation("Can you hear me?") == "Can you hear me"
    assert strip_final_punctuation("I would like a table for.") == "I would like a table for"
    assert strip_final_punctuation("My number is 555,") == "My number is 555,"
    assert strip_final_punctuation("Well...") == "Well..."


@pytest.fixture(scope="module")
def eot_model():
    import torch

    from model.backbone import load_backbone

    # As the listener runs it (turn.torch_threads): one thread, no spinning against other work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield EndOfTurnModel(load_backbone(), "You are a helpful voice assistant. Answer briefly.")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eot_int8(eot_model):
    from model.backbone import load_backbone

    return EndOfTurnModel(load_backbone(), "You are a helpful voice assistant. Answer briefly.", quantize=True)


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_complete_sentences_score_higher_than_unfinished_phrases(int8, request):
    model = request.getfixturevalue("eot_int8" if int8 else "eot_model")
    complete = [model.probability(t) for t in COMPLETE_PHRASES]
    # As whisper writes them: it ends fragments with a full stop too.
    unfinished = [model.probability(t + ".") for t in UNFINISHED_PHRASES]
    assert min(complete) > max(unfinished)
    assert min(complete) > 0.15 and max(unfinished) < 0.1


@pytest.mark.slow
def test_cached_prefix_matches_a_full_forward(eot_model):
    import torch

    tok, model = eot_model.tokenizer, eot_model.model
    text = "Please set an alarm for seven"
    prefix = eot_model._template_prefix("You are a helpful voice assistant. Answer briefly.")
    ids = tok(prefix, add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([ids, tok(text, add_special_tokens=False, return_tensors="pt").input_ids], dim=1)
    with torch.inference_mode():
        probs = torch.softmax(model(ids).logits[0, -1], dim=-1)
    expected = float(probs[eot_model.end_ids].sum())
    # Twice: the cache must come back to the prefix after each call.
    assert eot_model.probability(text) == pytest.approx(expected, abs=1e-4)
    assert eot_model.probability("What is the") < 0.05
    assert eot_model.probability(text) == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_empty_transcript_and_bad_scoring(eot_model):
    assert eot_model.probability("   ") == 0.0
    from model.backbone import load_backbone

    with pytest.raises(ValueError, match="unknown end-of-turn scoring"):
        EndOfTurnModel(load_backbone(), "hi", scoring="logits")
