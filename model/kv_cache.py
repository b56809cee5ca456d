"""A transformers KV cache whose keys and values live in buffers allocated once.

A conversation's prompt cache grows by one position per token and is cropped back every turn. The
stock ``DynamicCache`` concatenates on every token, so each step allocates a new copy of every
layer's keys and values and frees the old one; over an hour of talk the allocator's heap fragments
and the process's resident memory creeps up long after the history has stopped growing. Here each
layer writes into a buffer sized for the whole prompt budget, touched once when it is made, so the
memory a conversation needs is taken at its first turn and stays flat. A buffer that fills up grows
by doubling (rare: only past the budget it was sized for).

Both prompt caches (the talker's, model/generate.py, and the cascade's text streamer,
agent/voices.py) extend the last prompt's cache by what follows the prefix they share, with the
two helpers here.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

PREFILL_CHUNK_TOKENS = 128  # prompt positions per forward pass: a history trimmed at its start is prefilled
# again whole, and one pass over hundreds of positions would take a peak of activation memory the heap keeps


def common_prefix_length(cached: list[int], ids: list[int]) -> int:
    """How many leading tokens ``ids`` shares with ``cached`` (the prompt a cache holds)."""
    common, limit = 0, min(len(cached), len(ids))
    while common < limit and cached[common] == ids[common]:
        common += 1
    return common


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in a buffer of ``capacity`` positions; ``keys``/``values`` view its filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        if capacity <= 0:
            raise ValueError(f"a KV cache needs a capacity of at least 1 position, got {capacity}")
        self.capacity = capacity  # positions the buffer holds before it has to grow
        self.length = 0  # positions filled

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the buffers for the shape and dtype of the first keys and values written."""
        self.device = key_states.device
        batch, heads, _, key_dim = key_states.shape
        value_dim = value_states.shape[-1]
        # zeros, not empty: the pages are committed now rather than turn by turn
        self._key_buffer = torch.zeros(batch, heads, self.capacity, key_dim, dtype=key_states.dtype, device=self.device)
        self._value_buffer = torch.zeros(
            batch, heads, self.capacity, value_dim, dtype=value_states.dtype, device=self.device
        )
        self.length = 0
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity)
        for name in ("_key_buffer", "_value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            new[..., : self.length, :] = old[..., : self.length, :]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Write the new positions after the filled ones; return all filled keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.capacity:
            self._grow(self.length + n)
        self._key_buffer[..., self.length : self.length + n, :] = key_states
        self._value_buffer[..., self.length : self.length + n, :] = value_states
        self.length += n
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Positions filled."""
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` positions (a negative count, as ``DynamicLayer.crop`` takes)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of positions to remove, got {tokens_to_remove}")
        if not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self._expose()

    def reset(self) -> None:
        """Empty the layer, keeping its buffer."""
        if self.is_initialized:
            self.length = 0
            self._expose()

    def copy(self) -> PreallocatedLayer:
        """An independent layer holding the same positions."""
        out = PreallocatedLayer(self.capacity)
        if self.is_initialized:
            out.device, out.length, out.is_initialized = self.device, self.length, True
            out._key_buffer, out._value_buffer = self._key_buffer.clone(), self._value_buffer.clone()
            out._expose()
        return out

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Not supported: beam search needs a cache per beam."""
        raise NotImplementedError("a preallocated KV cache holds one sequence; use DynamicCache for beam search")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Not supported: beam search needs a cache per beam."""
        raise NotImplementedError("a preallocated KV cache holds one sequence; use DynamicCache for beam search")


class PreallocatedCache(Cache):
    """A cache of :class:`PreallocatedLayer`, one per decoder layer of ``config``, each of ``capacity`` positions."""

    def __init__(self, config: Any, capacity: int):
        layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[PreallocatedLayer(capacity) for _ in range(layers)])

    def copy(self) -> PreallocatedCache:
        """An independent cache holding the same positions (a second branch of one generation starts from it)."""
        out = PreallocatedCache.__new__(PreallocatedCache)
        Cache.__init__(out, layers=[layer.copy() for layer in self.layers])
        return out
