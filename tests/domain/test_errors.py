"""The error registry: every named error the code raises is declared once in
``openclore.domain.errors``, with its REST status and the sentence people read; the console's
messages and the REST statuses come from it, and the SDK has an exception for each name."""

from __future__ import annotations

import ast
from pathlib import Path

from openclore.client import _errors as sdk
from openclore.domain.errors import ERROR_HTTP_STATUS, REGISTRY, http_status
from openclore.web.messages import ERRORS

SRC = Path(__file__).resolve().parents[2] / "src" / "openclore"
# Clore's other spellings of a few names, which the SDK also understands
CLORE_ALIASES = {
    "currency_not_allowed",
    "order-dont-exist",
    "server_already_rented",
    "server_offline",
}


def raised_names() -> set[str]:
    """Every literal name given to ``MarketError(...)`` (or to a helper that raises it with its
    argument, such as ``_own_order(..., "you_dont_own_this_order")``) anywhere in the package,
    and the names the code keeps in sets to compare with raised ones."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name == "MarketError" and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        found.add(first.value)
                if name == "_own_order":
                    found |= {
                        a.value
                        for a in node.args
                        if isinstance(a, ast.Constant) and isinstance(a.value, str)
                    }
    return found


def test_every_raised_name_is_registered() -> None:
    raised = raised_names()
    assert len(raised) > 30
    assert sorted(raised - set(REGISTRY)) == []
    # the ones a helper raises by argument are found too
    assert {"you_dont_own_this_order", "order_already_rated"} <= raised


def test_statuses_and_console_sentences_come_from_the_registry() -> None:
    assert set(ERROR_HTTP_STATUS) == set(REGISTRY) == set(ERRORS)
    for name, kind in REGISTRY.items():
        assert http_status(6, name, "rest") == kind.status
        assert http_status(6, name, "clore") == 200
        assert ERRORS[name] == kind.message and kind.message.endswith(".")
    assert http_status(6, "order_dont_exist", "rest") == 404
    assert http_status(6, "webhook_dont_exist", "rest") == 404  # was 400 before the registry
    assert http_status(6, "idempotency_key_in_use", "rest") == 409
    assert ERRORS["order_limit_reached"] == "You have reached the limit of active orders."


def test_the_sdk_maps_every_name_the_api_sends() -> None:
    api_names = {name for name, kind in REGISTRY.items() if kind.api}
    assert sorted(api_names - set(sdk.MARKET_ERRORS)) == []
    assert sorted(set(sdk.MARKET_ERRORS) - api_names - CLORE_ALIASES) == []
    for name in api_names:
        error = sdk.error_for({"code": 6, "error": name, "limit": 3, "limit_left": "0.5"})
        assert type(error) is not sdk.MarketError and isinstance(error, sdk.MarketError), name
        assert error.error == name


def test_the_sdk_errors_carry_their_fields() -> None:
    from decimal import Decimal

    left = sdk.error_for({"code": 6, "error": "withdrawal_limit_exceeded", "limit_left": 0.25})
    assert isinstance(left, sdk.WithdrawalLimitExceeded) and left.limit_left == Decimal("0.25")
    hooks = sdk.error_for({"code": 6, "error": "webhook_limit_reached", "limit": 10})
    assert isinstance(hooks, sdk.WebhookLimitReached) and hooks.limit == 10
    where = sdk.error_for({"code": 6, "error": "webhook_url_not_allowed", "reason": "loopback"})
    assert isinstance(where, sdk.WebhookUrlNotAllowed) and where.reason == "loopback"
    bare = sdk.error_for({"code": 6, "error": "webhook_limit_reached"})
    assert isinstance(bare, sdk.WebhookLimitReached) and bare.limit is None
    assert sdk.error_for({"code": 6, "error": "webhook_url_not_allowed"}).reason is None  # type: ignore[attr-defined]
    assert sdk.error_for({"code": 6, "error": "withdrawal_limit_exceeded"}).limit_left is None  # type: ignore[attr-defined]
