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
