"""The process's memory: its resident size, and handing the heap's freed pages back to the system.

The models allocate natively (torch, CTranslate2, onnxruntime) through glibc's malloc, which keeps
freed memory in its arenas. A conversation's tensors change size every turn, the arenas fragment,
and resident memory creeps up long after the process's real needs have stopped growing (measured
in benchmarks/memory.md). Two things keep it flat:

- ``malloc_trim`` returns the free pages; it takes about 2 ms, so the agent calls it once a second
  while it runs, rather than changing how every allocation is served (a fixed mmap threshold does
  that, and slows the models by a fifth). Once per reply was measured too: memory freed after the
  reply (whisper's and Piper's buffers of the next turn) then stays until the next one.
- ``ttt`` limits glibc to two malloc arenas at start (its default is eight per core): each thread
  that meets a busy arena gets a new one, and memory freed in one arena cannot serve another, so a
  long run took a step of about 50 MB that trimming never gave back. Side by side, latency is the same.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os


def resident_mb() -> float:
    """Resident memory of the process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _glibc(function: str):  # noqa: ANN202 - a ctypes function, or None
    """``function`` of the C library, or None where it has none (musl, macOS: not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):
        return None


@functools.cache
def _malloc_trim():  # noqa: ANN202 - a ctypes function, or None
    return _glibc("malloc_trim")


MALLOC_ARENAS = 2  # glibc malloc arenas for the whole process (M_ARENA_MAX); $MALLOC_ARENA_MAX wins
_M_ARENA_MAX = -8  # mallopt's parameter number for it (malloc.h)


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count`` (call before threads start); False where not glibc or already set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # the person running us chose: glibc read it at start
    mallopt = _glibc("mallopt")
    return bool(mallopt is not None and mallopt(_M_ARENA_MAX, count))


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the system; False where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


TRIM_INTERVAL_S = 1.0  # seconds between trims while the agent runs (each about 2 ms on the event loop)


async def trim_periodically(interval_s: float = TRIM_INTERVAL_S) -> None:
    """Hand the heap's freed pages back every ``interval_s`` seconds, until cancelled."""
    if _malloc_trim() is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        release_freed_memory()
