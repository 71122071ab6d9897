"""The Clore wire format: lenient JSON in, compact JSON out."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from openclore.domain.errors import InvalidInput
from openclore.domain.money import Coins
from openclore.domain.text import check_text

MAX_JSON_DEPTH = 32


def strip_trailing_commas(text: str) -> str:
    """Drop one comma that stands right before ``}`` or ``]`` (outside strings), as in the seed."""
    if "," not in text:
        return text
    out: list[str] = []
    in_string = False
    escaped = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                i += 1
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"invalid JSON number {name}")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_json(raw: bytes, *, exact: bool = True, checked: bool = True) -> Any:
    """Parse a request body; floats become :class:`Decimal` so money stays exact (``exact``) or
    stay floats (measurements, such as agents' specs). A string (key or value) holding a NUL or
    a lone surrogate is invalid input (``checked``; :mod:`openclore.domain.text`)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("request body is not UTF-8") from exc
    text = text.lstrip("\ufeff")
    try:
        value = json.loads(
            strip_trailing_commas(text),
            parse_float=Decimal if exact else float,
            parse_constant=_reject_constant,
        )
    except InvalidInput:
        raise
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid JSON"
        raise InvalidInput(f"malformed JSON body: {detail}") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidInput("JSON body is nested too deeply")
    if checked:
        check_text(value)
    return value


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parse a body that must be a JSON object; an empty body is an empty object."""
    if not raw.strip():
        return {}
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise InvalidInput("request body must be a JSON object")
    return value


def parse_body(raw: bytes, array_key: str | None = None) -> dict[str, Any]:
    """A request body: a JSON object, or (``array_key``) also a JSON array, which arrives as
    ``{array_key: [...]}`` (live Clore's batch endpoints take a bare array)."""
    if not raw.strip():
        return {}
    if array_key is None:
        return parse_object(raw)
    value = parse_json(raw)
    if isinstance(value, list):
        return {array_key: value}
    if not isinstance(value, dict):
        raise InvalidInput("request body must be a JSON array or object")
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Coins):  # the exact decimal text, never a float
        return orjson.Fragment(str(value))
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError


def dumps(body: Any) -> bytes:
    """Compact JSON: ``{"code":0}`` byte for byte for a bare success; amounts exact."""
    return orjson.dumps(body, default=_default)
