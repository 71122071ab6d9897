"""Exceptions raised by the SDK, keyed on the response's ``code`` and, for code 6, on ``error``.

::

    CloreError                        base: .code, .error, .response, .status_code
    ├── CloreConnectionError          no Clore response (network); .sent: may have reached it
    ├── UnexpectedResponse            a response that is not a Clore JSON envelope
    ├── OrderLookupFailed             create_order said {"code":0} but the order was not found
    ├── InternalError                 code 1 (database / internal error)
    ├── InvalidInput                  code 2 (malformed request; .error says what)
    ├── InvalidToken                  code 3
    │   └── MissingScope              code 3 missing_scope; .scope (the key lacks it)
    ├── InvalidEndpoint               code 4 (also: sandbox endpoints on a non-sandbox server)
    ├── RateLimited                   code 5; .retry_after (seconds, from Retry-After)
    └── MarketError                   code 6, generic fallback for an unknown ``error`` name
        ├── ExceededMaxStep           exceeded_max_step; .max_step (lowest bid allowed now)
        ├── CanLowerEvery600Seconds   can_lower_every_600_seconds; .time_to_lowering (seconds)
        ├── NotEnoughBalance          not_enough_balance
        ├── ServerAlreadyRented       server-already-rented
        ├── ServerOffline             server-offline
        ├── ServerDoesNotExist        server-dont-exist / server_dont_exist
        ├── OrderDoesNotExist         order_dont_exist
        ├── TooLowPrice               too_low_price; .min_price
        ├── YouAlreadyHaveSpotOrder   you_already_have_spot_order
        ├── CurrencyNotAllowed        currency-not-allowed
        ├── CantRentFromYourself      cant_rent_from_yourself
        ├── YouDontOwnThisOrder       you_dont_own_this_order
        ├── OrderNotActive            order_not_active
        ├── IssueDescriptionTooLong   issue_description_too_long
        ├── AmountTooLow              amount_too_low; .min_price
        ├── PriceChanged              price_changed; .price (the price now)
        ├── ServerNameTaken           server_name_taken
        ├── ServerLimitReached        server_limit_reached
        ├── OrderLimitReached         order_limit_reached; .limit
        ├── NotADemoWorld             not_a_demo_world
        ├── OrderAlreadyRated         order_already_rated
        ├── AgentDidNotAnswer         agent_did_not_answer (the host's agent; try again)
        ├── IdempotencyKeyInUse       idempotency_key_in_use (the first request still runs)
        ├── InvalidAddress            invalid_address
        ├── WithdrawalLimitExceeded   withdrawal_limit_exceeded; .limit_left
        ├── WithdrawalDoesNotExist    withdrawal_dont_exist
        ├── WithdrawalNotPending      withdrawal_not_pending
        ├── ReasonRequired            reason_required
        ├── TxidRequired              txid_required
        ├── UnknownAccount            unknown_account
        ├── DepositConflict           deposit_conflict
        ├── WebhookDoesNotExist       webhook_dont_exist
        ├── WebhookLimitReached       webhook_limit_reached; .limit
        ├── WebhookUrlNotAllowed      webhook_url_not_allowed; .reason
        ├── PartialGpuRentalOff       partial_gpu_rental_off
        ├── GpuCountOutOfRange        gpu_count_out_of_range; .min_gpus, .max_gpus
        ├── OrderNotRunning           order_not_running
        ├── OrderNotStopped           order_not_stopped
        ├── OrderAlreadyStopped       order_already_stopped
        ├── GpusNotFree               gpus_not_free; .gpu_count (start_order: it stays stopped)
        ├── StopNotSupported          stop_not_supported (the host's agent is too old)
        ├── ExtendOutOfRange          extend_out_of_range; .max_hours
        ├── DiskNotOffered            disk_not_offered
        ├── DiskOutOfRange            disk_gb_out_of_range; .max_disk_gb
        ├── VolumeDoesNotExist        volume_dont_exist; .volume_id
        ├── VolumeNotOnServer         volume_not_on_server; .volume_id
        ├── VolumeInUse               volume_in_use; .orders (the live orders mounting it)
        ├── VolumeLimitReached        volume_limit_reached; .limit
        ├── InvalidSshKey             invalid_ssh_key; .reason
        ├── SshKeyExists              ssh_key_exists; .key_id (the key already there)
        ├── SshKeyDoesNotExist        ssh_key_dont_exist; .key_id
        ├── SshKeyLimitReached        ssh_key_limit_reached; .limit
        ├── TemplateDoesNotExist      template_dont_exist; .template_id
        ├── NotYourTemplate           not_your_template; .template_id
        ├── TemplateLimitReached      template_limit_reached; .limit
        ├── SpendLimitReached         spend_limit_reached; .currency, .limit, .spent (API key)
        ├── SpendLimitExceeded        spend_limit_exceeded; .currency, .limit (per day > limit)
        ├── ScopeNotHeld              scope_not_held; .scopes (a key cannot give more)
        ├── SpendLimitNotHeld         spend_limit_not_held
        ├── ApiKeyDoesNotExist        api_key_dont_exist
        ├── ApiKeyLimitReached        api_key_limit_reached; .limit
        ├── StandingOrderDoesNotExist standing_order_dont_exist
        ├── StandingOrderNotOpen      standing_order_not_open; .state
        └── StandingOrderLimitReached standing_order_limit_reached; .limit

Numbers carried by errors (``max_step``, ``min_price``, ``price``) are :class:`~decimal.Decimal`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar


class CloreError(Exception):
    """Base of every SDK error.

    ``code`` is the Clore code (``None`` when no Clore response came back), ``error`` the
    response's ``error`` text, ``response`` the whole decoded body, ``status_code`` the HTTP status.
    """

    code: int | None = None

    def __init__(
        self,
        message: str = "",
        *,
        error: str | None = None,
        response: dict[str, Any] | None = None,
        status_code: int | None = None,
    ) -> None:
        self.error = error
        self.response: dict[str, Any] = dict(response or {})
        self.status_code = status_code
        super().__init__(message or error or type(self).__name__)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class CloreConnectionError(CloreError):
    """The request failed on the network. ``sent`` is False when it surely never left
    (connection refused, connect timeout): only then is a non-idempotent call safe to repeat."""

    def __init__(self, message: str, *, sent: bool, retryable: bool = True) -> None:
        super().__init__(message)
        self.sent = sent
        self.retryable = retryable


class UnexpectedResponse(CloreError):
    """The server answered with something that is not a Clore envelope (e.g. an HTML 502)."""


class OrderLookupFailed(CloreError):
    """``create_order`` succeeded (``{"code":0}``) without an id, and the best-effort search of
    ``my_orders`` found no matching order. The order probably exists: check ``my_orders``."""


class InternalError(CloreError):
    code = 1


class InvalidInput(CloreError):
    code = 2


class InvalidToken(CloreError):
    code = 3


class MissingScope(InvalidToken):
    """The API key lacks the scope the endpoint needs (``.scope``); nothing changed."""

    @property
    def scope(self) -> str | None:
        value = self.response.get("scope")
        return value if isinstance(value, str) else None


class InvalidEndpoint(CloreError):
    code = 4


class RateLimited(CloreError):
    code = 5

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message or "rate limited", **kw)
        self.retry_after = retry_after


class MarketError(CloreError):
    """Code 6: an error named in ``error``. Subclasses exist for every known name; an unknown
    name raises this class itself. ``name`` is the error name, ``extra`` the other fields."""

    code = 6
    names: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        return self.error or ""

    @property
    def extra(self) -> dict[str, Any]:
        return {k: v for k, v in self.response.items() if k not in ("code", "error")}

    def _int(self, field: str) -> int | None:
        value = self.response.get(field)
        if value is None or isinstance(value, bool):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    def _decimal(self, field: str) -> Decimal | None:
        value = self.response.get(field)
        if value is None or isinstance(value, bool):
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class ExceededMaxStep(MarketError):
    """A bid may be lowered by at most one step (the server's minimum spot price)."""

    names = ("exceeded_max_step",)

    @property
    def max_step(self) -> Decimal | None:
        """The lowest bid allowed now (per day)."""
        return self._decimal("max_step")


class CanLowerEvery600Seconds(MarketError):
    """A bid may be lowered once every 600 seconds."""

    names = ("can_lower_every_600_seconds",)

    @property
    def time_to_lowering(self) -> int | None:
        """Seconds until the bid may be lowered again."""
        value = self.response.get("time_to_lowering")
        return None if value is None else int(value)


class NotEnoughBalance(MarketError):
    names = ("not_enough_balance",)


class ServerAlreadyRented(MarketError):
    names = ("server-already-rented", "server_already_rented")


class ServerOffline(MarketError):
    names = ("server-offline", "server_offline")


class ServerDoesNotExist(MarketError):
    names = ("server-dont-exist", "server_dont_exist")


class OrderDoesNotExist(MarketError):
    names = ("order_dont_exist", "order-dont-exist")


class TooLowPrice(MarketError):
    names = ("too_low_price",)

    @property
    def min_price(self) -> Decimal | None:
        return self._decimal("min_price")


class YouAlreadyHaveSpotOrder(MarketError):
    names = ("you_already_have_spot_order",)


class CurrencyNotAllowed(MarketError):
    names = ("currency-not-allowed", "currency_not_allowed")


class CantRentFromYourself(MarketError):
    names = ("cant_rent_from_yourself",)


class YouDontOwnThisOrder(MarketError):
    names = ("you_dont_own_this_order",)


class OrderNotActive(MarketError):
    names = ("order_not_active",)


class IssueDescriptionTooLong(MarketError):
    names = ("issue_description_too_long",)


class AmountTooLow(MarketError):
    names = ("amount_too_low",)

    @property
    def min_price(self) -> Decimal | None:
        return self._decimal("min_price")


class PriceChanged(MarketError):
    names = ("price_changed",)

    @property
    def price(self) -> Decimal | None:
        """The server's on-demand price now."""
        return self._decimal("price")


class ServerNameTaken(MarketError):
    names = ("server_name_taken",)


class ServerLimitReached(MarketError):
    names = ("server_limit_reached",)


class OrderLimitReached(MarketError):
    names = ("order_limit_reached",)

    @property
    def limit(self) -> int | None:
        value = self.response.get("limit")
        return None if value is None else int(value)


class PartialGpuRentalOff(MarketError):
    """The server rents whole only: an order for some of its GPUs is refused."""

    names = ("partial_gpu_rental_off",)


class GpuCountOutOfRange(MarketError):
    """The GPU count asked for is below the server's ``min_gpus`` or above its GPUs."""

    names = ("gpu_count_out_of_range",)

    @property
    def min_gpus(self) -> int | None:
        value = self.response.get("min_gpus")
        return None if value is None else int(value)

    @property
    def max_gpus(self) -> int | None:
        value = self.response.get("max_gpus")
        return None if value is None else int(value)


class NotADemoWorld(MarketError):
    names = ("not_a_demo_world",)


class OrderAlreadyRated(MarketError):
    names = ("order_already_rated",)


class AgentDidNotAnswer(MarketError):
    names = ("agent_did_not_answer",)


class IdempotencyKeyInUse(MarketError):
    names = ("idempotency_key_in_use",)


class InvalidAddress(MarketError):
    names = ("invalid_address",)


class WithdrawalLimitExceeded(MarketError):
    names = ("withdrawal_limit_exceeded",)

    @property
    def limit_left(self) -> Decimal | None:
        value = self.response.get("limit_left")
        return None if value is None else Decimal(str(value))


class WithdrawalDoesNotExist(MarketError):
    names = ("withdrawal_dont_exist",)


class WithdrawalNotPending(MarketError):
    names = ("withdrawal_not_pending",)


class ReasonRequired(MarketError):
    names = ("reason_required",)


class TxidRequired(MarketError):
    names = ("txid_required",)


class UnknownAccount(MarketError):
    names = ("unknown_account",)


class DepositConflict(MarketError):
    names = ("deposit_conflict",)


class WebhookDoesNotExist(MarketError):
    names = ("webhook_dont_exist",)


class WebhookLimitReached(MarketError):
    names = ("webhook_limit_reached",)

    @property
    def limit(self) -> int | None:
        value = self.response.get("limit")
        return None if value is None else int(value)


class WebhookUrlNotAllowed(MarketError):
    names = ("webhook_url_not_allowed",)

    @property
    def reason(self) -> str | None:
        value = self.response.get("reason")
        return None if value is None else str(value)


# ----------------------------------------------------------------- keeping work (SPEC §8)


class OrderNotRunning(MarketError):
    """restart/reset need a running order; a waiting spot bid has nothing to stop."""

    names = ("order_not_running",)


class OrderNotStopped(MarketError):
    names = ("order_not_stopped",)


class OrderAlreadyStopped(MarketError):
    names = ("order_already_stopped",)


class GpusNotFree(MarketError):
    """``start_order``: its GPUs are rented by someone else now; the order stays stopped."""

    names = ("gpus_not_free",)

    @property
    def gpu_count(self) -> int | None:
        return self._int("gpu_count")


class StopNotSupported(MarketError):
    """The server's agent cannot keep a stopped rental or a volume (its host must update it)."""

    names = ("stop_not_supported",)


class ExtendOutOfRange(MarketError):
    names = ("extend_out_of_range",)

    @property
    def max_hours(self) -> int | None:
        """The most hours the order may be extended by now."""
        return self._int("max_hours")


class DiskNotOffered(MarketError):
    names = ("disk_not_offered",)


class DiskOutOfRange(MarketError):
    names = ("disk_gb_out_of_range",)

    @property
    def max_disk_gb(self) -> int | None:
        return self._int("max_disk_gb")


class VolumeDoesNotExist(MarketError):
    names = ("volume_dont_exist",)

    @property
    def volume_id(self) -> int | None:
        return self._int("volume_id")


class VolumeNotOnServer(MarketError):
    """A volume is mounted only by orders on the server it lives on."""

    names = ("volume_not_on_server",)

    @property
    def volume_id(self) -> int | None:
        return self._int("volume_id")


class VolumeInUse(MarketError):
    names = ("volume_in_use",)

    @property
    def orders(self) -> list[int]:
        """The live orders that mount it (end them first)."""
        return [int(i) for i in self.response.get("orders") or []]


class VolumeLimitReached(MarketError):
    names = ("volume_limit_reached",)

    @property
    def limit(self) -> int | None:
        return self._int("limit")


class InvalidSshKey(MarketError):
    """Not an SSH public key the marketplace accepts (ed25519, ECDSA, RSA of 2048+ bits)."""

    names = ("invalid_ssh_key",)

    @property
    def reason(self) -> str | None:
        value = self.response.get("reason")
        return value if isinstance(value, str) else None


class SshKeyExists(MarketError):
    names = ("ssh_key_exists",)

    @property
    def key_id(self) -> int | None:
        """The id of the same key, already on the account."""
        return self._int("key_id")


class SshKeyDoesNotExist(MarketError):
    names = ("ssh_key_dont_exist",)

    @property
    def key_id(self) -> int | None:
        return self._int("key_id")


class SshKeyLimitReached(MarketError):
    names = ("ssh_key_limit_reached",)

    @property
    def limit(self) -> int | None:
        return self._int("limit")


class TemplateDoesNotExist(MarketError):
    """No such template, or someone else's private one."""

    names = ("template_dont_exist",)

    @property
    def template_id(self) -> int | None:
        return self._int("template_id")


class NotYourTemplate(MarketError):
    """A public template of someone else's: only its owner deletes it."""

    names = ("not_your_template",)

    @property
    def template_id(self) -> int | None:
        return self._int("template_id")


class TemplateLimitReached(MarketError):
    names = ("template_limit_reached",)

    @property
    def limit(self) -> int | None:
        return self._int("limit")


class _KeyLimit(MarketError):
    @property
    def currency(self) -> str | None:
        value = self.response.get("currency")
        return value if isinstance(value, str) else None

    @property
    def limit(self) -> Decimal | None:
        value = self.response.get("limit")
        return None if value is None else Decimal(str(value))


class SpendLimitReached(_KeyLimit):
    """The API key's orders have been billed its daily limit in this currency today."""

    names = ("spend_limit_reached",)

    @property
    def spent(self) -> Decimal | None:
        value = self.response.get("spent")
        return None if value is None else Decimal(str(value))


class SpendLimitExceeded(_KeyLimit):
    """The order costs more per day than the API key may spend in a day."""

    names = ("spend_limit_exceeded",)


class ScopeNotHeld(MarketError):
    names = ("scope_not_held",)

    @property
    def scopes(self) -> list[str]:
        value = self.response.get("scopes")
        return [str(s) for s in value] if isinstance(value, list) else []


class SpendLimitNotHeld(MarketError):
    names = ("spend_limit_not_held",)


class ApiKeyDoesNotExist(MarketError):
    names = ("api_key_dont_exist",)


class ApiKeyLimitReached(MarketError):
    names = ("api_key_limit_reached",)


class StandingOrderDoesNotExist(MarketError):
    names = ("standing_order_dont_exist",)


class StandingOrderNotOpen(MarketError):
    names = ("standing_order_not_open",)

    @property
    def state(self) -> str | None:
        value = self.response.get("state")
        return value if isinstance(value, str) else None


class StandingOrderLimitReached(MarketError):
    names = ("standing_order_limit_reached",)

    @property
    def limit(self) -> int | None:
        return self._int("limit")


MARKET_ERRORS: dict[str, type[MarketError]] = {
    name: cls
    for cls in (
        ExceededMaxStep,
        CanLowerEvery600Seconds,
        NotEnoughBalance,
        ServerAlreadyRented,
        ServerOffline,
        ServerDoesNotExist,
        OrderDoesNotExist,
        TooLowPrice,
        YouAlreadyHaveSpotOrder,
        CurrencyNotAllowed,
        CantRentFromYourself,
        YouDontOwnThisOrder,
        OrderNotActive,
        IssueDescriptionTooLong,
        AmountTooLow,
        PriceChanged,
        ServerNameTaken,
        ServerLimitReached,
        OrderLimitReached,
        NotADemoWorld,
        OrderAlreadyRated,
        AgentDidNotAnswer,
        IdempotencyKeyInUse,
        InvalidAddress,
        WithdrawalLimitExceeded,
        WithdrawalDoesNotExist,
        WithdrawalNotPending,
        ReasonRequired,
        TxidRequired,
        UnknownAccount,
        DepositConflict,
        WebhookDoesNotExist,
        WebhookLimitReached,
        WebhookUrlNotAllowed,
        PartialGpuRentalOff,
        GpuCountOutOfRange,
        OrderNotRunning,
        OrderNotStopped,
        OrderAlreadyStopped,
        GpusNotFree,
        StopNotSupported,
        ExtendOutOfRange,
        DiskNotOffered,
        DiskOutOfRange,
        VolumeDoesNotExist,
        VolumeNotOnServer,
        VolumeInUse,
        VolumeLimitReached,
        InvalidSshKey,
        SshKeyExists,
        SshKeyDoesNotExist,
        SshKeyLimitReached,
        TemplateDoesNotExist,
        NotYourTemplate,
        TemplateLimitReached,
        SpendLimitReached,
        SpendLimitExceeded,
        ScopeNotHeld,
        SpendLimitNotHeld,
        ApiKeyDoesNotExist,
        ApiKeyLimitReached,
        StandingOrderDoesNotExist,
        StandingOrderNotOpen,
        StandingOrderLimitReached,
    )
    for name in cls.names
}

CODE_ERRORS: dict[int, type[CloreError]] = {
    1: InternalError,
    2: InvalidInput,
    3: InvalidToken,
    4: InvalidEndpoint,
}


def error_for(
    body: dict[str, Any], status_code: int | None = None, retry_after: float | None = None
) -> CloreError:
    """The exception for a decoded response whose ``code`` is not 0."""
    code = body.get("code")
    error = body.get("error")
    error_text = error if isinstance(error, str) else None
    common: dict[str, Any] = {"error": error_text, "response": body, "status_code": status_code}
    if code == 5:
        return RateLimited(retry_after=retry_after, **common)
    if code == 3 and error_text == "missing_scope":
        return MissingScope(error_text, **common)
    if code == 6:
        cls = MARKET_ERRORS.get(error_text or "", MarketError)
        return cls(error_text or "market error", **common)
    known = CODE_ERRORS.get(code) if isinstance(code, int) else None
    if known is not None:
        default = {
            1: "internal error",
            2: "invalid input",
            3: "invalid API token",
            4: "invalid endpoint",
        }[known.code or 1]
        return known(error_text or default, **common)
    return UnexpectedResponse(f"unknown response code {code!r}", **common)
