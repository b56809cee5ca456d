"""The mel discriminator used for adversarial codec training: it learns, and its crops line up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.discriminator import Adversary, MelDiscriminator, aligned_crops


def test_discriminator_learns_to_tell_detail_from_blur():
    """Textured 'real' mel vs its time-smoothed copy (what L1 regression produces): D must separate them."""
    torch.manual_seed(0)
    real = torch.randn(4, 80, 64)
    blurred = F.avg_pool1d(real, 5, stride=1, padding=2)
    adversary = Adversary(lr=2e-3, frames=48, disc=MelDiscriminator(channels=16, layers=3))
    valid = torch.tensor([64, 64, 64, 64])
    for _ in range(60):
        adversary.generator_terms(real, blurred, valid)
        loss = adversary.step(2e-3)
    with torch.no_grad():
        assert adversary.disc(real)[0].mean() > adversary.disc(blurred)[0].mean() + 0.5
    assert loss < 1.0  # hinge loss starts near 2 for an undecided discriminator


def test_generator_terms_push_the_fake_towards_the_real():
    torch.manual_seed(1)
    real = torch.randn(2, 80, 40)
    fake = torch.zeros(2, 80, 40, requires_grad=True)
    adversary = Adversary(lr=1e-3, frames=32, disc=MelDiscriminator(channels=8, layers=2))
    adv, matching = adversary.generator_terms(real, fake, torch.tensor([40, 40]))
    (adv + matching).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_crops_are_aligned_and_inside_the_valid_frames():
    real = torch.arange(2 * 3 * 50, dtype=torch.float32).reshape(2, 3, 50)
    fake = real + 1000
    for _ in range(20):
        r, f = aligned_crops(real, fake, torch.tensor([50, 20]), 16)
        assert r.shape == (2, 3, 16) and torch.equal(f, r + 1000)
        assert r[1, 0, -1] < real[1, 0, 20]  # the short clip's window ends inside its 20 valid frames
