"""Market errors as people read them, in the catalog's words.

The use cases raise Clore error names (``not_enough_balance``…); the console shows a sentence.
Each sentence is an English msgid of the catalog; a name without one is shown as it is, after a
generic sentence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from openclore.domain.errors import CloreError, InvalidInput, RateLimited


def N_(message: str) -> str:
    """Marks a string for the catalog; translated where it is shown."""
    return message


ERRORS = {
    "not_enough_balance": N_("Your wallet does not hold enough for this."),
    "server-already-rented": N_("Someone rents this server on demand already."),
    "server-dont-exist": N_("This server is not on the market."),
    "server_dont_exist": N_("No such server."),
    "server-offline": N_("This server is offline."),
    "cant_rent_from_yourself": N_("You cannot rent your own server."),
    "currency-not-allowed": N_("This server does not take that currency."),
    "too_low_price": N_("The bid is below the server's minimum spot price."),
    "amount_too_low": N_("The price is below the server's minimum spot price."),
    "you_already_have_spot_order": N_("You have a bid on this server already."),
    "can_lower_every_600_seconds": N_("A bid may be lowered once every 600 seconds."),
    "exceeded_max_step": N_("That is a larger step down than one lowering allows."),
    "order_dont_exist": N_("No such order."),
    "server_name_taken": N_("You have a server with this name already."),
    "server_limit_reached": N_("You have reached the limit of servers."),
    "max_orders_reached": N_("You have reached the limit of active orders."),
    "order_not_active": N_("This order has ended."),
    "agent_did_not_answer": N_("The host's agent did not answer in time; trying again."),
    "invalid_price": N_("Enter a price as a positive number."),
    "invalid_mrl": N_("Enter the maximum rental length in whole hours."),
}


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
    return text
