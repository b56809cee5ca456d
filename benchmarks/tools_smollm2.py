"""What SmolLM2-135M does with tools: does it call the right tool with valid arguments, and stay quiet otherwise?

Run: .venv/bin/python benchmarks/tools_smollm2.py  (greedy, the agent's default system prompt plus the tools)
"""

from __future__ import annotations

import json
import threading
from typing import Literal

import torch

from agent.settings import Settings
from agent.tools import Toolbox, parse_tool_call, tool
from agent.voices import TextStreamer
from model.backbone import load_backbone


@tool
def get_weather(city: str) -> str:
    """The weather now in a city.

    Args:
        city: the city's name
    """
    return "sunny"


@tool
def set_timer(minutes: int) -> str:
    """Start a countdown timer.

    Args:
        minutes: how long the timer runs, in minutes
    """
    return "ok"


@tool
def turn_lights(room: str, state: Literal["on", "off"]) -> str:
    """Switch the lights of a room on or off.

    Args:
        room: the room, e.g. kitchen
        state: on or off
    """
    return "done"


NEEDS_TOOL = [
    ("What is the weather in Paris?", "get_weather"),
    ("How is the weather in Berlin today?", "get_weather"),
    ("Set a timer for ten minutes.", "set_timer"),
    ("Please start a five minute timer.", "set_timer"),
    ("Turn on the lights in the kitchen.", "turn_lights"),
    ("Switch off the bedroom lights.", "turn_lights"),
]
NO_TOOL = ["What is the capital of France?", "Tell me a joke.", "How many days are in a week?", "Thank you!"]


def main() -> None:
    torch.set_num_threads(1)
    box = Toolbox([get_weather, set_timer, turn_lights])
    streamer = TextStreamer(load_backbone(), max_new_tokens=48)
    prompt = box.system_prompt(Settings().agent.system_prompt)
    rows = []
    for question, expected in [*NEEDS_TOOL, *[(q, None) for q in NO_TOOL]]:
        streamer._prefix = None
        text = "".join(
            streamer.stream(
                [{"role": "system", "content": prompt}, {"role": "user", "content": question}], threading.Event()
            )
        )
        call = parse_tool_call(text, "c")
        valid = (
            call is not None
            and call.name in box.tools
            and not box.tools[call.name].validate(json.loads(call.arguments or "{}") if call.name else {})
        )
        rows.append(
            {
                "question": question,
                "expected": expected,
                "called": call.name if call else None,
                "valid": bool(valid),
                "text": text,
            }
        )
        print(json.dumps(rows[-1]))
    right = sum(r["called"] == r["expected"] and r["valid"] for r in rows if r["expected"])
    quiet = sum(r["called"] is None for r in rows if not r["expected"])
    print(
        json.dumps(
            {
                "tool_questions": len(NEEDS_TOOL),
                "right_tool_valid_arguments": right,
                "no_tool_questions": len(NO_TOOL),
                "answered_without_a_call": quiet,
            }
        )
    )


if __name__ == "__main__":
    main()
