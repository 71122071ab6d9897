"""Market errors as people read them, in the catalog's words.

The use cases raise Clore error names (``not_enough_balance``…); the console shows the sentence
the error registry (:data:`openclore.domain.errors.REGISTRY`) gives it, an English msgid of the
catalog; a name the registry lacks is shown as it is, after a generic sentence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from openclore.domain.errors import N_, REGISTRY, CloreError, InvalidInput, RateLimited

__all__ = ["ERRORS", "N_", "error_text"]

# The sentence of each named error, from the one registry (domain/errors.py).
ERRORS = {name: kind.message for name, kind in REGISTRY.items()}


def error_text(t: Callable[[Request, str], str], request: Request, exc: CloreError) -> str:
    if isinstance(exc, RateLimited):
        return t(request, "Too many requests. Wait a second and try again.")
    if isinstance(exc, InvalidInput):
        return t(request, "Invalid input:") + " " + exc.message
    known = ERRORS.get(exc.message)
    if known is not None:
        text = t(request, known)
    else:
        text = t(request, "The market refused this:") + " " + exc.message
    extra: dict[str, Any] = exc.extra
    if "time_to_lowering" in extra:
        text += " " + t(request, "Seconds left:") + f" {extra['time_to_lowering']}"
    if "max_step" in extra:
        text += " " + t(request, "Lowest allowed now:") + f" {extra['max_step']}"
    if "min_price" in extra:
        text += " " + t(request, "Minimum:") + f" {extra['min_price']}"
    if "max_hours" in extra:
        text += " " + t(request, "Hours allowed at most:") + f" {extra['max_hours']}"
    if "max_disk_gb" in extra:
        text += " " + t(request, "GB allowed at most:") + f" {extra['max_disk_gb']}"
    if extra.get("orders"):
        orders = ", ".join(f"#{o}" for o in extra["orders"])
        text += " " + t(request, "Mounted by orders:") + f" {orders}"
    return text
