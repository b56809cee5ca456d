"""Real human speech: a handful of the Asterisk studio prompts heard by the listener (trained scorer)."""

from __future__ import annotations

import statistics

import pytest

from agent.bench import listen_file
from agent.real_speech import INSTALL_HINT, SOUNDS, TEXTS, choose_prompts, load_prompt, read_prompts, write_prompts
from agent.settings import Settings
from agent.turn_eval import CASE_GAP_S, split_cases
from training.wer import word_error_rate

pytestmark = pytest.mark.skipif(
    not (SOUNDS.is_dir() and TEXTS.is_file()), reason=f"Asterisk prompts not installed: {INSTALL_HINT} (.ci/run does)"
)


def test_read_prompts_spells_keypad_signs_and_drops_sound_effects():
    prompts = {p.name: p for p in read_prompts()}
    assert len(prompts) > 400
    assert "pound" in prompts["agent-pass"].text and "#" not in prompts["agent-pass"].text
    assert "beep" not in prompts  # "[this is a simple beep tone]" says nothing
    assert all(p.path.is_file() for p in prompts.values())


@pytest.mark.slow
def test_a_handful_of_real_prompts_each_end_one_turn(tmp_path):
    from agent.listen import Listener

    prompts = [p for p in choose_prompts(read_prompts(), 8, min_words=6) if p.complete][:6]
    spans = write_prompts([load_prompt(p) for p in prompts], tmp_path / "real.wav", CASE_GAP_S)
    listener = Listener.from_settings(Settings())
    try:
        result = listen_file(listener, tmp_path / "real.wav")
    finally:
        listener.close()
    cases = split_cases(result.events, spans)
    seen = [(p.text, c.texts, c.latency) for p, c in zip(prompts, cases, strict=True)]
    assert all(c.latency is not None for c in cases), seen  # every prompt ends a turn...
    assert not any(c.cut_off for c in cases), seen  # ...and none is cut before its end
    assert word_error_rate([p.text for p in prompts], [" ".join(c.texts) for c in cases]) <= 0.15, seen
    assert statistics.median(c.latency for c in cases) < 0.5, seen
