"""Text a request may carry, wherever it comes in (path, query, form, JSON, keys included): no
NUL character (PostgreSQL refuses it in text) and no lone surrogate (not Unicode: no encoder
writes it, SQLite's and PostgreSQL's drivers included). Either is invalid input (code 2)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from openclore.domain.errors import InvalidInput

_REFUSED = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 64


def text_problem(value: str) -> str | None:
    """What is wrong with ``value`` (None: nothing)."""
    found = _REFUSED.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "NUL characters are not allowed"
    return "invalid Unicode text (a lone surrogate)"


def _strings(value: Any, where: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every string in a parsed JSON value (keys of objects included), with where it is: a
    top-level key's name, else ``where``."""
    if isinstance(value, str):
        yield value, where
    elif isinstance(value, dict) and depth < MAX_DEPTH:
        for key, item in value.items():
            yield from _strings(key, where, depth + 1)
            yield from _strings(item, str(key)[:64] if depth == 0 else where, depth + 1)
    elif isinstance(value, list | tuple) and depth < MAX_DEPTH:
        for item in value:
            yield from _strings(item, where, depth + 1)


def check_text(value: Any, where: str = "body") -> None:
    """Raise :class:`InvalidInput` when any string in ``value`` (a parsed JSON value, keys and
    items of objects and arrays included) holds a NUL or a lone surrogate."""
    for text, at in _strings(value, where):
        problem = text_problem(text)
        if problem is not None:
            raise InvalidInput(f"{at}: {problem}")


def check_pairs(pairs: Iterable[tuple[str, str]], where: str) -> None:
    """The same for a query string's or a form's name/value pairs."""
    for name, value in pairs:
        check_text(name, where)
        check_text(value, name[:64])


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in a parsed JSON value holds a lone surrogate (NUL allowed)."""
    return any(_SURROGATE.search(text) for text, _ in _strings(value, ""))
