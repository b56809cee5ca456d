from __future__ import annotations

import pytest

from training.wer import normalise_text, wer_gap, word_error_rate


def test_normalise_text_spells_numbers_and_expands_contractions():
    assert normalise_text("Let me know when you're ready!") == normalise_text("let me know when you are ready")
    assert normalise_text("It's 8 o'clock, 40% done.") == "it is eight oclock forty percent done"
    assert normalise_text("I can't and won't; he didn't") == "i can not and will not he did not"
    assert normalise_text("John's car") == "johns car"  # a possessive is not a contraction
    assert word_error_rate(["Set a timer for ten minutes."], ["Set a timer for 10 minutes"]) == 0.0


def test_wer_gap_is_the_wer_difference_with_a_paired_standard_error():
    refs = ["turn the lights off in the kitchen", "it is eight o'clock"]
    baseline = ["turn the lights off in the kitchen", "it's 8 o'clock"]
    candidate = ["turn the light off in the kitchen", "it is eight o'clock"]
    gap, se = wer_gap(refs, baseline, candidate)
    # one extra error in 7 + 4 words: residuals 1 - 7/11 and 0 - 4/11, so se = sqrt(2 * 2 * (4/11)^2) / 11
    assert gap == pytest.approx(1 / 11)
    assert gap == pytest.approx(word_error_rate(refs, candidate) - word_error_rate(refs, baseline))
    assert se == pytest.approx(8 / 121)
    assert wer_gap(refs, candidate, candidate) == (0.0, 0.0)
    with pytest.raises(ValueError, match="one baseline and one candidate"):
        wer_gap(refs, baseline, candidate[:1])
