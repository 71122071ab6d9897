"""Business errors, each carrying its Clore wire code and error name.

Codes (SPEC §1): 1 internal, 2 invalid input, 3 invalid token, 4 invalid endpoint, 5 rate limit,
6 named error (``error`` field plus optional extra fields such as ``max_step``).
"""

from __future__ import annotations

from dataclasses import dataclass
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


class MissingScope(InvalidToken):
    """Code 3 ``missing_scope``: the API key lacks the scope the endpoint needs (SPEC §8)."""

    def __init__(self, scope: str) -> None:
        super().__init__("missing_scope", scope=scope)


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


def N_(message: str) -> str:
    """Marks a sentence for the console's translation catalog (translated where it is shown)."""
    return message


@dataclass(frozen=True)
class ErrorKind:
    """One named error (code 6): its wire name, the HTTP status of ``http_status=rest``, the
    extra fields its envelope may carry, and the sentence people read (a catalog msgid)."""

    name: str
    status: int
    message: str
    extra: tuple[str, ...] = ()
    api: bool = True  # False: the console's own form errors, never sent by the API


# Every named error (code 6) openclore sends: the one place its name is written. The REST status
# table, the console's sentences and (by a test) the SDK's exceptions follow from it.
_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind("server-dont-exist", 404, N_("This server is not on the market.")),
    ErrorKind("server_dont_exist", 404, N_("No such server.")),
    ErrorKind("order_dont_exist", 404, N_("No such order.")),
    ErrorKind("server-offline", 409, N_("This server is offline.")),
    ErrorKind("server-already-rented", 409, N_("Someone rents this server on demand already.")),
    ErrorKind(
        "partial_gpu_rental_off",
        409,
        N_("This server is rented whole: ask for all of its GPUs, or leave the count out."),
    ),
    ErrorKind(
        "gpu_count_out_of_range",
        400,
        N_("This server rents out between its minimum and all of its GPUs."),
        ("min_gpus", "max_gpus"),
    ),
    ErrorKind("you_already_have_spot_order", 409, N_("You have a bid on this server already.")),
    ErrorKind("order_not_active", 409, N_("This order has ended.")),
    ErrorKind(
        "can_lower_every_600_seconds",
        409,
        N_("A bid may be lowered once every 600 seconds."),
        ("time_to_lowering",),
    ),
    ErrorKind("price_changed", 409, N_("The price changed meanwhile."), ("price",)),
    ErrorKind("not_enough_balance", 400, N_("Your wallet does not hold enough for this.")),
    ErrorKind(
        "too_low_price",
        400,
        N_("The bid is below the server's minimum spot price."),
        ("min_price",),
    ),
    ErrorKind(
        "amount_too_low",
        400,
        N_("The price is below the server's minimum spot price."),
        ("min_price",),
    ),
    ErrorKind(
        "exceeded_max_step",
        400,
        N_("That is a larger step down than one lowering allows."),
        ("max_step",),
    ),
    ErrorKind("currency-not-allowed", 400, N_("This server does not take that currency.")),
    ErrorKind("issue_description_too_long", 400, N_("The description is too long.")),
    ErrorKind("server_name_taken", 409, N_("You have a server with this name already.")),
    ErrorKind("server_limit_reached", 403, N_("You have reached the limit of servers.")),
    ErrorKind(
        "order_limit_reached", 403, N_("You have reached the limit of active orders."), ("limit",)
    ),
    ErrorKind("cant_rent_from_yourself", 403, N_("You cannot rent your own server.")),
    ErrorKind("you_dont_own_this_order", 403, N_("This order is not yours.")),
    ErrorKind("not_a_demo_world", 409, N_("This market is not the demo world.")),
    ErrorKind("order_already_rated", 409, N_("This order has been rated already.")),
    ErrorKind("invalid_address", 400, N_("That is not a valid address for this currency.")),
    ErrorKind(
        "withdrawal_limit_exceeded",
        403,
        N_("This is more than today's withdrawal limit allows."),
        ("limit_left",),
    ),
    ErrorKind("withdrawal_dont_exist", 404, N_("No such withdrawal.")),
    ErrorKind("withdrawal_not_pending", 409, N_("This withdrawal was decided already.")),
    ErrorKind("reason_required", 400, N_("Give a reason.")),
    ErrorKind("txid_required", 400, N_("Give the payout's transaction id.")),
    ErrorKind("unknown_account", 404, N_("No such account.")),
    ErrorKind("deposit_conflict", 409, N_("This deposit was recorded already, differently.")),
    ErrorKind(
        "agent_did_not_answer", 504, N_("The host's agent did not answer in time; trying again.")
    ),
    ErrorKind(
        "idempotency_key_in_use", 409, N_("The same request is still being worked on; retry.")
    ),
    ErrorKind("invalid_price", 400, N_("Enter a price as a positive number."), api=False),
    ErrorKind("invalid_mrl", 400, N_("Enter the maximum rental length in whole hours."), api=False),
    ErrorKind("webhook_dont_exist", 404, N_("No such webhook.")),
    ErrorKind("api_key_dont_exist", 404, N_("No such API key.")),
    # the operator's console forms
    ErrorKind("password_too_short", 400, N_("A password has at least 8 characters."), api=False),
    ErrorKind("user_name_taken", 409, N_("A user with this name exists already."), api=False),
    ErrorKind(
        "invalid_user_name",
        400,
        N_("Give a name of 1 to 64 characters, not only digits."),
        api=False,
    ),
    ErrorKind("invalid_role", 400, N_("Choose a role: user or operator."), api=False),
    ErrorKind("invalid_amount", 400, N_("Enter an amount as a number of coins."), api=False),
    ErrorKind("invalid_rate", 400, N_("Enter a rate as a positive number of dollars."), api=False),
    ErrorKind("no_stored_rate", 404, N_("No rate is stored for this currency."), api=False),
    ErrorKind(
        "webhook_limit_reached", 403, N_("You have reached the limit of webhooks."), ("limit",)
    ),
    ErrorKind(
        "webhook_url_not_allowed",
        400,
        N_("Webhooks cannot be sent to that address."),
        ("reason",),
    ),
)
# keeping work (SPEC §8)
_KINDS += (
    ErrorKind("order_not_running", 409, N_("This order is not running.")),
    ErrorKind("order_not_stopped", 409, N_("This order is not stopped.")),
    ErrorKind("order_already_stopped", 409, N_("This order is stopped already.")),
    ErrorKind(
        "gpus_not_free",
        409,
        N_("Its GPUs are rented by someone else now; the order stays stopped."),
        ("gpu_count",),
    ),
    ErrorKind(
        "stop_not_supported",
        409,
        N_(
            "This server's agent cannot keep a stopped rental or a volume; its host must update it."
        ),
    ),
    ErrorKind(
        "extend_out_of_range",
        400,
        N_("That is longer than the host's maximum rental length allows."),
        ("max_hours",),
    ),
    ErrorKind("disk_not_offered", 409, N_("This server offers no disk to choose.")),
    ErrorKind(
        "disk_gb_out_of_range",
        400,
        N_("That is more disk than the host offers."),
        ("max_disk_gb",),
    ),
    ErrorKind("volume_dont_exist", 404, N_("No such volume."), ("volume_id",)),
    ErrorKind(
        "volume_not_on_server",
        409,
        N_("A volume can only be mounted by orders on its own server."),
        ("volume_id",),
    ),
    ErrorKind(
        "volume_in_use", 409, N_("A live order mounts this volume; end it first."), ("orders",)
    ),
    ErrorKind(
        "volume_limit_reached", 403, N_("You have reached the limit of volumes."), ("limit",)
    ),
    # renters' own things (SPEC §8): account SSH keys and templates
    ErrorKind(
        "invalid_ssh_key",
        400,
        N_("That is not an SSH public key this marketplace accepts."),
        ("reason",),
    ),
    ErrorKind("ssh_key_exists", 409, N_("This key is already on your account."), ("key_id",)),
    ErrorKind("ssh_key_dont_exist", 404, N_("No such SSH key."), ("key_id",)),
    ErrorKind(
        "ssh_key_limit_reached", 403, N_("You have reached the limit of SSH keys."), ("limit",)
    ),
    ErrorKind("template_dont_exist", 404, N_("No such template."), ("template_id",)),
    ErrorKind(
        "not_your_template", 403, N_("Only its owner can delete a template."), ("template_id",)
    ),
    ErrorKind(
        "template_limit_reached", 403, N_("You have reached the limit of templates."), ("limit",)
    ),
    ErrorKind(
        "spend_limit_reached",
        403,
        N_("This API key has spent its limit for today."),
        ("currency", "limit", "spent"),
    ),
    ErrorKind(
        "spend_limit_exceeded",
        403,
        N_("This costs more per day than this API key may spend in a day."),
        ("currency", "limit"),
    ),
    ErrorKind(
        "scope_not_held",
        403,
        N_("A key cannot give or revoke scopes it does not have itself."),
        ("scopes",),
    ),
    ErrorKind(
        "spend_limit_not_held", 403, N_("A key cannot make a key that may spend more than it.")
    ),
    ErrorKind(
        "api_key_limit_reached", 403, N_("You have reached the limit of API keys."), ("limit",)
    ),
    ErrorKind("standing_order_dont_exist", 404, N_("No such standing order.")),
    ErrorKind(
        "standing_order_not_open", 409, N_("This standing order is no longer open."), ("state",)
    ),
    ErrorKind(
        "standing_order_limit_reached",
        403,
        N_("You have reached the limit of open standing orders."),
        ("limit",),
    ),
)
REGISTRY: dict[str, ErrorKind] = {kind.name: kind for kind in _KINDS}

# The HTTP status of each named error in "rest" mode (derived from the registry).
ERROR_HTTP_STATUS: dict[str, int] = {kind.name: kind.status for kind in _KINDS}


CODE_HTTP_STATUS_REST = {0: 200, 1: 500, 2: 400, 3: 401, 4: 404, 5: 429}
CODE_HTTP_STATUS_CLORE = {0: 200, 1: 500, 2: 200, 3: 200, 4: 200, 5: 429, 6: 200}


def http_status(code: int, error: str | None, mode: str) -> int:
    """HTTP status for a response with this Clore code, in ``clore`` or ``rest`` mode."""
    if mode != "rest":
        return CODE_HTTP_STATUS_CLORE.get(code, 200)
    if code == 6:
        return ERROR_HTTP_STATUS.get(error or "", 400)
    if code == 3 and error == "missing_scope":
        return 403
    return CODE_HTTP_STATUS_REST.get(code, 200)
