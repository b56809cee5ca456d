"""Real human speech: a handful of the Asterisk studio prompts heard by the listener (trained scorer)."""

from __future__ import annotations

import pytest

from agent.bench import listen_file
from agent.real_speech import INSTALL_HINT, SOUNDS, TEXTS, choose_prompts, load_prompt, read_prompts, write_prompts
from agent.settings import Settings
from agent.turn_eval import CASE_GAP_S
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
    # One end of turn per prompt, in order (a cut-off would add one, a merge remove one); timings are
    # the benchmark's business (they follow the machine's load), so turns are matched by order.
    turns = result.turns
    seen = [(p.text, t.text) for p, t in zip(prompts, turns, strict=False)]
    assert len(turns) == len(prompts), seen
    for prompt, turn, (_, end) in zip(prompts, turns, spans, strict=True):
        assert word_error_rate([prompt.text], [turn.text]) <= 0.3, seen
        assert turn.t > end  # never before the prompt's speech is over
    assert word_error_rate([p.text for p in prompts], [t.text for t in turns]) <= 0.15, seen
