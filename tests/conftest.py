"""Shared fixtures: real models are loaded once per test session."""

from __future__ import annotations

import os

import pytest

# Tests never reach a hub: every asset comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def teacher():
    """The Piper teacher voice (real speech for every hearing test)."""
    from training.teacher import teacher_voice

    return teacher_voice()
