"""Split a safetensors file into shards of at most N MiB, or join such shards back into one file.

    python3 training/gpu/shards.py split IN.safetensors OUT_PREFIX 15
    python3 training/gpu/shards.py join OUT.safetensors OUT_PREFIX-*.safetensors

Tensors are kept whole (a shard holds whole tensors); the metadata goes with every shard.
"""

from __future__ import annotations

import sys

from safetensors import safe_open
from safetensors.torch import save_file


def split(path: str, prefix: str, mib: float) -> list[str]:
    """Write ``prefix-K.safetensors`` shards of at most ``mib`` MiB; return their paths."""
    limit = mib * 2**20
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    shards, current, size = [], {}, 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = value
        size += nbytes
    shards.append(current)
    paths = []
    for i, shard in enumerate(shards):
        paths.append(f"{prefix}-{i}.safetensors")
        save_file(shard, paths[-1], metadata=meta)
    return paths


def join(out: str, parts: list[str]) -> None:
    """Merge shards (any order) into ``out``."""
    tensors, meta = {}, {}
    for part in parts:
        with safe_open(part, framework="pt") as f:
            meta = f.metadata() or meta
            tensors |= {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, out, metadata=meta)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "split":
        print("\n".join(split(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 15)))
    elif len(sys.argv) >= 4 and sys.argv[1] == "join":
        join(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
