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
    with pytest.raises(ValueError, match="eot_hold"):
        TurnDetector(None, eot_threshold=0.3, eot_hold=0.3)


def test_hold_keeps_the_long_wait_for_unlikely_ends():
    detector = TurnDetector(None, min_silence_ms=200, max_silence_ms=2000, eot_threshold=0.6, eot_hold=0.2)
    assert detector.required_silence(0.0) == detector.required_silence(0.2) == pytest.approx(2.0)
    assert detector.required_silence(0.6) == pytest.approx(0.2)
    assert detector.required_silence(0.4) == pytest.approx((2.0 * 0.2) ** 0.5)  # geometric midpoint
    waits = [detector.required_silence(i / 100) for i in range(101)]
    assert all(a >= b for a, b in zip(waits, waits[1:], strict=False))


def test_settings_override_the_scorers_policy():
    from agent.settings import load_settings
    from agent.turn_detector import turn_policy
    from model.turn_head import WaitPolicy

    own = WaitPolicy(min_silence_ms=200, max_silence_ms=2000, eot_threshold=0.7, eot_hold=0.1)
    settings = load_settings(overrides=["turn.eot_threshold=0.8"], environ={})
    assert turn_policy(settings.turn, own) == WaitPolicy(200, 2000, 0.8, 0.1)
    assert turn_policy(load_settings(environ={}).turn, own) == own


def test_unknown_scorer_and_missing_head_say_what_to_do(tmp_path):
    from agent.settings import SettingsError, load_settings
    from agent.turn_detector import build_turn_detector
    from model.assets import AssetError

    with pytest.raises(SettingsError, match="unknown turn.scorer"):
        build_turn_detector(load_settings(overrides=["turn.scorer=acoustic"], environ={}).turn, None)
    missing = load_settings(overrides=[f"turn.checkpoint={tmp_path / 'none.safetensors'}"], environ={})
    with pytest.raises(AssetError, match="ttt train turn"):
        build_turn_detector(missing.turn, None)


def test_head_checkpoint_round_trip(tmp_path):
    import torch

    from model.turn_head import TurnHead, TurnHeadCard, TurnHeadConfig, WaitPolicy, load_head, save_head

    head = TurnHead(TurnHeadConfig(layers=(5, 30), hidden=8)).eval()
    card = TurnHeadCard(config=head.config, policy=WaitPolicy(200, 2000, 0.6, 0.05), metrics={"auc": 0.9})
    save_head(head, card, tmp_path / "turn_head.safetensors")
    loaded, loaded_card = load_head(tmp_path / "turn_head.safetensors")
    assert loaded_card == card
    x = torch.randn(3, head.config.n_features)
    assert torch.allclose(loaded(x), head(x))


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


@pytest.fixture(scope="module")
def trained(eot_model):
    from model.backbone import load_backbone
    from model.turn_head import load_head

    head, _ = load_head()
    prompt = "You are a helpful voice assistant. Answer briefly."
    return EndOfTurnModel(load_backbone(), prompt, quantize=True, head=head)


@pytest.mark.slow
def test_trained_head_separates_held_out_fragments_from_complete_turns(trained):
    from training.turn_data import read_pause_cases, read_turns

    # Written as whisper writes a fragment voiced on its own: with a full stop.
    fragments = [trained.probability(f + ".") for f, _ in read_pause_cases()]
    complete = [trained.probability(t) for t in read_turns()]
    auc = sum(c > f for c in complete for f in fragments) / (len(complete) * len(fragments))
    assert auc > 0.97, auc
    # All but two fragments score below the complete turns' 25th percentile.
    assert sorted(fragments)[-3] < sorted(complete)[len(complete) // 4]


@pytest.mark.slow
def test_trained_scoring_is_fast_and_matches_its_batch_features(trained):
    import time

    import torch

    text = "Could you send the invoice to my accountant before Friday?"
    trained.probability(text)  # warm-up
    cpu = []
    for _ in range(5):
        started = time.thread_time()
        p = trained.probability(text)
        cpu.append(time.thread_time() - started)
    assert sorted(cpu)[2] < 0.1  # median CPU time of one call, one torch thread
    features = trained.features([text])
    assert float(torch.sigmoid(trained.head(features))[0]) == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
def test_empty_transcript_and_bad_scoring(eot_model):
    assert eot_model.probability("   ") == 0.0
    from model.backbone import load_backbone

    with pytest.raises(ValueError, match="unknown end-of-turn scoring"):
        EndOfTurnModel(load_backbone(), "hi", scoring="logits")
