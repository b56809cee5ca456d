"""The process's memory helpers."""

from agent.memory import release_freed_memory, resident_mb


def test_resident_memory_is_the_kernels_figure():
    with open("/proc/self/status") as f:
        vm_rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert abs(resident_mb() - vm_rss_kb * 1024 / 1e6) < 5


def test_freed_heap_pages_go_back_to_the_system():
    # many mid-sized blocks below glibc's mmap threshold live on the heap; freed, they stay resident
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB
    kept = blocks[::50]  # a few survivors pin the heap's top, so only a trim can release the rest
    del blocks
    before = resident_mb()
    assert release_freed_memory()
    assert before - resident_mb() > 50
    del kept


def test_memory_by_turn_reads_each_turn_before_the_next_question():
    from agent.bench_chat import memory_by_turn

    spans = [(0.5, 2.0), (11.0, 12.5), (21.5, 23.0)]  # questions 9 s apart
    memory = [(float(t), 100.0 + t) for t in range(45)]  # the recording is assembled after t = 32
    assert memory_by_turn(memory, spans) == {1: 111.0, 2: 121.0, 3: 132.0}


ARENA_PROBE = """
import ctypes, ctypes.util, sys, threading
from agent.memory import limit_malloc_arenas
limited = limit_malloc_arenas() if sys.argv[1] == "limit" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(20000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(limited, flush=True)
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def _arenas(mode: str, env: dict | None = None) -> tuple[str, int]:
    import os
    import subprocess
    import sys

    run_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {})
    out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, env=run_env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr.count("Arena ")


def test_malloc_arenas_are_limited_to_two():
    limited, arenas = _arenas("limit")
    assert limited == "True" and 1 <= arenas <= 2
    _, unlimited = _arenas("plain")
    assert unlimited > 2  # eight threads on a busy heap: glibc's default gives them arenas of their own


def test_a_malloc_arena_max_from_the_environment_is_left_alone():
    limited, arenas = _arenas("limit", {"MALLOC_ARENA_MAX": "3"})
    assert limited == "False" and arenas <= 3


PIPER_PROBE = """
import sys
from agent.memory import release_freed_memory, resident_mb
from training.teacher import TeacherVoice
voice = TeacherVoice(threads=1, arena=sys.argv[1] == "arena")
voice.speak("Hello there.")
release_freed_memory()
before = resident_mb()
for words in (14, 20):
    voice.speak(" ".join(["unbelievably"] * words))
voice.speak("Hello there.")
release_freed_memory()
print(resident_mb() - before)
"""


def _piper_growth_mb(mode: str) -> float:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PIPER_PROBE, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


def test_the_agents_piper_keeps_no_memory_from_a_long_clause():
    """onnxruntime's arena keeps what the longest utterance needed; the agent's Piper runs without it."""
    assert _piper_growth_mb("no-arena") < 10
    assert _piper_growth_mb("arena") > 30
