"""The conversation so far, as chat messages, trimmed to the context window (system prompt kept)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Told to the model after a reply the user cut off, so it knows the rest was never heard.
INTERRUPTED_NOTE = "The user interrupted you: they heard only the words above, not the rest of your reply."


@dataclass
class History:
    """System prompt plus user/assistant (and tool) messages; the oldest turns go first when it is too long.

    ``count_tokens`` gives one message's length in tokens (its text plus the chat template's
    overhead); each message is counted once, when it is added, so trimming costs nothing per turn.
    """

    system_prompt: str
    max_tokens: int = 2048  # budget for the whole prompt; the oldest turns are dropped beyond it
    count_tokens: Callable[[dict], int] = lambda message: len(message["content"].split()) + 4
    # Trimming drops down to this share of the budget at once: a prompt whose start changed must be
    # prefilled again (seconds on a CPU at 1k tokens), so that should happen every few turns, not every turn.
    trim_to: float = 0.6
    messages: list[dict] = field(default_factory=list)  # without the system prompt
    _lengths: list[int] = field(default_factory=list)
    dropped: int = 0  # messages trimmed away so far

    def add(self, role: str, content: str, **extra: str) -> None:
        """Append a message and trim."""
        message = {"role": role, "content": content, **extra}
        self.messages.append(message)
        self._lengths.append(self.count_tokens(message))
        self._trim()

    def add_user(self, text: str) -> None:
        """The user's turn."""
        self.add("user", text)

    def take_back_user(self, text: str) -> bool:
        """Remove the last message if it is the user's ``text`` (a turn that went on); whether it was."""
        if not self.messages or self.messages[-1] != {"role": "user", "content": text}:
            return False
        self.messages.pop()
        self._lengths.pop()
        return True

    def add_reply(self, heard: str, interrupted: bool) -> None:
        """The agent's reply as the user heard it; a cut one is followed by a note saying so (if any was heard)."""
        if heard:
            self.add("assistant", heard)
            if interrupted:
                self.add("system", INTERRUPTED_NOTE)

    def cut_reply(self, index: int, heard: str) -> None:
        """The reply at ``messages[index]`` was heard only up to ``heard`` (a client truncated it after it played)."""
        message = self.messages[index]
        if heard == message["content"]:
            return
        noted = index + 1 < len(self.messages) and self.messages[index + 1]["content"] == INTERRUPTED_NOTE
        if not heard:
            for _ in range(2 if noted else 1):
                self.messages.pop(index)
                self._lengths.pop(index)
            return
        self.messages[index] = {**message, "content": heard}
        self._lengths[index] = self.count_tokens(self.messages[index])
        if not noted:
            note = {"role": "system", "content": INTERRUPTED_NOTE}
            self.messages.insert(index + 1, note)
            self._lengths.insert(index + 1, self.count_tokens(note))
        self._trim()

    def chat(self) -> list[dict]:
        """The messages to prompt the model with: the system prompt, then the kept history."""
        return [{"role": "system", "content": self.system_prompt}, *self.messages]

    @property
    def tokens(self) -> int:
        """Tokens of the kept history plus the system prompt."""
        return self.count_tokens({"role": "system", "content": self.system_prompt}) + sum(self._lengths)

    def _trim(self) -> None:
        # Drop whole exchanges from the front: never leave the history opening on a reply or a note,
        # and always keep the newest message (the user's turn being answered).
        if self.tokens <= self.max_tokens:
            return
        while self.tokens > self.trim_to * self.max_tokens and len(self.messages) > 1:
            self._drop_first()
            while len(self.messages) > 1 and self.messages[0]["role"] != "user":
                self._drop_first()

    def _drop_first(self) -> None:
        self.messages.pop(0)
        self._lengths.pop(0)
        self.dropped += 1
