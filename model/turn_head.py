"""The trained end-of-turn head: P(the user's turn is over | transcript) from the frozen backbone's states.

The backbone reads the chat prefix and the transcript (as the zero-shot scorer does); the head reads,
at the transcript's last token, the hidden states of a few layers and the zero-shot log-probabilities
of "<|im_end|>" and of a sentence end, standardised, through a small MLP. The backbone is not changed
(the talker shares it), so a checkpoint holds only the head: about 150k parameters.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
TURN_HEAD = CHECKPOINT_DIR / "turn_head.safetensors"  # the shipped head; its config and policy in turn_head.json


@dataclass
class TurnHeadConfig:
    """Shape of the head and which backbone states it reads."""

    layers: tuple[int, ...] = (10, 20, 30)  # hidden_states indices read at the last token (30 = final, normed)
    width: int = 576  # backbone hidden size
    hidden: int = 64  # MLP hidden units
    dropout: float = 0.2  # on the standardised input, while training

    @property
    def n_features(self) -> int:
        """Input size: the chosen layers' states plus log P(<|im_end|>) and log P(sentence end)."""
        return len(self.layers) * self.width + 2


@dataclass
class WaitPolicy:
    """Required silence as a function of P(end of turn), chosen on a dev set (see TurnDetector)."""

    min_silence_ms: int = 250  # wait once P >= eot_threshold
    max_silence_ms: int = 2000  # wait once P <= eot_hold (and the cap for any turn)
    eot_threshold: float = 0.5  # P at or above which the short wait applies
    eot_hold: float = 0.0  # P at or below which the long wait applies; geometric in between


@dataclass
class TurnHeadCard:
    """What a head checkpoint carries beside its weights (turn_head.json)."""

    config: TurnHeadConfig = field(default_factory=TurnHeadConfig)
    policy: WaitPolicy = field(default_factory=WaitPolicy)  # the wait policy chosen for this head
    quantized_backbone: bool = True  # whether the training features came from the int8 backbone copy
    metrics: dict[str, Any] = field(default_factory=dict)  # dev figures recorded by training

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TurnHeadCard:
        """Read the JSON written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        config = data.get("config", {})
        config["layers"] = tuple(config.get("layers", TurnHeadConfig.layers))
        return cls(
            config=TurnHeadConfig(**config),
            policy=WaitPolicy(**data.get("policy", {})),
            quantized_backbone=bool(data.get("quantized_backbone", True)),
            metrics=data.get("metrics", {}),
        )


class TurnHead(nn.Module):
    """Standardise the features, then a one-hidden-layer MLP to the logit of P(end of turn)."""

    def __init__(self, config: TurnHeadConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.n_features))
        self.register_buffer("std", torch.ones(config.n_features))
        self.net = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(config.n_features, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits, one per row of ``features`` (n, n_features)."""
        return self.net((features - self.mean) / self.std).squeeze(-1)


def last_token_features(
    hidden_states: tuple[torch.Tensor, ...],
    lm_head: nn.Module,
    end_ids: list[int],
    sentence_ids: list[int],
    layers: tuple[int, ...],
    last: torch.Tensor,
) -> torch.Tensor:
    """The head's input from a backbone forward's ``hidden_states``, at position ``last[b]`` of row ``b``.

    The zero-shot log-probabilities come from ``lm_head`` on the final (normed) state at that position,
    so a padded batch and a single transcript give the same features.
    """
    rows = torch.arange(len(last))
    states = [hidden_states[i][rows, last] for i in layers]
    logp = torch.log_softmax(lm_head(hidden_states[-1][rows, last]).float(), dim=-1)
    im_end = logp[:, end_ids[0]]
    sentence_end = torch.logsumexp(logp[:, sentence_ids], dim=-1)
    return torch.cat([*states, im_end[:, None], sentence_end[:, None]], dim=-1).float()


def save_head(head: TurnHead, card: TurnHeadCard, path: str | os.PathLike) -> None:
    """Write the head's weights (safetensors) and its card (same name, .json)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    card.save(path.with_suffix(".json"))


def load_head(path: str | os.PathLike | None = None) -> tuple[TurnHead, TurnHeadCard]:
    """A trained head and its card; FileNotFoundError naming the command that trains one."""
    from safetensors.torch import load_file

    path = Path(path) if path else TURN_HEAD
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        raise FileNotFoundError(
            f"no trained end-of-turn head at {path} (with {card_path.name} beside it); train one with "
            "`ttt train turn`, or set turn.scorer=zero_shot"
        )
    card = TurnHeadCard.load(card_path)
    head = TurnHead(card.config)
    head.load_state_dict(load_file(str(path)))
    head.eval()
    return head, card
