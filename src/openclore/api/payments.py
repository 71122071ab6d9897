"""``POST /payments/deposit``: a payment provider's signed deposit callback, outside the Clore API
(answered with REST statuses, whatever the API's mode: a provider reads HTTP statuses)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openclore.api.errors import error_response
from openclore.api.state import AppState
from openclore.api.transport import BodyTooLarge, too_large
from openclore.api.wire import dumps, parse_object
from openclore.domain.errors import CloreError, InternalError, InvalidEndpoint
from openclore.domain.money import to_units
from openclore.market import inputs
from openclore.market import payments as payment_service
from openclore.store.db import run_write

log = logging.getLogger("openclore.api")


def install_payments(app: FastAPI, state: AppState) -> None:
    """The deposit webhook (off unless ``payments_webhook_secret`` is set)."""
    settings = state.settings

    @app.post("/payments/deposit", include_in_schema=False)
    async def payments_deposit(request: Request) -> Response:
        raw = await request.body()
        try:
            answer = await run_in_threadpool(_payment_deposit, state, request, raw)
            return Response(dumps({**answer, "code": 0}), media_type="application/json")
        except CloreError as exc:
            # a provider reads HTTP statuses: the REST mapping whatever the API's mode
            return error_response(exc, "rest")
        except BodyTooLarge:
            return too_large(settings.max_body_bytes)
        except Exception:
            log.exception("internal error on the deposit webhook")
            return error_response(InternalError("internal error"), "rest")


def _payment_deposit(state: AppState, request: Request, raw: bytes) -> dict[str, Any]:
    settings = state.settings
    secret = settings.payments_webhook_secret
    if not secret:
        raise InvalidEndpoint("the deposit webhook is off (set payments_webhook_secret)")
    # checked before the body is even parsed: an unsigned or stale delivery writes nothing
    payment_service.verify(
        secret,
        request.headers.get(payment_service.SIGNATURE_HEADER),
        raw,
        state.rate_clock.now(),
        settings.payments_webhook_tolerance,
    )
    req = inputs.validate_body(inputs.PaymentDepositRequest, parse_object(raw))
    amount = to_units(req.amount)
    now = state.now()

    def run(conn: Connection) -> dict[str, Any]:
        return payment_service.provider_deposit(
            conn,
            external_id=req.external_id,
            currency=req.currency,
            amount=amount,
            user=None if req.user is None else str(req.user),
            address=req.address,
            settings=settings,
            now=now,
        )

    try:
        return run_write(state.db, run)
    except IntegrityError:  # a concurrent delivery of the same id won: this one is a replay
        return run_write(state.db, run)
