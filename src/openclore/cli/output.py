"""Where the CLI writes: consoles that print text as it is.

What the CLI prints comes from the market: server names, the GPU models an agent reported,
images, memos, audit details, anyone's text. rich must never read it as markup (``[/]`` closing
nothing raises ``MarkupError`` and ends the command; ``[link=…]`` makes a link, ``[bold red]``
restyles the line) nor as emoji codes (``:thumbs_up:``). Every console of the CLI comes from
:func:`terminal`, which reads neither, in lines, tables, titles and captions alike; the places
rich reads markup whatever the console (a spinner's message) get :func:`plain` text.

Here too: the CLI's one way to fail (:func:`fail`), ``--json`` output, numbers and times as
the tables show them, and the tables themselves (:func:`print_table`, which leaves out the least
important columns rather than wrap a line).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from openclore.client import json_dumps
from openclore.client._exactjson import number_text

T = TypeVar("T")


def terminal(**options: Any) -> Console:
    """A console that prints strings literally: no markup, no emoji codes."""
    return Console(markup=False, emoji=False, **options)


def plain(text: str) -> Text:
    """``text`` as literal rich text (for a spinner, which would read a string as markup)."""
    return Text(text)


out = terminal(highlight=False, soft_wrap=True)
err = terminal(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Say what went wrong on one line (``error: …``) and exit with ``code``."""
    line = " ".join(message.split())
    err.print(f"error: {line}", markup=False)
    raise typer.Exit(code)


def emit_json(value: Any) -> None:
    sys.stdout.write(json_dumps(to_plain(value), indent=2) + "\n")
    sys.stdout.flush()


def to_plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return to_plain(value.model_dump(mode="python", exclude_none=False))
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def waiting(message: str) -> Any:
    """A spinner on stderr while a call runs (nothing when stderr is not a terminal)."""
    return err.status(plain(message), spinner="dots")


def call(message: str, fn: Callable[[], T]) -> T:
    with waiting(message):
        return fn()


# ----------------------------------------------------------------------------- formatting


def fmt(value: Decimal | None, places: int = 10) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 1:
        # keep `places` significant digits for small prices
        exponent = value.adjusted() - places + 1
        value = value.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
    return number_text(value)


def fmt_any(value: Any) -> str:
    return fmt(value) if isinstance(value, Decimal) else str(value)


def age(ct: int | None, now: int) -> str:
    """How long before ``now`` (the market's clock, see :class:`MarketClock`) ``ct`` was."""
    if ct is None:
        return "-"
    seconds = max(0, now - ct)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def iso(ts: int) -> str:
    """Unix seconds as ``2026-11-01 12:00:00`` (UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def short_gpu(name: str) -> str:
    """``NVIDIA GeForce RTX 3090`` → ``RTX 3090`` (tables only; --json keeps the full name)."""
    return name.replace("NVIDIA ", "").replace("GeForce ", "")


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """A table column. ``priority`` 0 is always shown; when the terminal is too narrow for every
    column, the highest priority number goes first (the rightmost of equals first). ``fold``
    marks a column that may wrap when even the priority-0 columns do not fit."""

    name: str
    priority: int = 0
    justify: Literal["left", "right"] = "left"
    fold: bool = False


def terminal_width() -> int:
    """The width tables are laid out for: ``$COLUMNS``, else the terminal's, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return out.width


def table_width(widths: list[int]) -> int:
    """The width of a :func:`print_table` table whose columns hold ``widths`` characters: two
    spaces between neighbours, no edges (so a line copies cleanly, an ssh command included)."""
    return sum(widths) + 2 * max(0, len(widths) - 1)


def fit_columns(columns: list[Column], rows: list[list[str]], width: int) -> list[int]:
    """Indices of the columns to show at ``width``: every column that fits, dropping the least
    important ones first, never one of priority 0."""
    natural = [
        max(
            [cell_len(column.name)]
            + [cell_len(line) for row in rows for line in row[i].splitlines()]
        )
        for i, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    while table_width([natural[i] for i in shown]) > width:
        droppable = [i for i in shown if columns[i].priority > 0]
        if not droppable:
            break
        shown.remove(max(droppable, key=lambda i: (columns[i].priority, i)))
    return shown


def print_table(
    title: str, columns: list[Column], rows: list[list[str]], width: int | None = None
) -> None:
    """A table laid out for the terminal: no cell wraps; at a narrow width the least important
    columns are left out (a caption names them) rather than squeezed. Only when the
    priority-0 columns alone are too wide do the ``fold`` ones wrap."""
    width = terminal_width() if width is None else width
    shown = fit_columns(columns, rows, width)
    hidden = [c.name for i, c in enumerate(columns) if i not in shown and c.name]
    table = Table(
        title=title,
        caption=f"left out at {width} columns: {', '.join(hidden)} (--json shows everything)"
        if hidden
        else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    natural = [
        max([cell_len(columns[i].name)] + [cell_len(x) for r in rows for x in r[i].splitlines()])
        for i in shown
    ]
    fits = table_width(natural) <= width
    for i in shown:
        column = columns[i]
        wrap = column.fold and not fits
        table.add_column(
            column.name,
            justify=column.justify,
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
        )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    terminal(width=width, highlight=False).print(table)
