"""Shared fixtures: real models are loaded once per test session."""

from __future__ import annotations

import os

import pytest

# Tests never reach a hub: every asset comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def teacher():
    """The Piper teacher voice, steady (no sampling noise): the same speech on every run."""
    from training.teacher import teacher_voice

    return teacher_voice(steady=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as the talker runs by default: two threads on two shared cores stall each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
