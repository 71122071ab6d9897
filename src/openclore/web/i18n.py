"""Languages: zh-CN and en, chosen from a cookie, else ``Accept-Language``.

English is the source language of every string. The Chinese catalog is read from its ``.po``
file and compiled in memory at start (no build step at install). A string the catalog lacks is
recorded in :attr:`Catalogs.missing` (and logged), which the tests require to stay empty.
"""

from __future__ import annotations

import gettext
import io
import logging
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

log = logging.getLogger("openclore.web")

LOCALES = ("en", "zh-CN")
LOCALE_DIR = Path(__file__).parent / "locale"


def negotiate(accept_language: str) -> str:
    """The best of our languages for an ``Accept-Language`` header (English by default)."""
    best, best_q = "en", 0.0
    for part in accept_language.split(","):
        pieces = part.strip().split(";")
        tag = pieces[0].strip().lower()
        q = 1.0
        for p in pieces[1:]:
            p = p.strip()
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if not tag:
            continue
        lang = "zh-CN" if tag.startswith("zh") else "en" if tag.startswith("en") else None
        if lang is not None and q > best_q:
            best, best_q = lang, q
    return best


class _Recording(gettext.GNUTranslations):
    """A catalog that records what it was asked for and lacks."""

    missing: set[str]

    def gettext(self, message: str) -> str:
        found = self._catalog.get(message)  # type: ignore[attr-defined]
        if not found:
            if message and message not in self.missing:
                self.missing.add(message)
                log.warning("untranslated (zh-CN): %r", message)
            return message
        return str(found)


class Catalogs:
    def __init__(self) -> None:
        self.missing: set[str] = set()
        with open(LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po", "rb") as f:
            catalog = read_po(f, locale="zh_CN")
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        zh = _Recording(buffer)
        zh.missing = self.missing
        self._by_lang: dict[str, gettext.NullTranslations] = {
            "en": gettext.NullTranslations(),
            "zh-CN": zh,
        }

    def get(self, lang: str) -> gettext.NullTranslations:
        return self._by_lang.get(lang, self._by_lang["en"])
