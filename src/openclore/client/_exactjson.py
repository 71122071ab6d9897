"""JSON for money: numbers with a fraction parse as Decimal, and Decimals are written as numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


def loads(data: bytes | str) -> Any:
    """Parse JSON; every number with a fraction or exponent becomes an exact :class:`Decimal`."""
    return json.loads(data, parse_float=Decimal)


def number_text(value: Decimal) -> str:
    """A Decimal as a plain JSON number (no exponent, no trailing zeros): ``0.0000042``."""
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value}")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Compact JSON where a :class:`Decimal` is written as the exact number it holds."""
    parts: list[str] = []
    _write(value, parts, indent, 0)
    return "".join(parts)


def _write(value: Any, out: list[str], indent: int | None, level: int) -> None:
    if isinstance(value, Decimal):
        out.append(number_text(value))
    elif isinstance(value, bool) or value is None or isinstance(value, int | str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value}")
        out.append(repr(value))
    elif isinstance(value, Mapping):
        items = list(value.items())
        if not items:
            out.append("{}")
            return
        out.append("{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(",")
            _newline(out, indent, level + 1)
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(": " if indent is not None else ":")
            _write(item, out, indent, level + 1)
        _newline(out, indent, level)
        out.append("}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _newline(out, indent, level + 1)
            _write(item, out, indent, level + 1)
        _newline(out, indent, level)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _newline(out: list[str], indent: int | None, level: int) -> None:
    if indent is not None:
        out.append("\n" + " " * (indent * level))
