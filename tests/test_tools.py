"""Tools: schemas from typed functions, validation, timeouts, loading a tools file, and calls inside the loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

import pytest

from agent.dialogue import History
from agent.events import (
    ErrorEvent,
    Interruption,
    PlaybackFinished,
    PlaybackStarted,
    ReplyTextDelta,
    ToolCallEnded,
    ToolCallStarted,
)
from agent.loop import TOOL_APOLOGY, Agent
from agent.tools import Tool, Toolbox, ToolCall, ToolError, load_tools, may_open_call, parse_tool_call, tool
from audio_io.virtual import VirtualClock, VirtualMicrophone, VirtualSpeaker
from tests.fakes import WORD_AUDIO_S, FakeVoice, ToneScript, tone_listener


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: int | None = None) -> str:
    """The weather now in a city.

    Args:
        city: the city's name, e.g. Paris
        unit: the temperature unit
        days: how many days ahead
    """
    return f"sunny in {city}, 21 degrees {unit}"


@tool(timeout_s=0.2)
async def slow_lookup(query: str) -> str:
    """Looks something up, slowly."""
    await asyncio.sleep(10)
    return "never"


@tool
def broken() -> str:
    """Always fails."""
    raise RuntimeError("the database is down")


def test_schema_from_the_signature_and_docstring():
    flat = get_weather.realtime_schema()
    assert flat["type"] == "function" and flat["name"] == "get_weather"
    assert flat["description"] == "The weather now in a city."
    params = flat["parameters"]
    assert params["required"] == ["city"]
    assert params["properties"]["city"] == {"type": "string", "description": "the city's name, e.g. Paris"}
    assert params["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert params["properties"]["days"]["type"] == "integer"
    nested = get_weather.chat_schema()
    assert nested == {"type": "function", "function": {k: flat[k] for k in ("name", "description", "parameters")}}
    json.dumps(nested)  # serialisable as is


def test_functions_that_cannot_be_described_are_refused():
    def untyped(x):
        """Doc."""

    def undocumented(x: int):
        pass

    def wild(x: dict):
        """Doc."""

    with pytest.raises(ToolError, match="needs a type hint"):
        Tool.from_function(untyped)
    with pytest.raises(ToolError, match="docstring"):
        Tool.from_function(undocumented)
    with pytest.raises(ToolError, match="no JSON schema"):
        Tool.from_function(wild)


def test_validation_names_every_problem():
    assert get_weather.validate({"city": "Paris"}) == []
    errors = get_weather.validate({"unit": "kelvin", "days": 1.5, "color": "red"})
    assert "missing argument 'city'" in errors
    assert "unknown argument 'color'" in errors
    assert any("'unit' must be one of" in e for e in errors)
    assert any("'days' must be an integer" in e for e in errors)
    assert get_weather.validate(["Paris"]) == ["arguments must be a JSON object, got list"]


def call(box, name, arguments):
    return asyncio.run(box.call(ToolCall("c1", name, json.dumps(arguments))))


def test_calls_ok_failing_hanging_and_invalid_all_come_back_as_results():
    box = Toolbox([get_weather, slow_lookup, broken])
    assert call(box, "get_weather", {"city": "Oslo"}).output == "sunny in Oslo, 21 degrees celsius"
    started = time.perf_counter()
    hung = call(box, "slow_lookup", {"query": "x"})
    assert hung.status == "timeout" and time.perf_counter() - started < 1.0
    failed = call(box, "broken", {})
    assert failed.status == "error" and "the database is down" in failed.output
    assert call(box, "get_weather", {}).status == "invalid"
    assert "the tools are: get_weather" in call(box, "nope", {}).output


def test_parse_the_models_tool_call():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert parse_tool_call(text, "c") == ToolCall("c", "get_weather", '{"city": "Paris"}')
    listed = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome"}}]</tool_call>'
    assert parse_tool_call(listed, "c").arguments == '{"city": "Rome"}'
    assert parse_tool_call("The weather is fine.", "c") is None
    assert parse_tool_call("<tool_call>{not json</tool_call>", "c").name == ""
    assert may_open_call("<tool") and may_open_call(" <tool_call>{") and not may_open_call("The")


def test_load_tools_from_a_file(tmp_path):
    path = tmp_path / "my_tools.py"
    path.write_text(
        "from agent.tools import tool\n\n@tool\ndef add(a: int, b: int) -> int:\n    '''Adds two numbers.'''\n"
        "    return a + b\n"
    )
    box = load_tools(path)
    assert list(box.tools) == ["add"]
    assert call(box, "add", {"a": 2, "b": 3}).output == "5"
    with pytest.raises(ToolError, match="does not exist"):
        load_tools(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ToolError, match="defines no tool"):
        load_tools(tmp_path / "empty.py")
    (tmp_path / "bad.py").write_text("import nothing_by_this_name\n")
    with pytest.raises(ToolError, match="failed to import"):
        load_tools(tmp_path / "bad.py")


SCRIPT = ToneScript(["what is the weather in paris", "thanks a lot"])


def tool_answer(tool_name, final="it is sunny"):
    """The fake model: a tool call first, then an answer once the tool result is in the history."""

    def answer(messages):
        if messages[-1]["role"] == "tool":
            return final
        if messages[-1]["role"] == "user" and messages[-1]["content"] == SCRIPT.texts[0]:
            arguments = {"get_weather": {"city": "Paris"}, "slow_lookup": {"query": "x"}}.get(tool_name, {})
            return f'<tool_call>{{"name": "{tool_name}", "arguments": {json.dumps(arguments)}}}</tool_call>'
        return "you are welcome"

    return answer


def converse(answer, tools, pieces=((0.5, 0), (9.0, 1)), tail_s=5.0):
    clock = VirtualClock()
    mic = VirtualMicrophone(clock, [(t, SCRIPT.speech(i)) for t, i in pieces], tail_s=tail_s)
    speaker = VirtualSpeaker(clock)
    voice = FakeVoice(clock, answer)
    agent = Agent(tone_listener(SCRIPT), voice, speaker, clock, History("sys"), tools=Toolbox(tools))
    asyncio.run(agent.run(mic))
    return agent, voice


def of(agent, kind):
    return [e for e in agent.bus.history if isinstance(e, kind)]


def test_a_tool_call_end_to_end_in_the_loop():
    agent, voice = converse(tool_answer("get_weather"), [get_weather])
    (started,) = of(agent, ToolCallStarted)
    (ended,) = of(agent, ToolCallEnded)
    assert started.name == "get_weather" and json.loads(started.arguments) == {"city": "Paris"}
    assert ended.status == "ok" and ended.output == "sunny in Paris, 21 degrees celsius"
    first = of(agent, PlaybackFinished)[0]
    assert first.heard_text == "it is sunny" and first.position_s == pytest.approx(3 * WORD_AUDIO_S)
    assert not any("tool_call" in e.text for e in of(agent, ReplyTextDelta))  # the markup is neither shown...
    roles = [m["role"] for m in agent.history.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert agent.history.messages[2]["content"] == ended.output
    assert voice.prompts[1][-1] == {"role": "tool", "content": ended.output}  # ...and the model reads the result
    assert of(agent, PlaybackFinished)[-1].heard_text == "you are welcome"  # the conversation goes on


@pytest.mark.parametrize(("name", "status"), [("broken", "error"), ("slow_lookup", "timeout"), ("nope", "invalid")])
def test_a_failing_hanging_or_unknown_tool_gets_a_spoken_apology(name, status):
    agent, _ = converse(tool_answer(name), [broken, slow_lookup])
    (ended,) = of(agent, ToolCallEnded)
    assert ended.status == status
    assert of(agent, ErrorEvent)[0].component == "tools"
    assert of(agent, PlaybackFinished)[0].heard_text == TOOL_APOLOGY
    assert of(agent, PlaybackFinished)[-1].heard_text == "you are welcome"


def test_barge_in_cancels_a_running_tool_call():
    @tool(timeout_s=30)
    async def slow_lookup(query: str) -> str:
        """Looks something up, slowly."""
        await asyncio.sleep(30)
        return "never"

    # The user speaks again while the tool runs (no reply audio yet): the reply and its call are cancelled.
    agent, _ = converse(tool_answer("slow_lookup"), [slow_lookup], pieces=((0.5, 0), (3.5, 1)))
    assert [e.status for e in of(agent, ToolCallEnded)] == ["cancelled"]
    assert of(agent, Interruption)
    assert of(agent, PlaybackStarted)  # the next turn is answered
    assert of(agent, PlaybackFinished)[-1].heard_text == "you are welcome"
