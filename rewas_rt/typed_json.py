"""Dataclasses <-> JSON, strictly: one definition gives the reader, the writer and a JSON Schema.

``from_json(cls, data)`` builds a dataclass from parsed JSON and names every unknown,
missing or wrongly typed key in one error; ``to_json(obj)`` writes it back;
``json_schema(cls)`` describes the same layout (draft 2020-12) for readers in other
languages. Supported field types: ``str``, ``int``, ``float`` (an int is accepted),
``bool``, ``Any``, ``X | None``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.

A field whose metadata has ``omit_none=True`` (see ``optional``) may be absent from the
JSON and is left out of it when ``None``.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def optional(default: Any = None) -> Any:
    """A field that may be missing from the JSON (and is not written when None)."""
    return dataclasses.field(default=default, metadata={"omit_none": True})


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _args(tp: Any) -> tuple[Any, Any]:
    return typing.get_origin(tp), typing.get_args(tp)


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}


def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin, args = _args(tp)
    if tp is Any:
        return value
    if _is_union(origin):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0] if len(inner) == 1 else Any, value, where, problems)
    if dataclasses.is_dataclass(tp):
        return _object(tp, value, where, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where} is not a list")
            return value
        return [_convert(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where} is not an object")
            return value
        return {k: _convert(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp in (int, str, bool):
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
    else:
        raise TypeError(f"unsupported field type {tp!r} at {where}")
    problems.append(f"{where} is not {_NAMES[tp]} ({type(value).__name__})")
    return value


def _object(cls: type[T], data: Any, where: str, problems: list[str]) -> T | None:
    if not isinstance(data, dict):
        problems.append(f"{where} is not an object")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    missing = [n for n, f in fields.items() if n not in data and _required(f)]
    if unknown:
        problems.append(f"{where} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    if missing:
        problems.append(f"{where} has no {', '.join(map(repr, missing))}")
    hints = _hints(cls)
    values = {n: _convert(hints[n], data[n], f"{where}.{n}", problems) for n in fields if n in data}
    if unknown or missing:
        return None
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # a __post_init__ check
        problems.append(f"{where}: {e}")
        return None


def from_json(cls: type[T], data: Any, where: str, error: Callable[[str], Exception]) -> T:
    """Build ``cls`` from parsed JSON or raise ``error("<where>: problem; problem")``."""
    problems: list[str] = []
    obj = _object(cls, data, where, problems)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; … and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise error(shown)
    return obj  # type: ignore[return-value]


def to_json(obj: Any) -> Any:
    """The JSON value of a dataclass (field order kept), list, dict or scalar."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = to_json(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def _schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = _args(tp)
    if tp is Any:
        return {}
    if _is_union(origin):
        inner = [_schema(a, defs) for a in args if a is not type(None)]
        return {"anyOf": inner + ([{"type": "null"}] if type(None) in args else [])}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # recursion guard
            hints = _hints(tp)
            fields = dataclasses.fields(tp)
            defs[name] = {
                "type": "object",
                **({"description": tp.__doc__.strip().splitlines()[0]} if tp.__doc__ else {}),
                "properties": {f.name: _schema(hints[f.name], defs) for f in fields},
                "required": [f.name for f in fields if _required(f)],
                "additionalProperties": False,
            }
        return {"$ref": f"#/$defs/{name}"}
    if origin is list:
        return {"type": "array", "items": _schema(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(args[1], defs)}
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[tp]}


def json_schema(cls: type, *, title: str, schema_id: str | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of ``cls``, from the same definitions ``from_json`` reads."""
    defs: dict[str, Any] = {}
    root = _schema(cls, defs)
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **({"$id": schema_id} if schema_id else {}),
           "title": title, **defs.pop(cls.__name__)}
    assert root == {"$ref": f"#/$defs/{cls.__name__}"}
    out["$defs"] = defs
    return out
