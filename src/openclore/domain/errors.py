"""Business errors, each carrying its Clore wire code and error name.

Codes (SPEC §1): 1 internal, 2 invalid input, 3 invalid token, 4 invalid endpoint, 5 rate limit,
6 named error (``error`` field plus optional extra fields such as ``max_step``).
"""

from __future__ import annotations

from typing import Any


class CloreError(Exception):
    """An error rendered as a Clore envelope ``{"code": N, ...}``."""

    code: int = 1

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}  # HTTP headers to send with the error (rate limits)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.message:
            out["error"] = self.message
        out.update(self.extra)
        out["code"] = self.code
        return out


class InternalError(CloreError):
    code = 1


class InvalidInput(CloreError):
    """Code 2: the request body or query is malformed; ``error`` says what and where."""

    code = 2


class InvalidToken(CloreError):
    code = 3


class InvalidEndpoint(CloreError):
    code = 4


class RateLimited(CloreError):
    code = 5

    def __init__(self, retry_after: float, **extra: Any) -> None:
        super().__init__("", **extra)
        self.retry_after = retry_after


class MarketError(CloreError):
    """Code 6: a named market error (``server-already-rented``, ``exceeded_max_step``…)."""

    code = 6

    def __init__(self, name: str, **extra: Any) -> None:
        super().__init__(name, **extra)
        self.name = name


# Every named error (code 6) openclore sends, with the HTTP status used in "rest" mode.
ERROR_HTTP_STATUS: dict[str, int] = {
    "server-dont-exist": 404,
    "server_dont_exist": 404,
    "order_dont_exist": 404,
    "server-offline": 409,
    "server-already-rented": 409,
    "you_already_have_spot_order": 409,
    "order_not_active": 409,
    "can_lower_every_600_seconds": 409,
    "price_changed": 409,
    "not_enough_balance": 400,
    "too_low_price": 400,
    "amount_too_low": 400,
    "exceeded_max_step": 400,
    "currency-not-allowed": 400,
    "issue_description_too_long": 400,
    "server_name_taken": 409,
    "server_limit_reached": 403,
    "order_limit_reached": 403,
    "cant_rent_from_yourself": 403,
    "you_dont_own_this_order": 403,
    "not_a_demo_world": 409,
    "order_already_rated": 409,
    "invalid_address": 400,
    "withdrawal_limit_exceeded": 403,
    "withdrawal_dont_exist": 404,
    "withdrawal_not_pending": 409,
    "reason_required": 400,
    "txid_required": 400,
    "unknown_account": 404,
    "deposit_conflict": 409,
    "agent_did_not_answer": 504,
}

CODE_HTTP_STATUS_REST = {0: 200, 1: 500, 2: 400, 3: 401, 4: 404, 5: 429}
CODE_HTTP_STATUS_CLORE = {0: 200, 1: 500, 2: 200, 3: 200, 4: 200, 5: 429, 6: 200}


def http_status(code: int, error: str | None, mode: str) -> int:
    """HTTP status for a response with this Clore code, in ``clore`` or ``rest`` mode."""
    if mode != "rest":
        return CODE_HTTP_STATUS_CLORE.get(code, 200)
    if code == 6:
        return ERROR_HTTP_STATUS.get(error or "", 400)
    return CODE_HTTP_STATUS_REST.get(code, 200)
