"""Tools: typed Python functions the model can call, described by OpenAI-style JSON schemas.

    from agent.tools import tool

    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        # a docstring: its first paragraph describes the tool, its "Args:" section each parameter
        ...

The schema comes from the signature (types, defaults) and the docstring (summary, ``Args:``), in
the flat Realtime form and the nested Chat-Completions form. A call's arguments are validated
against it, run with a timeout (sync functions on a worker thread), and any failure becomes a
short message for the model, never an exception in the loop.

The model asks for a tool the way SmolLM2 was trained to, inside its reply text:
``<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
DEFAULT_TIMEOUT_S = 5.0

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolError(ValueError):
    """A tool or tools file that cannot be used as written; the message says what to fix."""


def _schema_of(hint: Any, where: str) -> dict[str, Any]:
    """JSON schema of one parameter's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is Literal:
        kinds = {type(a) for a in args}
        if len(kinds) != 1 or next(iter(kinds)) not in _JSON_TYPES:
            raise ToolError(f"{where}: a Literal must list values of one simple type, got {args}")
        return {"type": _JSON_TYPES[next(iter(kinds))], "enum": list(args)}
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args else str
        return {"type": "array", "items": _schema_of(item, where)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _schema_of(rest[0], where)
    raise ToolError(f"{where}: type {hint!r} has no JSON schema here; use str, int, float, bool, list or Literal")


def _docstring_args(doc: str) -> tuple[str, dict[str, str]]:
    """The summary paragraph and the ``Args:`` descriptions of a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    described: dict[str, str] = {}
    section = "summary"
    current = None
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters):", stripped):
            section = "args"
            continue
        if re.fullmatch(r"[A-Z][a-z]+:", stripped):
            section = "other"
            continue
        if section == "summary":
            if not stripped and summary:
                section = "rest"
            elif stripped:
                summary.append(stripped)
        elif section == "args":
            match = re.match(r"(\w+)\s*(\([^)]*\))?:\s*(.*)", stripped)
            if match:
                current = match.group(1)
                described[current] = match.group(3)
            elif stripped and current:
                described[current] += " " + stripped
    return " ".join(summary), described


@dataclass(frozen=True)
class Tool:
    """A callable the model may use, with its JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., Any]
    timeout_s: float = DEFAULT_TIMEOUT_S  # a call running longer is abandoned and reported
    mqtt_topic: str | None = None  # served over MQTT on this topic (see mqtt_tool), not by ``fn``

    @classmethod
    def from_function(cls, fn: Callable[..., Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> Tool:
        """The tool for a typed function (sync or async); ToolError when a parameter cannot be described."""
        where = f"tool {fn.__name__}"
        summary, described = _docstring_args(fn.__doc__ or "")
        if not summary:
            raise ToolError(f"{where}: give it a docstring; its first line tells the model what the tool does")
        hints = typing.get_type_hints(fn)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ToolError(f"{where}: *args and **kwargs cannot be described; name every parameter")
            if name not in hints:
                raise ToolError(f"{where}: parameter {name!r} needs a type hint")
            schema = _schema_of(hints[name], f"{where}, parameter {name!r}")
            if name in described:
                schema["description"] = described[name]
            properties[name] = schema
            if param.default is inspect.Parameter.empty:
                required.append(name)
        parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
        return cls(fn.__name__, summary, parameters, fn, timeout_s)

    def realtime_schema(self) -> dict[str, Any]:
        """The flat form (OpenAI Realtime ``session.tools``)."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}

    def chat_schema(self) -> dict[str, Any]:
        """The nested form (Chat Completions ``tools``)."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}

    def validate(self, arguments: Any) -> list[str]:
        """What is wrong with ``arguments`` for this tool (empty when they fit the schema)."""
        if not isinstance(arguments, dict):
            return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
        props = self.parameters.get("properties", {})
        errors = [f"missing argument {name!r}" for name in self.parameters.get("required", []) if name not in arguments]
        if self.parameters.get("additionalProperties", True) is False:
            errors += [f"unknown argument {name!r}" for name in arguments if name not in props]
        for name, value in arguments.items():
            if name in props and not _fits(value, props[name]):
                errors.append(f"argument {name!r} must be {_describe(props[name])}, got {value!r}")
        return errors


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` fits ``schema``; kinds our own tools never declare (objects, from a client's schema) pass."""
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list) and all(_fits(v, schema.get("items", {})) for v in value)
    return True


def _describe(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    return f"a{'n' if schema['type'][0] in 'aeiou' else ''} {schema['type']}"


def tool(fn: Callable[..., Any] | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """Decorator: ``@tool`` or ``@tool(timeout_s=2)`` makes a typed function a :class:`Tool`."""
    if fn is None:
        return functools.partial(tool, timeout_s=timeout_s)
    return Tool.from_function(fn, timeout_s)


def mqtt_tool(
    name: str,
    description: str,
    parameters: dict[str, Any],
    topic: str,
    required: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Tool:
    """A tool served by another program over MQTT (5, request/response), called on ``topic``.

    ``parameters`` maps each argument to its type (str, int, float, bool, list[...] or a Literal);
    all are required unless ``required`` names some. It answers once the session's MQTT bridge is
    bound (``ttt chat --mqtt``); without one, a call fails and the agent apologises.
    """
    properties = {key: _schema_of(hint, f"tool {name}, parameter {key!r}") for key, hint in parameters.items()}
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(parameters) if required is None else required,
        "additionalProperties": False,
    }

    async def unbound(**arguments: Any) -> str:
        raise ConnectionError(f"tool {name} is served over MQTT; run the agent with --mqtt HOST[:PORT]")

    return Tool(name, description, schema, unbound, timeout_s, mqtt_topic=topic)


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for."""

    call_id: str
    name: str
    arguments: str  # as the model wrote them (JSON)


@dataclass(frozen=True)
class ToolResult:
    """How a call went; ``output`` goes into the history for the model to read."""

    status: Literal["ok", "error", "timeout", "invalid"]
    output: str


def parse_tool_call(text: str, call_id: str) -> ToolCall | None:
    """The call in a reply that opens with ``<tool_call>{...}</tool_call>``, or None (a list's first item counts)."""
    body = text.strip()
    if not body.startswith(CALL_OPEN):
        return None
    body = body[len(CALL_OPEN) :].split(CALL_CLOSE, 1)[0].strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return ToolCall(call_id, "", body)  # unreadable: reported to the model as invalid
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return ToolCall(call_id, "", body)
    arguments = data.get("arguments", data.get("parameters", {}))
    return ToolCall(call_id, str(data.get("name", "")), json.dumps(arguments))


def may_open_call(text: str) -> bool:
    """Whether a reply starting with ``text`` may turn out to be a tool call (so it must not be voiced yet)."""
    head = text.lstrip()
    return CALL_OPEN.startswith(head) or head.startswith(CALL_OPEN)


class Toolbox:
    """The tools of a session: their prompt, and calls run with validation and a timeout."""

    def __init__(self, tools: list[Tool]):
        names = [t.name for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ToolError(f"two tools share the name {duplicates[0]!r}; rename one")
        self.tools = {t.name: t for t in tools}

    def __bool__(self) -> bool:
        return bool(self.tools)

    def bind_mqtt(self, bridge: Any) -> None:
        """Route the MQTT-backed tools' calls through ``bridge`` (an :class:`agent.mqtt.MqttBridge`)."""
        for name, each in list(self.tools.items()):
            if each.mqtt_topic is not None:
                self.tools[name] = dataclasses.replace(each, fn=_mqtt_caller(bridge, each.mqtt_topic, name))

    def system_prompt(self, base: str) -> str:
        """``base`` plus the tools' schemas and how to call them."""
        schemas = json.dumps([t.chat_schema()["function"] for t in self.tools.values()])
        return (
            f"{base}\nYou can call these tools: <tools>{schemas}</tools>\n"
            f'To call one, answer only with {CALL_OPEN}{{"name": "...", "arguments": {{...}}}}{CALL_CLOSE}'
        )

    async def call(self, request: ToolCall, clock: Any = None) -> ToolResult:
        """Run ``request``: invalid, failing and hanging calls come back as results, never as exceptions.

        The timeout runs on ``clock`` (the session clock, with ``now`` and ``wait_until``), else on the event loop's.
        """
        chosen = self.tools.get(request.name)
        if chosen is None:
            known = ", ".join(self.tools) or "none"
            return ToolResult("invalid", f"there is no tool {request.name!r}; the tools are: {known}")
        try:
            arguments = json.loads(request.arguments or "{}")
        except json.JSONDecodeError as exc:
            return ToolResult("invalid", f"the arguments are not JSON ({exc})")
        errors = chosen.validate(arguments)
        if errors:
            return ToolResult("invalid", "; ".join(errors))
        try:
            if inspect.iscoroutinefunction(chosen.fn):
                running: Any = chosen.fn(**arguments)
            else:
                running = asyncio.get_running_loop().run_in_executor(None, functools.partial(chosen.fn, **arguments))
            value = await _within(running, chosen.timeout_s, clock)
        except TimeoutError:
            return ToolResult("timeout", f"{request.name} did not answer within {chosen.timeout_s:g} s")
        except Exception as exc:  # the tool's own failure is the model's information, not the loop's crash
            return ToolResult("error", f"{request.name} failed: {type(exc).__name__}: {exc}")
        return ToolResult("ok", value if isinstance(value, str) else json.dumps(value))


def _mqtt_caller(bridge: Any, topic: str, name: str) -> Callable[..., Any]:
    async def call(**arguments: Any) -> str:
        return await bridge.call_tool(topic, name, arguments)

    return call


async def _within(awaitable: Any, timeout_s: float, clock: Any) -> Any:
    """``awaitable``'s result, or TimeoutError once ``timeout_s`` passed on ``clock`` (None: the event loop's)."""
    if clock is None:
        return await asyncio.wait_for(awaitable, timeout_s)
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.wait_until(clock.now() + timeout_s))
    try:
        await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, timer):
            if not task.done():
                task.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    raise TimeoutError


def load_tools(path: str | Path) -> Toolbox:
    """The tools defined (with ``@tool``) at the top level of the Python file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"tools file {path} does not exist; give a Python file that defines @tool functions")
    name = f"ttt_user_tools_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ToolError(f"tools file {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ToolError as exc:
        raise ToolError(f"tools file {path}: {exc}") from None
    except Exception as exc:
        raise ToolError(f"tools file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    tools = [value for value in vars(module).values() if isinstance(value, Tool)]
    if not tools:
        raise ToolError(f"tools file {path} defines no tool; decorate functions with @tool (from agent.tools)")
    return Toolbox(tools)
