#!/usr/bin/env python3
"""Generate the synchronous SDK client from the asynchronous one (as httpcore does).

``src/openclore/client/_async.py`` is the source; ``_sync.py`` is written from it by token
replacements (``async def`` → ``def``, ``await x`` → ``x``, ``AsyncClient`` → ``Client``,
``asyncio.sleep`` → ``time.sleep`` …) and a few prose replacements for the docstrings that
describe the flavour. Edit ``_async.py``, then run::

    .venv/bin/python scripts/unasync.py          # rewrite _sync.py
    .venv/bin/python scripts/unasync.py --check  # exit 1 if _sync.py is not what it would write

Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "openclore" / "client" / "_async.py"
TARGET = ROOT / "src" / "openclore" / "client" / "_sync.py"

HEADER = "# generated from _async.py by scripts/unasync.py — do not edit\n"

# Docstrings that name the flavour: replaced whole, before the token replacements. Each must
# occur in _async.py (a stale entry is an error, not a silent no-op).
PROSE: list[tuple[str, str]] = [
    (
        '"""The asynchronous client: the same API as :class:`Client`, awaitable.\n\n'
        "This file is the source of ``_sync.py``: after changing it, run ``scripts/unasync.py``\n"
        '(``scripts/test`` runs ``scripts/unasync.py --check``).\n"""',
        '"""The synchronous client."""',
    ),
    (
        "The asyncio twin of :class:`Client`. Safe to share between tasks (and threads).",
        "A Clore API v1 client (openclore or Clore.ai). Thread-safe: share one per token.",
    ),
]

# Whole lines that only the asynchronous flavour needs.
DROP_LINES = {"import asyncio"}

# Token replacements, applied in order to every line (word boundaries on both sides).
TOKENS: list[tuple[str, str]] = [
    (r"async def", "def"),
    (r"async with", "with"),
    (r"async for", "for"),
    (r"await ", ""),
    (r"asyncio\.sleep", "time.sleep"),
    (r"ssh_banner_async", "ssh_banner"),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"__aiter__", "__iter__"),
    (r"__anext__", "__next__"),
    (r"aclose", "close"),
    (r"StopAsyncIteration", "StopIteration"),
    (r"Async([A-Z]\w*)", r"\1"),  # AsyncClient, AsyncSandbox, httpx.AsyncBaseTransport …
]
_COMPILED = [(re.compile(rf"\b{pattern}"), repl) for pattern, repl in TOKENS]

# Nothing asynchronous may survive the translation.
LEFTOVER = re.compile(r"\basync\b|\bawait\b|\basyncio\b|\bAsync[A-Z]|\ba(?:enter|exit|close)\b")


class UnasyncError(Exception):
    pass


def unasync(source: str) -> str:
    """The synchronous twin of ``source`` (the text of ``_async.py``)."""
    for old, new in PROSE:
        if old not in source:
            raise UnasyncError(f"scripts/unasync.py: PROSE entry not found in _async.py: {old!r}")
        source = source.replace(old, new)
    lines: list[str] = []
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        if line.strip() in DROP_LINES:
            continue
        for pattern, repl in _COMPILED:
            line = pattern.sub(repl, line)
        leftover = LEFTOVER.search(line)
        if leftover:
            raise UnasyncError(
                f"_async.py line {number}: {leftover.group(0)!r} has no synchronous form "
                f"(add a replacement to scripts/unasync.py): {line.strip()}"
            )
        lines.append(line)
    return HEADER + "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if _sync.py differs from what it would write"
    )
    args = parser.parse_args(argv)
    try:
        expected = unasync(SOURCE.read_text(encoding="utf-8"))
    except UnasyncError as exc:
        print(exc, file=sys.stderr)
        return 2
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if current == expected:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            "src/openclore/client/_sync.py",
            "generated from _async.py",
        )
        sys.stderr.writelines(diff)
        print(
            "\nsrc/openclore/client/_sync.py is out of date: edit _async.py and run "
            ".venv/bin/python scripts/unasync.py",
            file=sys.stderr,
        )
        return 1
    if current != expected:
        TARGET.write_text(expected, encoding="utf-8")
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
