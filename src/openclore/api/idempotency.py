"""``Idempotency-Key`` on mutating endpoints: a retry gets the first answer, byte for byte.

Same key, same endpoint and same body within ``idempotency_ttl`` → the stored answer, with
``Idempotent-Replayed: true`` and without acting again, also while the first request is still
running on another process or replica (the retry waits for it). Same key with another request →
code 2. Answers of code 2 and 6 are stored too (they changed nothing and would not change on a
retry); a code 1 releases the key, so a retry runs again.

The use case stores the answer inside its own transaction (:meth:`AppState.db_write` calls
:func:`bind`), so an order and the answer that names it commit together.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.api.errors import error_response
from openclore.api.wire import dumps
from openclore.domain.errors import CloreError, InvalidInput, MarketError
from openclore.store import idempotency as keys
from openclore.store.db import Database

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
WAIT_FOR_FIRST = 20.0  # seconds a retry waits for the first request to answer
STALE_AFTER = 120.0  # a claim this old without an answer: its process died, a retry may run
_POLL = 0.02


@dataclass
class Attempt:
    user_id: int
    key: str
    owner: str
    body: bytes | None = None  # the stored answer, once its transaction committed
    pending: bytes | None = None


_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "openclore_idempotency", default=None
)


def success_body(result: dict[str, Any]) -> bytes:
    """The bytes a code-0 answer is sent as (the same as the endpoint runner renders)."""
    return dumps({**result, "code": 0})


def bind(
    fn: Callable[[Connection], Any], answer: Callable[[Any], dict[str, Any]] | None
) -> tuple[Callable[[Connection], Any], Callable[[], None]]:
    """Wrap a use case so that it stores the request's answer in its transaction; the second
    function marks it stored once the transaction committed."""
    attempt = _ATTEMPT.get()
    if attempt is None or attempt.body is not None:
        return fn, lambda: None

    def run(conn: Connection) -> Any:
        out = fn(conn)
        result = answer(out) if answer is not None else (out if isinstance(out, dict) else {})
        body = success_body(result)
        keys.complete(conn, attempt.user_id, attempt.key, attempt.owner, 200, body)
        attempt.pending = body
        return out

    def committed() -> None:
        attempt.body = attempt.pending

    return run, committed


def _number(value: int | float | Decimal) -> str:
    """A number's exact value as one text: ``0.0010``, ``0.001`` and ``1e-3`` alike, ``1`` and
    ``1.0`` alike (digits without trailing zeros, and an exponent; no rounding at any size)."""
    exact = value if isinstance(value, Decimal) else Decimal(str(value))
    if not exact.is_finite():
        return str(exact)
    if exact.is_zero():
        return "0"
    sign, digits, exponent = exact.as_tuple()
    kept = list(digits)
    assert isinstance(exponent, int)
    while kept[-1] == 0:
        kept.pop()
        exponent += 1
    return ("-" if sign else "") + "".join(map(str, kept)) + f"e{exponent}"


def canonical(value: Any) -> str:
    """A parsed JSON body as one text: objects' keys sorted, no spacing, numbers compared by
    value (:func:`_number`; never equal to a string), strings and literals as JSON writes them."""
    if value is None or isinstance(value, bool | str):
        return json.dumps(value)
    if isinstance(value, int | float | Decimal):
        return _number(value)
    if isinstance(value, dict):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{canonical(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def request_hash(request: Request, body: dict[str, Any]) -> str:
    text = f"{request.url.path}?{request.url.query}\n{canonical(body)}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def key_of(request: Request) -> str | None:
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidInput(f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


def run_once(
    db: Database,
    request: Request,
    endpoint: str,
    key: str,
    user_id: int,
    body: dict[str, Any],
    mode: str,
    ttl: float,
    handler: Callable[[], Any],
) -> Response:
    """Run ``handler`` at most once for this key, or replay its stored answer."""
    digest = request_hash(request, body)
    deadline = time.monotonic() + WAIT_FOR_FIRST
    while True:
        claim = keys.begin(db, user_id, key, endpoint, digest, time.time(), ttl, STALE_AFTER)
        if claim.action == "mismatch":
            raise InvalidInput(
                "Idempotency-Key was already used with a different request (another endpoint "
                "or body); send a new key for a new request"
            )
        if claim.action == "replay":
            return _stored(claim.body, claim.status, replayed=True)
        if claim.action == "wait":
            if time.monotonic() > deadline:
                raise MarketError("idempotency_key_in_use")
            time.sleep(_POLL)
            continue
        attempt = Attempt(user_id, key, claim.owner)
        token = _ATTEMPT.set(attempt)
        try:
            result = handler()
        except keys.KeyLost:
            continue  # a retry took the key over: answer as it does
        except CloreError as exc:
            if exc.code in (2, 6):
                response = error_response(exc, mode)
                stored = bytes(response.body)
                keys.finish(db, user_id, key, claim.owner, response.status_code, stored)
            else:
                keys.release(db, user_id, key, claim.owner)
            raise
        except BaseException:
            keys.release(db, user_id, key, claim.owner)
            raise
        finally:
            _ATTEMPT.reset(token)
        if attempt.body is None:  # nothing was written through db_write: store it now
            if isinstance(result, Response):
                keys.release(db, user_id, key, claim.owner)
                return result
            attempt.body = success_body(result)
            keys.finish(db, user_id, key, claim.owner, 200, attempt.body)
        return _stored(attempt.body, 200, replayed=False)


def _stored(body: bytes, status: int, *, replayed: bool) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(body, status_code=status, media_type="application/json", headers=headers)
