"""Per-turn latency: TurnMetrics events as JSON lines while the agent talks, and their summary at exit."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import IO, Any

from agent.events import EventBus, TurnMetrics

STAGES = ("voice_to_voice_s", "turn_wait_s", "first_text_s", "first_audio_s", "playout_s")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated (statistics' inclusive method)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def summarize(turns: list[TurnMetrics]) -> dict[str, Any]:
    """p50 and p90 of voice-to-voice latency and of each stage, in milliseconds."""
    out: dict[str, Any] = {"turns": len(turns)}
    for stage in STAGES:
        values = [getattr(m, stage) for m in turns]
        name = stage.removesuffix("_s")
        out[f"{name}_p50_ms"] = round(1000 * percentile(values, 0.5)) if values else None
        out[f"{name}_p90_ms"] = round(1000 * percentile(values, 0.9)) if values else None
    return out


class MetricsLog:
    """Writes each TurnMetrics to ``path`` (one JSON object a line) as it is published."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.turns: list[TurnMetrics] = []
        self._file: IO[str] | None = None

    async def follow(self, bus: EventBus) -> None:
        """Consume ``bus`` until it closes."""
        queue = bus.subscribe()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w")
        try:
            while (event := await queue.get()) is not None:
                if isinstance(event, TurnMetrics):
                    self.turns.append(event)
                    if self._file is not None:
                        self._file.write(json.dumps(event.to_json()) + "\n")
                        self._file.flush()
        finally:
            if self._file is not None:
                self._file.close()

    def summary(self) -> dict[str, Any]:
        """:func:`summarize` of the turns so far."""
        return summarize(self.turns)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as one readable paragraph."""
    if not summary["turns"]:
        return "no turn was answered"
    parts = [f"{summary['turns']} turns answered"]
    for stage in STAGES:
        name = stage.removesuffix("_s")
        parts.append(f"{name.replace('_', ' ')} p50 {summary[name + '_p50_ms']} ms (p90 {summary[name + '_p90_ms']})")
    return "; ".join(parts)
