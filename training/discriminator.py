"""A patch discriminator on log-mel crops, for adversarial training of the codec's mel decoder.

The mel decoder is trained by L1 regression, which predicts the average of what a code could
mean: formants blur and fricatives lose their noisy texture (the card's spectrograms show it).
An adversarial loss rewards detail the L1 loss averages away. This discriminator judges local
time-frequency patches of normalised log-mel, so it is cheap enough for CPU runs; hinge losses
and feature matching as in Vocos / HiFi-GAN. Training-only: nothing here ships in the codec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MelDiscriminator(nn.Module):
    """2-D conv stack over [B, n_mels, T] mel -> a map of real/fake logits plus its feature maps."""

    def __init__(self, channels: int = 32, layers: int = 4):
        super().__init__()
        convs = [nn.Conv2d(1, channels, (3, 9), padding=(1, 4))]
        for _ in range(layers - 1):
            convs.append(nn.Conv2d(channels, channels, (3, 9), stride=(2, 2), padding=(1, 4)))
        self.convs = nn.ModuleList(nn.utils.parametrizations.weight_norm(c) for c in convs)
        self.out = nn.utils.parametrizations.weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, 1, F', T'] and the hidden feature maps (for feature matching)."""
        x, features = mel.unsqueeze(1), []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        return self.out(x), features


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator (``fake_logits`` computed from detached generator output)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_losses(
    disc: MelDiscriminator, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge adversarial loss, feature-matching L1) for the generator's ``fake`` mel against ``real``."""
    fake_logits, fake_features = disc(fake)
    with torch.no_grad():
        _, real_features = disc(real)
    adversarial = F.relu(1 - fake_logits).mean()
    matching = sum((f - r).abs().mean() for f, r in zip(fake_features, real_features, strict=True))
    return adversarial, matching / len(fake_features)


def aligned_crops(
    real: torch.Tensor, fake: torch.Tensor, valid: torch.Tensor, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``frames``-long window of ``real`` and ``fake`` [B, n_mels, T] per clip.

    Windows lie inside each clip's ``valid`` mel frames where the clip is long enough, so the
    discriminator rarely sees padding.
    """
    frames = min(frames, real.shape[-1])
    starts = [int(torch.randint(0, max(1, int(v) - frames + 1), ()).item()) for v in valid]
    starts = [min(s, real.shape[-1] - frames) for s in starts]
    pick = lambda x: torch.stack([x[i, :, s : s + frames] for i, s in enumerate(starts)])  # noqa: E731
    return pick(real), pick(fake)


class Adversary:
    """The discriminator, its optimiser, and the crops of the last generator pass to train it on."""

    def __init__(self, lr: float, frames: int, disc: MelDiscriminator | None = None):
        self.disc = disc or MelDiscriminator()
        self.opt = torch.optim.AdamW(self.disc.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
        self.frames = frames  # mel frames per crop
        self._crops: tuple[torch.Tensor, torch.Tensor] | None = None

    def generator_terms(
        self, real: torch.Tensor, fake: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial, feature matching) losses on aligned crops; the crops are kept for :meth:`step`."""
        real_crop, fake_crop = aligned_crops(real, fake, valid, self.frames)
        self._crops = (real_crop.detach(), fake_crop.detach())
        return generator_losses(self.disc, real_crop, fake_crop)

    def step(self, lr: float) -> float:
        """One discriminator update on the last crops; returns its loss."""
        if self._crops is None:
            raise RuntimeError("Adversary.step() before generator_terms(): no crops to train on")
        real, fake = self._crops
        loss = discriminator_loss(self.disc(real)[0], self.disc(fake)[0])
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        """Discriminator and optimiser state, for resumable checkpoints."""
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])
