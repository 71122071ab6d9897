"""What every client command shares: the ``--json``/``--profile``/``--url``/``--api-key``
options (added by :func:`client_command`), the :class:`Ctx` a command gets, the market's clock,
and the one place an expected failure becomes a line on stderr (:func:`handled`).

Every command takes ``--json`` (machine-readable output on stdout). Errors are one line on stderr
and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import email.utils
import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from openclore.cli.output import fail, fmt, fmt_any
from openclore.cli.profiles import Target, config_path, load_target
from openclore.client import (
    CanLowerEvery600Seconds,
    Client,
    CloreConnectionError,
    CloreError,
    ExceededMaxStep,
    InvalidToken,
    MarketError,
    MissingScope,
)
from openclore.domain.errors import REGISTRY

PANEL_RENT = "Renting"
PANEL_HOST = "Hosting"
PANEL_MONEY = "Money"

# ----------------------------------------------------------------------------- shared options

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of text.")]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", envvar="OPENCLORE_PROFILE", help="Profile in ~/.config/openclore/config.toml."
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="API base URL (default: $OPENCLORE_URL, profile, api.clore.ai)."),
]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", help="API token (default: $OPENCLORE_API_KEY, profile).")
]

# the options every client command ends with: (name, annotation, default)
SHARED_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("json", JsonOpt, False),
    ("profile", ProfileOpt, None),
    ("url", UrlOpt, None),
    ("api_key", KeyOpt, None),
)


class MarketClock:
    """The market's "now", as the server last said it: the ``Date`` header of its answers (the
    server's clock, not this machine's; an openclore sandbox's travelled one). Until the server
    has said anything: this machine's clock."""

    def __init__(self) -> None:
        self.offset = 0.0  # market time − local time

    def observe(self, response: httpx.Response) -> None:
        raw = response.headers.get("date")
        if not raw:
            return
        try:
            said = email.utils.parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self.offset = said - time.time()

    def now(self) -> int:
        return int(time.time() + self.offset)


class Ctx:
    """What a client command runs with: its shared options, where it goes (:attr:`target`, read
    from the options, the environment and the profile when first needed) and the market's
    clock."""

    def __init__(
        self,
        json: bool = False,
        profile: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.json = json
        self._where = (url, api_key, profile)
        self.clock = MarketClock()

    @cached_property
    def target(self) -> Target:
        return load_target(*self._where)

    def now(self) -> int:
        """The market's time: the ``Date`` of its last answer (an openclore sandbox sends its
        travelled clock there), not this machine's clock."""
        return self.clock.now()

    @contextmanager
    def client(self, need_key: bool = True) -> Iterator[Client]:
        """A client whose answers set :attr:`clock`."""
        if need_key and not self.target.api_key:
            fail(
                "no API key: set OPENCLORE_API_KEY, pass --api-key, or add api_key to a profile "
                f"in {config_path()}"
            )
        hooks = {"response": [self.clock.observe]}
        with (
            httpx.Client(timeout=30.0, event_hooks=hooks) as http,
            Client(
                self.target.api_key, base_url=self.target.url, retry_backoff=0.25, http_client=http
            ) as client,
        ):
            yield client

    @contextmanager
    def session(self, need_key: bool = True) -> Iterator[Client]:
        """:meth:`client`, with every expected failure one line on stderr (:func:`handled`)."""
        with handled(self.target), self.client(need_key) as client:
            yield client


def client_command(fn: Callable[..., None]) -> Callable[..., None]:
    """The command ``fn(c: Ctx, …)`` as Typer sees it: ``fn``'s own parameters, then
    ``--json``, ``--profile``, ``--url`` and ``--api-key``, which become ``c``."""
    signature = inspect.signature(fn, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "c"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in SHARED_OPTIONS
    ]

    @functools.wraps(fn)
    def command(**options: Any) -> None:
        shared_values = {name: options.pop(name) for name, _, _ in SHARED_OPTIONS}
        fn(Ctx(**shared_values), **options)

    parameters = [*own, *shared]
    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return command


# ----------------------------------------------------------------------------- errors

# how the extra fields of a named error read in a sentence
_EXTRA_WORDS = {
    "min_price": "Minimum:",
    "max_step": "Lowest allowed now:",
    "price": "The price now:",
    "limit": "Limit:",
    "limit_left": "Left today:",
    "reason": "Why:",
    "time_to_lowering": "Seconds left:",
    "max_hours": "Hours allowed at most:",
    "max_disk_gb": "GB allowed at most:",
    "orders": "Mounted by orders:",
    "volume_id": "Volume:",
    "gpu_count": "GPUs:",
    "min_gpus": "Fewest GPUs:",
    "max_gpus": "Most GPUs:",
}


def _extra_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(fmt_any(v) for v in value)
    return fmt_any(value)


def explain(exc: BaseException, target: Target | None = None) -> str:
    """One line that says what went wrong and, where it helps, what to do."""
    if isinstance(exc, ExceededMaxStep):
        return (
            f"A bid may be lowered by at most one step (the server's minimum spot price) at a "
            f"time; the lowest bid allowed now is {fmt(exc.max_step)} (exceeded_max_step)"
        )
    if isinstance(exc, CanLowerEvery600Seconds):
        return (
            f"A bid may be lowered once every 600 seconds; try again in "
            f"{exc.time_to_lowering} s (raising it is allowed any time) "
            f"(can_lower_every_600_seconds)"
        )
    if isinstance(exc, MarketError):
        # the sentence people read (the error registry's), then the name scripts match on
        kind = REGISTRY.get(exc.name)
        text = kind.message if kind is not None else "The market refused this."
        extra = "; ".join(
            f"{_EXTRA_WORDS.get(k, k)} {_extra_text(v)}" for k, v in exc.extra.items()
        )
        return f"{text}{' ' + extra if extra else ''} ({exc.name})"
    if isinstance(exc, MissingScope):
        return f"this API key lacks the {exc.scope!r} scope (missing_scope)"
    if isinstance(exc, InvalidToken):
        if exc.message == "api key expired":
            return "this API key has expired: make a new one (openclore key create)"
        where = f" for {target.url}" if target else ""
        return f"invalid API token{where}: check OPENCLORE_API_KEY, --api-key or your profile"
    if isinstance(exc, CloreError):
        return exc.message
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"the server's answer does not match the API ({where}: {first['msg']})"
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        return f"HTTP error: {exc}"
    if isinstance(exc, OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def handled(target: Target | None = None) -> Iterator[None]:
    """Turn every expected failure into one line on stderr and exit status 1."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except (CloreError, httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        if isinstance(exc, CloreConnectionError) and target is not None:
            fail(f"{exc.message} (is the server running? URL: {target.url})")
        fail(explain(exc, target))


def parse_decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"{what}: not a number: {text!r}")
    if not value.is_finite() or value < 0:
        fail(f"{what}: must be a non-negative number")
    return value
