"""``openclore`` commands that drive a Clore-compatible market over its API (openclore or Clore.ai).

Configuration, first found wins: ``--url``/``--api-key``; ``OPENCLORE_URL``/``OPENCLORE_API_KEY``;
the profile chosen with ``--profile``/``OPENCLORE_PROFILE`` (else the file's ``profile`` key, else
``default``) in ``~/.config/openclore/config.toml`` (``OPENCLORE_CONFIG`` names another file)::

    profile = "local"

    [profiles.local]
    url = "http://127.0.0.1:8000"
    api_key = "6FcuR7ibcwKR1Z32lEFoSotzUUtzKO2H"

    [profiles.clore]
    url = "https://api.clore.ai"
    api_key = "…"

Every command takes ``--json`` (machine-readable output on stdout). Errors are one line on stderr
and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import csv as csv_module
import email.utils
import os
import shlex
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import httpx
import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.cells import cell_len
from rich.table import Table

from openclore.cli.output import plain, terminal
from openclore.client import (
    DEFAULT_BASE_URL,
    CanLowerEvery600Seconds,
    Client,
    CloreConnectionError,
    CloreError,
    Event,
    ExceededMaxStep,
    InvalidToken,
    MarketError,
    MarketServer,
    Order,
    Transaction,
    json_dumps,
)
from openclore.client._base import ssh_banner
from openclore.client._exactjson import number_text
from openclore.domain.errors import REGISTRY

T = TypeVar("T")

client_app = typer.Typer(no_args_is_help=True)
host_app = typer.Typer(
    help="Servers you host: add one, change its prices and availability.", no_args_is_help=True
)
client_app.add_typer(host_app, name="server", rich_help_panel="Hosting")

out = terminal(highlight=False, soft_wrap=True)
err = terminal(stderr=True, highlight=False, soft_wrap=True)

PANEL_RENT = "Renting"
PANEL_HOST = "Hosting"
PANEL_MONEY = "Money"

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Target:
    """Where the commands go and who they are."""

    url: str
    api_key: str | None
    profile: str | None


def config_path() -> Path:
    explicit = os.environ.get("OPENCLORE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "openclore" / "config.toml"


def load_target(url: str | None, api_key: str | None, profile: str | None) -> Target:
    path = config_path()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(f"cannot read {path}: {exc}")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        fail(f"{path}: [profiles] must be a table")
    chosen = profile or data.get("profile")
    section: dict[str, Any] = {}
    if chosen:
        found = profiles.get(chosen)
        if not isinstance(found, dict):
            known = ", ".join(sorted(profiles)) or "none"
            fail(f"no profile {chosen!r} in {path} (profiles: {known})")
        section = found
    elif isinstance(profiles.get("default"), dict):
        chosen, section = "default", profiles["default"]
    else:
        section = {k: v for k, v in data.items() if k in ("url", "api_key")}
    resolved_url = url or os.environ.get("OPENCLORE_URL") or section.get("url") or DEFAULT_BASE_URL
    resolved_key = api_key or os.environ.get("OPENCLORE_API_KEY") or section.get("api_key")
    return Target(str(resolved_url), str(resolved_key) if resolved_key else None, chosen)


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


@dataclass
class Ctx:
    target: Target
    json: bool
    clock: MarketClock = field(default_factory=MarketClock)

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


def ctx(json: bool, profile: str | None, url: str | None, api_key: str | None) -> Ctx:
    return Ctx(load_target(url, api_key, profile), json)


# ----------------------------------------------------------------------------- errors and output


def fail(message: str, code: int = 1) -> NoReturn:
    """Say what went wrong on one line (``error: …``) and exit with ``code``."""
    line = " ".join(message.split())
    err.print(f"error: {line}", markup=False)
    raise typer.Exit(code)


# how the extra fields of a named error read in a sentence
_EXTRA_WORDS = {
    "min_price": "Minimum:",
    "max_step": "Lowest allowed now:",
    "price": "The price now:",
    "limit": "Limit:",
    "limit_left": "Left today:",
    "reason": "Why:",
    "time_to_lowering": "Seconds left:",
}


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
        extra = "; ".join(f"{_EXTRA_WORDS.get(k, k)} {fmt_any(v)}" for k, v in exc.extra.items())
        return f"{text}{' ' + extra if extra else ''} ({exc.name})"
    if isinstance(exc, InvalidToken):
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


def emit_json(value: Any) -> None:
    sys.stdout.write(json_dumps(to_plain(value), indent=2) + "\n")
    sys.stdout.flush()


def to_plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return to_plain(value.model_dump(mode="python", exclude_none=False))
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def fmt(value: Decimal | None, places: int = 10) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 1:
        # keep `places` significant digits for small prices
        exponent = value.adjusted() - places + 1
        value = value.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
    return number_text(value)


def fmt_any(value: Any) -> str:
    return fmt(value) if isinstance(value, Decimal) else str(value)


def parse_decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"{what}: not a number: {text!r}")
    if not value.is_finite() or value < 0:
        fail(f"{what}: must be a non-negative number")
    return value


def waiting(message: str) -> Any:
    """A spinner on stderr while a call runs (nothing when stderr is not a terminal)."""
    return err.status(plain(message), spinner="dots")


def call(message: str, fn: Callable[[], T]) -> T:
    with waiting(message):
        return fn()


def age(ct: int | None, now: int) -> str:
    """How long before ``now`` (the market's clock, see :class:`MarketClock`) ``ct`` was."""
    if ct is None:
        return "-"
    seconds = max(0, now - ct)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def market_now(c: Ctx) -> int:
    """The market's time: the ``Date`` of its last answer (an openclore sandbox sends its
    travelled clock there), not this machine's clock."""
    return c.clock.now()


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """A table column. ``priority`` 0 is always shown; when the terminal is too narrow for every
    column, the highest priority number goes first (the rightmost of equals first). ``fold``
    marks a column that may wrap when even the priority-0 columns do not fit."""

    name: str
    priority: int = 0
    justify: Literal["left", "right"] = "left"
    fold: bool = False


def terminal_width() -> int:
    """The width tables are laid out for: ``$COLUMNS``, else the terminal's, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return out.width


def table_width(widths: list[int]) -> int:
    """The width of a :func:`print_table` table whose columns hold ``widths`` characters: two
    spaces between neighbours, no edges (so a line copies cleanly, an ssh command included)."""
    return sum(widths) + 2 * max(0, len(widths) - 1)


def fit_columns(columns: list[Column], rows: list[list[str]], width: int) -> list[int]:
    """Indices of the columns to show at ``width``: every column that fits, dropping the least
    important ones first, never one of priority 0."""
    natural = [
        max(
            [cell_len(column.name)]
            + [cell_len(line) for row in rows for line in row[i].splitlines()]
        )
        for i, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    while table_width([natural[i] for i in shown]) > width:
        droppable = [i for i in shown if columns[i].priority > 0]
        if not droppable:
            break
        shown.remove(max(droppable, key=lambda i: (columns[i].priority, i)))
    return shown


def print_table(
    title: str, columns: list[Column], rows: list[list[str]], width: int | None = None
) -> None:
    """A table laid out for the terminal: no cell wraps; at a narrow width the least important
    columns are left out (a caption names them) rather than squeezed. Only when the
    priority-0 columns alone are too wide do the ``fold`` ones wrap."""
    width = terminal_width() if width is None else width
    shown = fit_columns(columns, rows, width)
    hidden = [c.name for i, c in enumerate(columns) if i not in shown and c.name]
    table = Table(
        title=title,
        caption=f"left out at {width} columns: {', '.join(hidden)} (--json shows everything)"
        if hidden
        else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    natural = [
        max([cell_len(columns[i].name)] + [cell_len(x) for r in rows for x in r[i].splitlines()])
        for i in shown
    ]
    fits = table_width(natural) <= width
    for i in shown:
        column = columns[i]
        wrap = column.fold and not fits
        table.add_column(
            column.name,
            justify=column.justify,
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
        )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    terminal(width=width, highlight=False).print(table)


# ----------------------------------------------------------------------------- market


class SortKey(StrEnum):
    price = "price"
    gpus = "gpus"
    vram = "vram"
    reliability = "reliability"


@client_app.command(rich_help_panel=PANEL_RENT)
def market(
    gpu: Annotated[
        str | None, typer.Option(help="GPU model contains this (case-insensitive).")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="At least this many GPUs.")] = None,
    vram: Annotated[
        float | None, typer.Option(help="At least this much memory per GPU, GB.")
    ] = None,
    ram: Annotated[float | None, typer.Option(help="At least this much system memory, GB.")] = None,
    max_price: Annotated[
        str | None, typer.Option(help="Highest on-demand price per day (per hour with --per-hour).")
    ] = None,
    per_hour: Annotated[bool, typer.Option("--per-hour", help="Prices per hour.")] = False,
    currency: Annotated[
        str, typer.Option(help="Show and filter prices in this currency.")
    ] = "bitcoin",
    country: Annotated[str | None, typer.Option(help="Country code, e.g. CZ.")] = None,
    min_reliability: Annotated[float | None, typer.Option(help="Reliability 0–1.")] = None,
    available_only: Annotated[
        bool, typer.Option("--available-only", help="Hide servers that are rented now.")
    ] = False,
    sort: Annotated[
        SortKey,
        typer.Option(
            metavar="KEY",
            help="Sort by price (ascending), gpus, vram or reliability (descending).",
        ),
    ] = SortKey.price,
    limit: Annotated[int | None, typer.Option(help="Show at most this many.")] = None,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Servers for rent, filtered and sorted (prices per day unless --per-hour)."""
    c = ctx(json, profile, url, api_key)
    limit_price = parse_decimal(max_price, "--max-price") if max_price is not None else None
    divisor = Decimal(24) if per_hour else Decimal(1)
    # openclore filters on the server (the query extension); a market that ignores the query
    # (Clore.ai) sends everything, and the same filters below then choose locally
    query: dict[str, str | int | float | bool] = {"currency": currency, "sort": sort.value}
    if gpu:
        query["gpu"] = gpu
    if gpus is not None:
        query["min_gpus"] = gpus
    if vram is not None:
        query["min_vram"] = vram
    if limit_price is not None:
        query["max_price"] = str(limit_price * divisor)
    if country:
        query["country"] = country
    if min_reliability is not None:
        query["min_reliability"] = min_reliability
    if available_only:
        query["available"] = True
    if limit is not None and ram is None:  # --ram is chosen here, after the server's page
        query["limit"] = max(0, limit)
    with handled(c.target), c.client(need_key=False) as client:
        listing = call("loading the marketplace…", lambda: client.marketplace(**query))

    def price(s: MarketServer) -> Decimal | None:
        p = s.on_demand_price(currency)
        return None if p is None else p / divisor

    chosen: list[MarketServer] = []
    for s in listing.servers:
        p = price(s)
        if p is None and currency not in s.allowed_coins:
            continue
        if (
            gpu
            and gpu.lower()
            not in (" ".join(s.gpu_array) + " " + ((s.specs.gpu or "") if s.specs else "")).lower()
        ):
            continue
        if gpus is not None and s.gpu_count < gpus:
            continue
        if vram is not None and (s.specs is None or (s.specs.gpuram or 0) < vram):
            continue
        if ram is not None and (s.specs is None or (s.specs.ram or 0) < ram):
            continue
        if limit_price is not None and (p is None or p > limit_price):
            continue
        if country and (s.country or "").upper() != country.upper():
            continue
        if min_reliability is not None and (s.reliability or 0) < min_reliability:
            continue
        if available_only and s.rented:
            continue
        chosen.append(s)
    keys: dict[SortKey, Callable[[MarketServer], Any]] = {
        SortKey.price: lambda s: (price(s) is None, price(s) or 0, s.id),
        SortKey.gpus: lambda s: (-s.gpu_count, s.id),
        SortKey.vram: lambda s: (-((s.specs.gpuram or 0) if s.specs else 0), s.id),
        SortKey.reliability: lambda s: (-(s.reliability or 0), s.id),
    }
    chosen.sort(key=keys[sort])
    if limit is not None:
        chosen = chosen[: max(0, limit)]
    if json:
        emit_json(chosen)
        return
    if not chosen:  # a search that finds nothing says so, and a script can tell from the status
        fail("no servers match (try fewer filters, or `openclore market` for all)")
    unit = "hour" if per_hour else "day"
    digits = 4 if per_hour else 10
    rows: list[list[str]] = []
    for s in chosen:
        spot = s.spot_price(currency)
        specs = s.specs
        rows.append(
            [
                str(s.id),
                f"{s.gpu_count}x {short_gpu(s.gpu_name)}" if s.gpu_count else (s.gpu_name or "-"),
                f"{specs.gpuram:g} GB" if specs and specs.gpuram else "-",
                (specs.cpus or "-") if specs else "-",
                f"{specs.ram:.0f} GB" if specs and specs.ram else "-",
                s.country or "-",
                f"{s.reliability:.3f}" if s.reliability is not None else "-",
                fmt(price(s), digits),
                fmt(None if spot is None else spot / divisor, digits),
                "yes" if s.rented else "",
            ]
        )
    matched = listing.total if listing.total is not None else len(listing.servers)
    print_table(
        f"{len(chosen)} of {matched} servers, {currency} per {unit}",
        MARKET_COLUMNS,
        rows,
    )


MARKET_COLUMNS = [
    Column("id", 0, "right"),
    Column("gpu", 0, fold=True),
    Column("vram", 3, "right"),
    Column("cpu", 8, "right"),
    Column("ram", 6, "right"),
    Column("cc", 5),
    Column("rel.", 7, "right"),
    Column("on-demand", 0, "right"),
    Column("spot min", 2, "right"),
    Column("rented", 1),
]


def short_gpu(name: str) -> str:
    """``NVIDIA GeForce RTX 3090`` → ``RTX 3090`` (tables only; --json keeps the full name)."""
    return name.replace("NVIDIA ", "").replace("GeForce ", "")


# ----------------------------------------------------------------------------- rent


def parse_ports(values: list[str]) -> dict[str, str]:
    ports: dict[str, str] = {}
    for item in values:
        port, _, proto = item.partition(":")
        proto = (proto or "tcp").lower()
        if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in ("tcp", "http"):
            fail(f"--port {item!r}: expected PORT or PORT:tcp or PORT:http")
        ports[str(int(port))] = proto
    return ports


def parse_env(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def order_ready(order: Order, want_ssh: bool) -> bool:
    """Ready means reachable: the container runs, and with an SSH port, an SSH server answers
    on it from here (through the market's gateway, or on the host directly)."""
    if order.running is False:
        return False
    if want_ssh:
        if order.ssh_command() is None or order.state not in (None, "running"):
            return False
        if order.simulated:  # a demo server: nothing listens, the published port is all there is
            return True
        assert order.host is not None and order.ssh_port is not None
        return ssh_banner(order.host, order.ssh_port) is not None
    if order.state is not None:
        return order.state == "running"
    return bool(order.running) or bool(order.tcp_ports) or order.http_port is not None


def describe(order: Order) -> str:
    if order.expired:
        return "ended"
    if order.state:
        return order.state
    if order.running is not None:
        return "running" if order.running else "waiting"
    return "ports published" if order.tcp_ports else "starting"


def waiting_for(order: Order, want_ssh: bool) -> str:
    """What ``--wait`` waits for now, in words."""
    if order.running is False or order.state not in (None, "running"):
        return f"waiting for the host to start it ({describe(order)})"
    if want_ssh and order.ssh_command() is None:
        return "running; waiting for the host to publish its SSH port"
    if want_ssh:
        return f"running; waiting for SSH to answer on {order.host}:{order.ssh_port}"
    return "waiting for it to run"


def wait_for_order(
    client: Client, order: Order, want_ssh: bool, timeout: float, quiet: bool
) -> Order:
    started = time.monotonic()
    current = order
    status = (
        None
        if quiet
        else err.status(plain(f"order {order.id}: {waiting_for(order, want_ssh)}"), spinner="dots")
    )
    if status is not None:
        status.start()
    try:
        while not order_ready(current, want_ssh):
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                fail(
                    f"order {order.id} is not ready after {timeout:.0f} s "
                    f"({waiting_for(current, want_ssh)}); it keeps running: see "
                    f"`openclore orders`"
                )
            time.sleep(1.0)
            found = next(
                (o for o in client.my_orders(return_completed=True) if o.id == order.id), None
            )
            if found is None:
                fail(f"order {order.id} is gone from my_orders")
            current = found
            if current.expired:
                fail(f"order {order.id} ended before it was ready")
            if status is not None:
                waited = time.monotonic() - started
                what = waiting_for(current, want_ssh)
                status.update(plain(f"order {order.id}: {what} ({waited:.0f} s)"))
    except KeyboardInterrupt:
        if status is not None:
            status.stop()
        fail(
            f"stopped waiting; order {order.id} keeps running "
            f"(`openclore orders`, `openclore cancel {order.id}`)",
            130,
        )
    finally:
        if status is not None:
            status.stop()
    return current


@client_app.command(rich_help_panel=PANEL_RENT)
def rent(
    server: Annotated[int, typer.Argument(help="Server id (see `openclore market`).")],
    image: Annotated[str, typer.Option(help="Docker image, e.g. cloreai/ubuntu20.04-jupyter.")],
    spot: Annotated[
        str | None, typer.Option(help="Bid this price per day on the spot market.")
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(help="Pay in this currency (default: bitcoin if the server takes it)."),
    ] = None,
    port: Annotated[
        list[str] | None,
        typer.Option("--port", help="PORT[:tcp|http], repeatable (default: 22:tcp)."),
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME=VALUE, repeatable.")] = None,
    ssh_key: Annotated[
        Path | None, typer.Option("--ssh-key", help="File with an SSH public key to install.")
    ] = None,
    ssh_password: Annotated[str | None, typer.Option(help="SSH password for root.")] = None,
    jupyter_token: Annotated[str | None, typer.Option(help="Jupyter token.")] = None,
    command: Annotated[str | None, typer.Option(help="Command run when the order starts.")] = None,
    required_price: Annotated[
        str | None, typer.Option(help="Refuse if the on-demand price per day is not this.")
    ] = None,
    registry_login: Annotated[
        str | None,
        typer.Option(
            envvar="OPENCLORE_REGISTRY_LOGIN",
            help="USER:TOKEN for a private image (dockerhub_auth; used for this pull only).",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until it runs, then print the SSH command.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 600.0,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Rent SERVER: on-demand, or a spot bid with --spot PRICE."""
    c = ctx(json, profile, url, api_key)
    ports = parse_ports(port or ["22:tcp"])
    variables = parse_env(env or [])
    bid = parse_decimal(spot, "--spot") if spot is not None else None
    required = parse_decimal(required_price, "--required-price") if required_price else None
    key_text = None
    if ssh_key is not None:
        try:
            key_text = ssh_key.expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            fail(f"--ssh-key: cannot read {ssh_key}: {exc.strerror or exc}")
    with handled(c.target), c.client() as client:
        coin = currency
        if coin is None:
            listing = call("loading the marketplace…", client.marketplace)
            found = next((s for s in listing.servers if s.id == server), None)
            coin = "bitcoin"
            if found is not None and found.allowed_coins and "bitcoin" not in found.allowed_coins:
                coin = found.allowed_coins[0]
        order = call(
            f"renting server {server}…",
            lambda: client.create_order(
                server,
                image,
                type="spot" if bid is not None else "on-demand",
                currency=coin or "bitcoin",
                spot_price=bid,
                ports=ports,
                env=variables or None,
                jupyter_token=jupyter_token,
                ssh_key=key_text,
                ssh_password=ssh_password,
                command=command,
                required_price=required,
                dockerhub_auth=registry_login,
            ),
        )
        if not json:
            kind = f"spot bid {fmt(order.price)}" if order.spot else f"on-demand {fmt(order.price)}"
            out.print(
                f"order {order.id}: {kind} {order.currency}/day on server {order.si}, "
                f"image {order.image}"
            )
        if wait:
            order = wait_for_order(client, order, "22" in ports, timeout, quiet=json)
    if json:
        data = to_plain(order)
        if order.ssh_command():
            data["ssh_command"] = order.ssh_command()
        emit_json(data)
        return
    if wait:
        out.print(f"order {order.id} is {describe(order)}")
        print_endpoints(order)


def print_endpoints(order: Order) -> None:
    ssh = order.ssh_command()
    if ssh:
        out.print(ssh)
    for container, public in sorted(order.ports.items()):
        if container != 22 and order.host:
            out.print(f"tcp {container} → {order.host}:{public}")
    if order.http_pub:
        out.print(f"http {order.http_port} → {order.http_pub}")
    elif order.http_port:
        out.print(f"http {order.http_port} → through the HTTP proxy (cluster {order.p})")


# ----------------------------------------------------------------------------- orders


@client_app.command(rich_help_panel=PANEL_RENT)
def orders(
    all: Annotated[bool, typer.Option("--all", help="Include ended orders.")] = False,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Your orders and spot bids (--json for every field, the image and ports included)."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        rows = call("loading orders…", lambda: client.my_orders(return_completed=all))
    if json:
        emit_json(rows)
        return
    now = market_now(c)
    print_table(
        f"{len(rows)} order(s)" + (" including ended" if all else ""),
        ORDER_COLUMNS,
        [
            [
                str(o.id),
                str(o.si) if o.si is not None else "-",
                o.type,
                f"{fmt(o.price)} {o.currency or ''}".rstrip(),
                fmt(o.spend),
                describe(o),
                age(o.ct, now),
                "-" if o.expired else (o.ssh_command() or ", ".join(o.tcp_ports) or "-"),
            ]
            for o in rows
        ],
    )


ORDER_COLUMNS = [
    Column("id", 0, "right"),
    Column("server", 6, "right"),
    Column("type", 5),
    Column("price/day", 1, "right"),
    Column("spent", 7, "right"),
    Column("state", 2),
    Column("age", 3),
    Column("connect", 0, fold=True),
]


@client_app.command(rich_help_panel=PANEL_RENT)
def cancel(
    order_id: Annotated[int, typer.Argument(metavar="ID", help="Order or spot offer id.")],
    issue: Annotated[
        str | None, typer.Option(help="Report a problem with the server (≤ 2048 characters).")
    ] = None,
    rating: Annotated[
        int | None,
        typer.Option(
            min=1, max=5, help="Score the server 1-5 (once per order; also for an ended order)."
        ),
    ] = None,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """End an order or spot offer (and rate the server with --rating)."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        call(
            f"cancelling order {order_id}…",
            lambda: client.cancel_order(order_id, issue, rating),
        )
    if json:
        emit_json({"id": order_id, "cancelled": True})
    else:
        out.print(f"order {order_id} cancelled" + (f", rated {rating}" if rating else ""))


@client_app.command(rich_help_panel=PANEL_RENT)
def logs(
    order_id: Annotated[int, typer.Argument(metavar="ID", help="Your order id.")],
    tail: Annotated[int, typer.Option(help="Lines from the end (at most 1000).")] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between fetches with --follow.")] = 2.0,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Your order's container output, fetched from its host (--follow keeps printing)."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        lines = call(
            f"fetching logs of order {order_id}…", lambda: client.order_logs(order_id, tail)
        )
        if json and not follow:
            emit_json({"id": order_id, "logs": lines})
            return
        for line in lines:
            print(line)
        try:
            while follow:
                time.sleep(interval)
                fresh = client.order_logs(order_id, 1000)
                for line in fresh[overlap(lines, fresh) :]:
                    print(line, flush=True)
                lines = fresh
        except KeyboardInterrupt:
            return


def overlap(before: list[str], after: list[str]) -> int:
    """How many lines at the start of ``after`` are the last lines of ``before``."""
    for size in range(min(len(before), len(after)), 0, -1):
        if before[-size:] == after[:size]:
            return size
    return 0


@client_app.command(rich_help_panel=PANEL_RENT)
def bid(
    order_id: Annotated[int, typer.Argument(metavar="ID", help="Your spot order id.")],
    price: Annotated[str, typer.Argument(help="New bid per day.")],
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Change your spot bid. Raise any time; lower once per 600 s, by one step at most."""
    c = ctx(json, profile, url, api_key)
    value = parse_decimal(price, "PRICE")
    with handled(c.target), c.client() as client:
        call(
            f"setting the bid of order {order_id}…", lambda: client.set_spot_price(order_id, value)
        )
    if json:
        emit_json({"id": order_id, "bid": value})
    else:
        out.print(f"order {order_id}: bid is now {fmt(value)} per day")


@client_app.command(rich_help_panel=PANEL_RENT)
def spot(
    server: Annotated[int, typer.Argument(help="Server id.")],
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """The spot order book of SERVER (highest bid runs)."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client(need_key=False) as client:
        book = call("loading the order book…", lambda: client.spot_marketplace(server))
    if json:
        emit_json(book)
        return
    if not book.exists or book.market is None:
        fail(f"server {server} has no spot market (unknown or not public)")
    srv = book.market.server
    mins = ", ".join(f"{fmt(v)} {k}" for k, v in srv.min_pricing.items()) or "-"
    hours = f"{srv.mrl // 3600} h" if srv.mrl is not None else "-"
    out.print(
        f"server {server}: minimum bid {mins} per day; max rental {hours}; "
        f"{'online' if srv.online else 'offline'}, {srv.visibility or '-'}"
    )
    print_table(
        f"{len(book.offers)} offer(s), highest first",
        [
            Column("offer", 0, "right"),
            Column("bid/day", 0, "right"),
            Column("currency", 1),
            Column("active", 0),
            Column("mine", 2),
        ],
        [
            [
                str(o.offer_id),
                fmt(o.bid),
                o.currency or "-",
                "yes" if o.active else "",
                "yes" if o.my else "",
            ]
            for o in sorted(book.offers, key=lambda o: (-o.bid, o.offer_id))
        ],
    )


@client_app.command(rich_help_panel=PANEL_RENT)
def fees(
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """The market's fees: percent of spend and the creation fee, per currency."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client(need_key=False) as client:
        found = call("loading fees…", client.renter_fees)
    if json:
        emit_json(found)
        return
    coins = sorted(found.creation_fees.get("on_demand", {}))
    print_table(
        "fees",
        [
            Column("currency", 0),
            Column("on-demand %", 0, "right"),
            Column("on-demand creation", 1, "right"),
            Column("spot %", 0, "right"),
            Column("spot creation", 1, "right"),
        ],
        [
            [
                coin,
                fmt_any(found.fee_percent("on_demand", coin)),
                fmt(found.creation_fees.get("on_demand", {}).get(coin)),
                fmt_any(found.fee_percent("spot", coin)),
                fmt(found.creation_fees.get("spot", {}).get(coin)),
            ]
            for coin in coins
        ],
    )


@client_app.command(rich_help_panel=PANEL_RENT)
def wallets(
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Your balances and deposit addresses."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        rows = call("loading wallets…", client.wallets)
    if json:
        emit_json(rows)
        return
    print_table(
        "wallets",
        [
            Column("currency", 0),
            Column("balance", 0, "right"),
            Column("deposit address", 1, fold=True),
            Column("withdrawal fee", 2, "right"),
        ],
        [[w.name, fmt(w.balance), w.deposit or "-", fmt(w.withdrawal_fee)] for w in rows],
    )


def _time_arg(text: str | None, what: str) -> int | None:
    """A time as unix seconds or an ISO date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{what}: unix seconds or an ISO date such as 2026-11-01 or 2026-11-01T12:00")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@client_app.command(rich_help_panel=PANEL_MONEY)
def transactions(
    currency: Annotated[str | None, typer.Option(help="Only this currency.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time (unix seconds or ISO date, UTC).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV (every entry) instead.")] = False,
    every: Annotated[
        bool,
        typer.Option(
            "--all", help="Every entry: each tick's rental charge too, not one line per day."
        ),
    ] = False,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Your ledger entries (deposits, rental spend, earnings, fees, withdrawals, refunds) with
    the balance after each; a rental's charges, billed every few seconds, as one line per order
    and day (--all: each one)."""
    c = ctx(json, profile, url, api_key)
    start, end = _time_arg(since, "--since"), _time_arg(until, "--until")
    with handled(c.target), c.client() as client:
        rows = call(
            "loading transactions…",
            lambda: client.all_transactions(currency=currency, since=start, until=end),
        )
    if json:
        emit_json(rows)
        return
    if csv:
        writer = csv_module.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            ["id", "time", "currency", "kind", "amount", "balance", "order_id", "memo", "by"]
        )
        for t in rows:
            writer.writerow(
                [
                    t.id,
                    _iso(t.time),
                    t.currency,
                    t.kind,
                    number_text(t.amount),
                    number_text(t.balance),
                    "" if t.order_id is None else t.order_id,
                    t.memo or "",
                    t.by or "",
                ]
            )
        return
    shown = [(t, True) for t in rows] if every else _daily_charges(rows)
    lines = [
        [
            _iso(t.time),
            t.currency,
            t.kind,
            number_text(t.amount),
            number_text(t.balance) if running else "",
            "" if t.order_id is None else str(t.order_id),
            t.memo or "",
        ]
        for t, running in shown
    ]
    print_table(
        "transactions" if every else "transactions (rental charges per order and day)",
        [
            Column("time", 0),
            Column("currency", 2),
            Column("kind", 0),
            Column("amount", 0, "right"),
            Column("balance", 0, "right"),
            Column("order", 1, "right"),
            Column("memo", 3, fold=True),
        ],
        lines,
    )


TICK_KINDS = ("spend", "earning", "fee")  # booked every few seconds while an order runs


def _daily_charges(rows: list[Transaction]) -> list[tuple[Transaction, bool]]:
    """Runs of one order's rental charges on one UTC day, each kind summed into one entry (the
    time of its last, and "N charges"); with whether its balance is the running balance (the
    last entry of a run: inside a run spends and fees interleave)."""
    out: list[tuple[Transaction, bool]] = []
    run: dict[str, tuple[Transaction, int]] = {}
    run_key: tuple[Any, ...] | None = None

    def close() -> None:
        entries = list(run.values())
        for i, (t, n) in enumerate(entries):
            summed = t.model_copy(update={"memo": f"{n} charges"}) if n > 1 else t
            out.append((summed, i == len(entries) - 1))
        run.clear()

    for t in rows:
        key = (t.order_id, t.currency, _iso(t.time)[:10])
        if t.kind not in TICK_KINDS:
            close()
            run_key = None
            out.append((t, True))
            continue
        if key != run_key:
            close()
            run_key = key
        held = run.get(t.kind)
        if held is None:
            run[t.kind] = (t, 1)
        else:
            first, n = held
            total = first.amount + t.amount
            run[t.kind] = (first.model_copy(update={"amount": total, "time": t.time}), n + 1)
        last_kind = t.kind
        # the run's balance is the one after its last entry: keep it on that kind's entry
        kept, n = run.pop(last_kind)
        run[last_kind] = (kept.model_copy(update={"balance": t.balance}), n)
    close()
    return out


@client_app.command(rich_help_panel=PANEL_MONEY)
def statement(
    month: Annotated[
        str | None, typer.Argument(metavar="[YYYY-MM]", help="Month (default: this month).")
    ] = None,
    currency: Annotated[str | None, typer.Option(help="Currency (default: the market's).")] = None,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="Also write it as a PDF here.")] = None,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """A month's statement: opening and closing balance, totals by kind, each order's rental,
    and every deposit, withdrawal, refund and adjustment with its reason."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        found = call("loading statement…", lambda: client.statement(month, currency))
    data = to_plain(found.model_dump(by_alias=True))
    if pdf is not None:
        from openclore.market.statement_pdf import render

        with handled(c.target):
            render(data, pdf)
    if json:
        emit_json(data)
        return
    out.print(
        f"statement {found.month} · {found.user} · {found.currency}\n"
        f"opening balance  {number_text(found.opening_balance)}"
    )
    for kind, value in found.totals.items():
        out.print(f"  {kind:<15} {number_text(value)}")
    out.print(f"closing balance  {number_text(found.closing_balance)}")
    if found.orders:
        print_table(
            "orders",
            [Column("order", 0, "right"), Column("total", 0, "right")],
            [[str(o["order_id"]), number_text(o["total"])] for o in found.orders],
        )
    if found.entries:
        print_table(
            "deposits, withdrawals, refunds, adjustments",
            [
                Column("time", 0),
                Column("kind", 0),
                Column("amount", 0, "right"),
                Column("memo", 1, fold=True),
                Column("by", 2),
            ],
            [
                [_iso(e.time), e.kind, number_text(e.amount), e.memo or "", e.by or ""]
                for e in found.entries
            ],
        )
    if pdf is not None:
        out.print(f"PDF written to {pdf}")


@client_app.command(rich_help_panel=PANEL_MONEY)
def withdraw(
    currency: Annotated[str, typer.Argument(help="Currency (bitcoin, CLORE-Blockchain, …).")],
    amount: Annotated[str, typer.Argument(help="Whole coins the address receives.")],
    address: Annotated[str, typer.Argument(help="Where to send them.")],
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Ask to withdraw: AMOUNT plus the withdrawal fee leave the wallet now; the operator pays
    out (or rejects, and the money comes back)."""
    c = ctx(json, profile, url, api_key)
    value = parse_decimal(amount, "amount")
    with handled(c.target), c.client() as client:
        w = call("requesting…", lambda: client.withdraw(currency, value, address))
    if json:
        emit_json(w)
        return
    out.print(
        f"withdrawal {w.id}: {number_text(w.amount)} {w.currency} to {w.address} "
        f"(fee {number_text(w.fee)}), {w.state}"
    )


@client_app.command(rich_help_panel=PANEL_MONEY)
def withdrawals(
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Your withdrawal requests and their state."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        rows = call("loading withdrawals…", client.withdrawals)
    if json:
        emit_json(rows)
        return
    print_table(
        "withdrawals",
        [
            Column("id", 0, "right"),
            Column("requested", 1),
            Column("currency", 0),
            Column("amount", 0, "right"),
            Column("fee", 2, "right"),
            Column("address", 1, fold=True),
            Column("state", 0),
            Column("txid / reason", 3, fold=True),
        ],
        [
            [
                str(w.id),
                _iso(w.created_at),
                w.currency,
                number_text(w.amount),
                number_text(w.fee),
                w.address,
                w.state,
                w.txid or w.reason or "",
            ]
            for w in rows
        ],
    )


@client_app.command(rich_help_panel=PANEL_RENT)
def watch(
    after: Annotated[
        int | None,
        typer.Option("--after", help="Start after this event id (default: from now on)."),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="Only this event type (repeatable), e.g. order.ended."),
    ] = None,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Print your market events as they happen (orders, servers, balance, deposits) until
    Ctrl-C; a dropped connection resumes where it stopped (openclore servers)."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        try:
            for event in client.events(after, types=types):
                if json:
                    sys.stdout.write(json_dumps(to_plain(event)) + "\n")
                    sys.stdout.flush()
                else:
                    out.print(describe_event(event), markup=False)
        except KeyboardInterrupt:
            return


def describe_event(event: Event) -> str:
    """``2026-11-27 05:40:01  #17 order.ended  order 12 on server 3: cancelled``"""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.time))
    data = event.data
    parts = []
    if data.get("order_id") is not None:
        parts.append(f"order {data['order_id']}")
    if data.get("withdrawal_id") is not None:
        parts.append(f"withdrawal {data['withdrawal_id']}")
    if "server_id" in data:
        parts.append(("on " if parts else "") + f"server {data['server_id']}")
    if "name" in data:
        parts.append(f"({data['name']})")
    subject = " ".join(parts)
    details = [
        fmt_any(data[key]) if key in ("reason", "error") else f"{key} {fmt_any(data[key])}"
        for key in (
            "reason",
            "error",
            "amount",
            "currency",
            "runway_seconds",
            "spend",
            "fee",
            "txid",
            "webhook_id",
        )
        if data.get(key) is not None
    ]
    text = subject + (": " if subject and details else "") + ", ".join(details)
    return f"{when}  #{event.id} {event.type}  {text}".rstrip()


@client_app.command(rich_help_panel=PANEL_RENT)
def ssh(
    order_id: Annotated[int, typer.Argument(metavar="ORDER", help="Order id.")],
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the ssh command instead of running it.")
    ] = False,
    user: Annotated[str, typer.Option(help="Login name.")] = "root",
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """SSH into ORDER through its published port 22."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        rows = call("loading orders…", client.my_orders)
    order = next((o for o in rows if o.id == order_id), None)
    if order is None:
        fail(f"no active order {order_id} (see `openclore orders`)")
    command = order.ssh_command(user)
    if command is None:
        fail(
            f"order {order_id} publishes no SSH port yet (tcp_ports: "
            f"{', '.join(order.tcp_ports) or 'none'}; rent with --port 22:tcp)"
        )
    argv = shlex.split(command)
    if json:
        emit_json({"id": order_id, "command": command, "argv": argv})
        return
    if print_only:
        out.print(command)
        return
    binary = shutil.which("ssh")
    if binary is None:
        fail(f"ssh is not installed; the command is: {command}")
    sys.stdout.flush()
    os.execv(binary, argv)


# ----------------------------------------------------------------------------- hosting


@client_app.command(rich_help_panel=PANEL_HOST)
def servers(
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """The servers you host."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        rows = call("loading your servers…", client.my_servers)
    if json:
        emit_json(rows)
        return
    table: list[list[str]] = []
    for s in rows:
        status = "online" if s.online else ("offline" if s.connected else "not connected")
        table.append(
            [
                str(s.id) if s.id is not None else "-",
                s.name,
                status,
                s.visibility,
                "\n".join(f"{fmt(v)} {k}" for k, v in s.pricing.items() if v) or "-",
                "\n".join(f"{fmt(v)} {k}" for k, v in s.min_spot_pricing.items() if v) or "-",
                short_gpu(s.specs.gpu or "-") if s.specs else "-",
            ]
        )
    print_table(
        f"{len(rows)} server(s)",
        [
            Column("id", 0, "right"),
            Column("name", 0, fold=True),
            Column("status", 1),
            Column("visibility", 4),
            Column("on-demand/day", 2),
            Column("spot min/day", 3),
            Column("gpu", 1),
        ],
        table,
    )
    for s in rows:
        if s.init_token:
            out.print(f"{s.name}: not connected yet, init token {s.init_token}")


@host_app.command("add")
def server_add(
    name: Annotated[str, typer.Argument(help="A name for the server.")],
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Add a server to host; prints the init token its agent registers with (openclore)."""
    c = ctx(json, profile, url, api_key)
    with handled(c.target), c.client() as client:
        added = call(f"adding server {name!r}…", lambda: client.add_server(name))
    if json:
        emit_json(added)
        return
    out.print(f"server {added.id} {name!r} added\ninit token {added.init_token}")


@host_app.command("set")
def server_set(
    name: Annotated[str, typer.Argument(help="Your server's name.")],
    price: Annotated[str | None, typer.Option(help="On-demand price per day.")] = None,
    spot: Annotated[str | None, typer.Option(help="Minimum spot bid per day.")] = None,
    mrl: Annotated[int | None, typer.Option(help="Maximum rental length, hours.")] = None,
    currency: Annotated[
        str | None, typer.Option(help="Currency of --price/--spot (default: the market's).")
    ] = None,
    available: Annotated[
        bool | None,
        typer.Option("--available/--hidden", help="List it for rent, or hide it."),
    ] = None,
    json: JsonOpt = False,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Change your server's prices, maximum rental length and availability."""
    c = ctx(json, profile, url, api_key)
    on_demand = parse_decimal(price, "--price") if price is not None else None
    minimum = parse_decimal(spot, "--spot") if spot is not None else None
    if on_demand is None and minimum is None and mrl is None and available is None:
        fail("nothing to change: give --price, --spot, --mrl, --available or --hidden")
    with handled(c.target), c.client() as client:
        call(
            f"updating {name!r}…",
            lambda: client.set_server_settings(
                name,
                availability=available,
                mrl=mrl,
                on_demand=on_demand,
                spot=minimum,
                currency=currency,
            ),
        )
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("on_demand", on_demand),
            ("spot", minimum),
            ("mrl", mrl),
            ("availability", available),
        )
        if v is not None
    }
    if json:
        emit_json({"name": name, "currency": currency, **changes})
        return
    out.print(f"{name}: " + ", ".join(f"{k} = {fmt_any(v)}" for k, v in changes.items()))
