"""Where the CLI writes: consoles that print text as it is.

What the CLI prints comes from the market: server names, the GPU models an agent reported,
images, memos, audit details, anyone's text. rich must never read it as markup (``[/]`` closing
nothing raises ``MarkupError`` and ends the command; ``[link=…]`` makes a link, ``[bold red]``
restyles the line) nor as emoji codes (``:thumbs_up:``). Every console of the CLI comes from
:func:`terminal`, which reads neither, in lines, tables, titles and captions alike; the places
rich reads markup whatever the console (a spinner's message) get :func:`plain` text.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def terminal(**options: Any) -> Console:
    """A console that prints strings literally: no markup, no emoji codes."""
    return Console(markup=False, emoji=False, **options)


def plain(text: str) -> Text:
    """``text`` as literal rich text (for a spinner, which would read a string as markup)."""
    return Text(text)
