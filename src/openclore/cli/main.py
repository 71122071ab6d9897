"""The ``openclore`` command: serve the market and administer it."""

from __future__ import annotations

import json
import os
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from openclore.agent.cli import agent as agent_command
from openclore.cli.client_commands import client_app, fail
from openclore.cli.output import terminal
from openclore.cli.sandbox import sandbox_app
from openclore.config import Settings

app = typer.Typer(
    help="openclore: a self-hostable GPU-rental marketplace speaking the Clore.ai API v1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
admin_app = typer.Typer(help="Administer a market directly in its database.", no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
server_app = typer.Typer(help="Hosts' servers.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
rates_app = typer.Typer(
    help="Exchange rates (USD per coin) for USD prices and autoprice.", no_args_is_help=True
)
withdrawals_app = typer.Typer(
    help="Withdrawal requests: list, approve (paid out), reject (money back).",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")
app.add_typer(db_app, name="db")
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(token_app, name="token")
admin_app.add_typer(server_app, name="server")
admin_app.add_typer(rates_app, name="rates")
admin_app.add_typer(withdrawals_app, name="withdrawals")
app.command("agent")(agent_command)
app.add_typer(client_app)
app.add_typer(sandbox_app, name="sandbox")

console = terminal()
err = terminal(stderr=True)
DEMO_DATABASE = "openclore-demo.sqlite"

DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", envvar="OPENCLORE_DATABASE_URL", help="SQLAlchemy database URL"),
]


def safe_url(url: str) -> str:
    """A database URL as it may be printed: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<the configured database URL>"


def database_problem(url: str, exc: BaseException) -> str:
    """One readable line about a database that cannot be used (never its password)."""
    from sqlalchemy.engine import make_url

    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    line = lines[0] if lines else type(cause).__name__
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        line = line.replace(str(password), "***")
    return f"cannot use database {safe_url(url)}: {line}"


def _open_database(settings: Settings) -> Any:
    """The market's database, migrated; a clean error (no traceback) when it is unusable."""
    from openclore.store.db import Database

    try:
        db = Database(settings.database_url)
        db.create_all()
    except Exception as exc:
        fail(database_problem(settings.database_url, exc))
    return db


def _settings(database_url: str | None = None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if database_url:
        values["database_url"] = database_url
    try:
        return Settings(**values)
    except ValueError as exc:
        fail(f"invalid settings: {exc}")
        raise


def _admin() -> tuple[str, str]:
    """Who runs an admin command, and from where (for the audit log)."""
    import getpass
    import socket

    try:
        login = getpass.getuser()
    except Exception:
        login = "unknown"
    return f"admin:{login}", f"cli@{socket.gethostname()}"


def _admin_actor() -> Any:
    """The operator running this command, as the use cases record them."""
    from openclore.market import audit

    actor, source = _admin()
    return audit.Actor(actor, None, source)


def _audit(
    conn: Any,
    action: str,
    target: str,
    detail: dict[str, Any],
    user_id: int | None,
    by: str | None = None,
) -> None:
    from openclore.market import audit

    actor, source = _admin()
    if by:
        actor = f"admin:{by[:64]}"
    audit.record(conn, actor, audit.ADMIN + action, target, detail, source, user_id=user_id)


def _settings_help() -> str:
    lines = ["Settings (environment variables; every one also reads from the environment):\n"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)  # a factory's value, not its marker
        shown = json.dumps(default, default=str) if default is not None else "none"
        lines.append(f"OPENCLORE_{name.upper()}: {field.description} (default {shown})")
    return "\n\n".join(lines)


@app.command(epilog=_settings_help())
def serve(
    host: Annotated[str | None, typer.Option(envvar="OPENCLORE_HOST", help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(envvar="OPENCLORE_PORT", help="Port")] = None,
    workers: Annotated[
        int | None, typer.Option(envvar="OPENCLORE_WORKERS", help="Worker processes")
    ] = None,
    database_url: DatabaseOpt = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help=f"Serve the demo world: a fresh ./{DEMO_DATABASE} every start, unless "
            "--database-url points at an existing database (seeded on first use).",
        ),
    ] = False,
) -> None:
    """Run the API server (migrates the database first)."""
    import uvicorn

    from openclore.api.request_ids import log_config
    from openclore.api.transport import server_options
    from openclore.market.demo import is_demo_world, is_seeded, seed

    if demo and not database_url:
        for suffix in ("", "-wal", "-shm"):
            Path(DEMO_DATABASE + suffix).unlink(missing_ok=True)
        database_url = f"sqlite:///{DEMO_DATABASE}"
    settings = _settings(database_url, host=host, port=port, workers=workers, demo=demo or None)
    problem = settings.address_secret_problem()
    if problem is not None:
        fail(problem)
    db = _open_database(settings)
    if settings.demo:
        with db.write() as conn:
            if not is_demo_world(conn):
                fail(
                    f"{safe_url(settings.database_url)} holds a market, not a demo world: "
                    "--demo would let any user replace it with the demo's (whose tokens are "
                    "public). Leave --database-url out for a fresh demo database, or name an "
                    "empty one; to serve this market, start without --demo."
                )
            world = None if is_seeded(conn) else seed(conn, settings, int(time.time()))
        base = f"http://{settings.host}:{settings.port}"
        if world is not None:
            table = Table(title="openclore demo world", show_lines=False)
            table.add_column("user")
            table.add_column("API token (header 'auth')")
            for who, token in world.tokens.items():
                table.add_row(who, token)
            console.print(table)
        console.print(
            f"Try: curl -H 'auth: b8qwqRAL5W7YDyDJeB4XANVvKndbrrPk' {base}/v1/wallets\n"
            f"Web console: {base}/ (a token above, or jan / renter with the password "
            "openclore-demo; jan is the operator)\n"
            f"API docs: {base}/docs",
            highlight=False,
        )
    if settings.gateway:
        template = settings.gateway_url_template or "-"
        console.print(
            f"Gateway {settings.gateway_name}: agents tunnel to {settings.gateway_address}, "
            f"tcp ports {settings.gateway_port_range} on {settings.gateway_bind}, http ports at "
            f"{template.format(order='<order>', port='<port>')}",
            highlight=False,
        )
    db.dispose()
    # Workers rebuild the settings from the environment.
    os.environ["OPENCLORE_DATABASE_URL"] = settings.database_url
    os.environ["OPENCLORE_DEMO"] = "1" if settings.demo else "0"
    _metrics_dir(settings.workers)
    uvicorn.run(
        "openclore.serve:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_format, settings.log_level),
        **server_options(settings),
    )


def _metrics_dir(workers: int) -> None:
    """Several workers share their Prometheus metrics through files in PROMETHEUS_MULTIPROC_DIR:
    a fresh private folder, or the operator's own one emptied of a previous run's files. Set
    before any worker imports prometheus-client (the workers inherit the environment)."""
    import shutil
    import tempfile

    from openclore.api.metrics import MULTIPROC_ENV

    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    elif workers > 1:
        made = tempfile.mkdtemp(prefix="openclore-metrics-")
        os.environ[MULTIPROC_ENV] = made
        import atexit

        atexit.register(shutil.rmtree, made, True)


@app.command(epilog=_settings_help())
def gateway(
    name: Annotated[
        str | None, typer.Option(envvar="OPENCLORE_GATEWAY_NAME", help="Public name")
    ] = None,
    bind: Annotated[
        str | None, typer.Option(envvar="OPENCLORE_GATEWAY_BIND", help="Address to listen on")
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Run an access gateway on its own (``serve`` embeds one unless OPENCLORE_GATEWAY=0):
    agents tunnel to it, renters reach their rentals' ports through it. Of several processes
    started for one name, one serves it and the others stand by."""
    import logging

    from openclore.serve import run_gateway

    settings = _settings(database_url, gateway_name=name, gateway_bind=bind)
    db = _open_database(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console.print(
        f"gateway {settings.gateway_name}: agents on {settings.gateway_address}, tcp ports "
        f"{settings.gateway_port_range}, http port {settings.gateway_http_port or '-'}",
        highlight=False,
    )

    try:
        run_gateway(db, settings)
    finally:
        db.dispose()


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Apply all migrations."""
    settings = _settings(database_url)
    _open_database(settings)
    console.print("database is up to date")


def _with_db(database_url: str | None) -> tuple[Settings, Any]:
    from openclore.ledger import ensure_system_accounts

    settings = _settings(database_url)
    default = Settings.model_fields["database_url"].default
    if settings.database_url == default:  # no database named: say which one this is
        here, demo = Path("openclore.sqlite"), Path(DEMO_DATABASE)
        if not here.exists() and demo.exists():
            settings = _settings(f"sqlite:///{DEMO_DATABASE}")
            err.print(
                f"using the demo's database ./{DEMO_DATABASE} (OPENCLORE_DATABASE_URL or "
                "--database-url names another)"
            )
        elif not here.exists():
            err.print(
                "no database named: a new, empty ./openclore.sqlite is created "
                "(OPENCLORE_DATABASE_URL or --database-url names the market's)"
            )
    db = _open_database(settings)
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
    return settings, db


@user_app.command("add")
def user_add(
    name: str,
    password: Annotated[
        bool,
        typer.Option(
            "--password",
            help="Ask for a password for the web console (or read OPENCLORE_NEW_PASSWORD).",
        ),
    ] = False,
    admin: Annotated[
        bool, typer.Option("--admin", help="An operator: the console's operator pages.")
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a user and print a first API token."""
    from sqlalchemy.exc import IntegrityError

    from openclore.market.accounts import create_user, issue_token, set_password, set_role

    secret = None
    if password:
        secret = os.environ.get("OPENCLORE_NEW_PASSWORD") or typer.prompt(
            "Password", hide_input=True, confirmation_prompt=True
        )
    settings, db = _with_db(database_url)
    now = int(time.time())
    try:
        with db.write() as conn:
            user_id = create_user(conn, name, now, settings)
            token = issue_token(conn, user_id, now)
            _audit(conn, "user.add", f"user:{user_id}", {"name": name}, user_id)
            _audit(conn, "token.issue", f"user:{user_id}", {"prefix": token[:8]}, user_id)
            if secret is not None:
                set_password(conn, user_id, secret)
                _audit(conn, "user.password", f"user:{user_id}", {}, user_id)
            if admin:
                set_role(conn, user_id, "admin")
                _audit(conn, "user.role", f"user:{user_id}", {"role": "admin"}, user_id)
    except IntegrityError:
        fail(f"a user named {name!r} exists already")
    except ValueError as exc:
        fail(str(exc))
    console.print(f"user {user_id} {name}\ntoken {token}", highlight=False)


@user_app.command("password")
def user_password(user: str, database_url: DatabaseOpt = None) -> None:
    """Set USER's web console password (asked, or read from OPENCLORE_NEW_PASSWORD)."""
    from openclore.market.accounts import UnknownUser, find_user, set_password

    secret = os.environ.get("OPENCLORE_NEW_PASSWORD") or typer.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    _, db = _with_db(database_url)
    try:
        with db.write() as conn:
            uid = find_user(conn, user)
            set_password(conn, uid, secret)
            _audit(conn, "user.password", f"user:{uid}", {}, uid)
    except (UnknownUser, ValueError) as exc:
        fail(str(exc))
    console.print("password set")


@user_app.command("signout")
def user_signout(user: str, database_url: DatabaseOpt = None) -> None:
    """End every web console session of USER (a leaked session, a departing person)."""
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.sessions import end_user_sessions

    _, db = _with_db(database_url)
    try:
        with db.write() as conn:
            uid = find_user(conn, user)
            ended = end_user_sessions(conn, uid)
            _audit(conn, "user.signout", f"user:{uid}", {"sessions": ended}, uid)
    except UnknownUser as exc:
        fail(str(exc))
    console.print(f"{ended} session(s) ended")


@user_app.command("role")
def user_role(user: str, role: str, database_url: DatabaseOpt = None) -> None:
    """Make USER an operator (admin) or a plain user."""
    from openclore.market.accounts import UnknownUser, find_user, set_role

    _, db = _with_db(database_url)
    try:
        with db.write() as conn:
            uid = find_user(conn, user)
            set_role(conn, uid, role)
            _audit(conn, "user.role", f"user:{uid}", {"role": role}, uid)
    except (UnknownUser, ValueError) as exc:
        fail(str(exc))
    console.print(f"{user} is now {role}")


@token_app.command("issue")
def token_issue(user: str, database_url: DatabaseOpt = None) -> None:
    """Issue another API token for USER (id or name)."""
    from openclore.market.accounts import UnknownUser, find_user, issue_token

    _, db = _with_db(database_url)
    try:
        with db.write() as conn:
            user_id = find_user(conn, user)
            token = issue_token(conn, user_id, int(time.time()))
            _audit(conn, "token.issue", f"user:{user_id}", {"prefix": token[:8]}, user_id)
    except UnknownUser as exc:
        fail(str(exc))
    console.print(token, highlight=False)


@token_app.command("revoke")
def token_revoke(token: str, database_url: DatabaseOpt = None) -> None:
    """Revoke an API token."""
    from openclore.market.accounts import revoke_token, token_owner

    _, db = _with_db(database_url)
    with db.write() as conn:
        owner = token_owner(conn, token)
        done = revoke_token(conn, token, int(time.time()))
        if done:
            target = f"user:{owner}" if owner is not None else ""
            _audit(conn, "token.revoke", target, {"prefix": token[:8]}, owner)
    if not done:
        fail("no such live token")
    console.print("revoked")


def _operator(by: str | None) -> str:
    """Who is acting: --by, else the login name of whoever runs the command."""
    import getpass

    if by:
        return by[:64]
    try:
        return getpass.getuser()[:64]
    except Exception:  # no login name (a container without a passwd entry)
        return "operator"


ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who does this, recorded in the ledger (default: your login)."),
]


def _units(amount: str, *, signed: bool = False) -> int:
    from openclore.domain.money import AmountError, to_units

    try:
        units = to_units(Decimal(amount))
    except (InvalidOperation, AmountError):
        fail(f"not an amount: {amount!r}")
    if units == 0 or (units < 0 and not signed):
        fail("the amount must be positive" if not signed else "the amount must not be zero")
    return units


@admin_app.command("deposit")
def admin_deposit(
    user: str,
    currency: str,
    amount: str,
    by: ByOpt = None,
    reference: Annotated[
        str | None,
        typer.Option(help="An external reference (e.g. a blockchain txid): credited once."),
    ] = None,
    memo: Annotated[str | None, typer.Option(help="A note shown in the statement.")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Credit AMOUNT whole coins of CURRENCY to USER's wallet (who did it is recorded)."""
    from openclore.domain.errors import MarketError
    from openclore.domain.money import coins_str
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.wallets import deposit

    settings, db = _with_db(database_url)
    units = _units(amount)
    try:
        with db.write() as conn:
            user_id = find_user(conn, user)
            credited = deposit(
                conn,
                user_id,
                currency,
                units,
                settings,
                int(time.time()),
                key=None if reference is None else f"ref:{reference}",
                actor=f"admin:{_operator(by)}",
                memo=memo,
            )
            if credited:
                detail = {"currency": currency, "units": units, "reference": reference}
                _audit(conn, "deposit", f"user:{user_id}", detail, user_id, by)
    except UnknownUser as exc:
        fail(str(exc))
    except MarketError as exc:
        fail(f"{exc.name} (currencies: {', '.join(settings.currencies)})")
    if not credited:
        fail(f"reference {reference!r} was credited before: nothing done")
    console.print(f"deposited {coins_str(units)} {currency}", highlight=False)


@rates_app.command("set")
def rates_set(
    rates: Annotated[
        list[str], typer.Argument(help="CURRENCY=DOLLARS, e.g. bitcoin=60000 CLORE-Blockchain=0.05")
    ],
    database_url: DatabaseOpt = None,
) -> None:
    """Store exchange rates in the database: every replica uses them at once, and servers
    priced from USD (autoprice) follow."""
    from openclore.config import parse_rates
    from openclore.domain.usd import rate_units
    from openclore.market.rates import set_rates

    settings, db = _with_db(database_url)
    try:
        parsed = parse_rates(",".join(rates))
    except ValueError as exc:
        fail(str(exc))
    try:
        with db.write() as conn:
            repriced = set_rates(
                conn,
                {c: rate_units(v) for c, v in parsed.items()},
                settings,
                int(time.time()),
            )
            detail = {c: str(v) for c, v in parsed.items()} | {"repriced": len(repriced)}
            _audit(conn, "rates.set", "rates", detail, None)
    except ValueError as exc:
        fail(str(exc))
    for currency, dollars in parsed.items():
        console.print(f"{currency} = {dollars} USD", highlight=False)
    if repriced:
        console.print(f"repriced {len(repriced)} server(s) priced from USD", highlight=False)


@rates_app.command("show")
def rates_show(database_url: DatabaseOpt = None) -> None:
    """The rates in use: stored ones, else the OPENCLORE_USD_RATES setting's."""
    from openclore.domain.usd import rate_text
    from openclore.market.rates import current_rates, stored_rates

    settings, db = _with_db(database_url)
    with db.read() as conn:
        rates = current_rates(conn, settings)
        stored = stored_rates(conn)
    if not rates:
        console.print("no exchange rates: USD prices are not shown")
    for currency, rate in sorted(rates.items()):
        source = "stored" if currency in stored else "setting"
        console.print(f"{currency} = {rate_text(rate)} USD ({source})", highlight=False)


@rates_app.command("clear")
def rates_clear(currency: str, database_url: DatabaseOpt = None) -> None:
    """Forget a stored rate (the setting's rate, if any, applies again)."""
    from openclore.market.rates import clear_rate

    settings, db = _with_db(database_url)
    with db.write() as conn:
        gone = clear_rate(conn, currency, settings, int(time.time()))
        if gone:
            _audit(conn, "rates.clear", f"rate:{currency}", {"currency": currency}, None)
    if not gone:
        fail(f"no stored rate for {currency}")
    console.print(f"cleared {currency}", highlight=False)


def _adjust(
    user: str,
    currency: str,
    amount: str,
    reason: str,
    by: str | None,
    database_url: str | None,
    *,
    refund: bool,
    order: int | None = None,
) -> None:
    from openclore.domain.errors import MarketError
    from openclore.domain.money import coins_str
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.wallets import adjust

    settings, db = _with_db(database_url)
    units = _units(amount, signed=not refund)
    try:
        with db.write() as conn:
            user_id = find_user(conn, user)
            adjust(
                conn,
                user_id,
                currency,
                units,
                settings,
                int(time.time()),
                reason=reason,
                actor=f"admin:{_operator(by)}",
                refund=refund,
                order_id=order,
            )
            detail = {"currency": currency, "units": units, "reason": reason, "order": order}
            action = "refund" if refund else "adjust"
            _audit(conn, action, f"user:{user_id}", detail, user_id, by)
    except UnknownUser as exc:
        fail(str(exc))
    except MarketError as exc:
        fail(exc.name)
    word = "refunded" if refund else "adjusted by"
    console.print(f"{word} {coins_str(units)} {currency}", highlight=False)


ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (required; the user sees it in the statement).")
]


@admin_app.command("refund")
def admin_refund(
    user: str,
    currency: str,
    amount: str,
    reason: ReasonOpt,
    order: Annotated[int | None, typer.Option(help="The order refunded, if any.")] = None,
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Refund AMOUNT to USER's wallet, with a reason shown in their statement."""
    _adjust(user, currency, amount, reason, by, database_url, refund=True, order=order)


@admin_app.command("adjust")
def admin_adjust(
    user: str,
    currency: str,
    amount: Annotated[
        str, typer.Argument(help="Signed: -0.5 takes 0.5 from the wallet (put -- before it).")
    ],
    reason: ReasonOpt,
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Correct USER's wallet by a signed AMOUNT, with a reason shown in their statement."""
    _adjust(user, currency, amount, reason, by, database_url, refund=False)


@withdrawals_app.command("list")
def withdrawals_list(
    state: Annotated[
        str | None, typer.Option(help="pending, approved or rejected (default: all).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Withdrawal requests, oldest first."""
    from openclore.market.withdrawals import STATES, all_withdrawals

    if state is not None and state not in STATES:
        fail(f"--state: one of {', '.join(STATES)}")
    _, db = _with_db(database_url)
    with db.read() as conn:
        rows = all_withdrawals(conn, state)
    if json:
        from openclore.api.wire import dumps

        sys.stdout.write(dumps(rows).decode() + "\n")
        return
    table = Table(title="withdrawals")
    # the payout address is never cut nor folded, whatever the width: it is copied to pay
    longest = max((len(w["address"]) for w in rows), default=7)
    for name in ("id", "user", "currency", "amount", "fee", "address", "state", "txid / reason"):
        if name == "address":
            table.add_column(name, no_wrap=True, min_width=longest, overflow="ignore")
        else:
            table.add_column(name, overflow="fold")
    for w in rows:
        table.add_row(
            str(w["id"]),
            str(w["user"]),
            w["currency"],
            w["amount_text"],
            w["fee_text"],
            w["address"],
            w["state"],
            w["txid"] or w["reason"] or "",
        )
    console.print(table)


def _decide(
    action: Any,
    withdrawal: int,
    database_url: str | None,
    decision: str,
    detail: dict[str, Any],
    by: str | None,
) -> None:
    from openclore.domain.errors import MarketError
    from openclore.market.withdrawals import withdrawal_owner

    _, db = _with_db(database_url)

    def run(conn: Any) -> None:
        action(conn, int(time.time()))
        owner = withdrawal_owner(conn, withdrawal)
        target = f"withdrawal:{withdrawal}"
        _audit(conn, f"withdrawal.{decision}", target, detail, owner, by)

    try:
        from openclore.store.db import run_write

        run_write(db, run)
    except MarketError as exc:
        extra = f" (it is {exc.extra['state']})" if "state" in exc.extra else ""
        fail(f"withdrawal {withdrawal}: {exc.name}{extra}")


@withdrawals_app.command("approve")
def withdrawals_approve(
    withdrawal: Annotated[int, typer.Argument(help="Withdrawal id.")],
    txid: Annotated[str, typer.Option("--txid", help="The payout's transaction id (required).")],
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Record that WITHDRAWAL was paid out with transaction TXID."""
    from openclore.market.withdrawals import approve_withdrawal

    who = f"admin:{_operator(by)}"
    _decide(
        lambda conn, now: approve_withdrawal(conn, withdrawal, txid, who, now),
        withdrawal,
        database_url,
        "approve",
        {"txid": txid},
        by,
    )
    console.print(f"withdrawal {withdrawal} approved", highlight=False)


@withdrawals_app.command("reject")
def withdrawals_reject(
    withdrawal: Annotated[int, typer.Argument(help="Withdrawal id.")],
    reason: ReasonOpt,
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Refuse WITHDRAWAL: amount and fee go back to the user's wallet."""
    from openclore.market.withdrawals import reject_withdrawal

    who = f"admin:{_operator(by)}"
    _decide(
        lambda conn, now: reject_withdrawal(conn, withdrawal, reason, who, now),
        withdrawal,
        database_url,
        "reject",
        {"reason": reason},
        by,
    )
    console.print(f"withdrawal {withdrawal} rejected; the money is back in the wallet")


@server_app.command("add")
def server_add(user: str, name: str, database_url: DatabaseOpt = None) -> None:
    """Add a server for USER and print its 48-character init_token."""
    from openclore.domain.errors import CloreError
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.servers import add_server

    settings, db = _with_db(database_url)
    try:
        with db.write() as conn:
            owner = find_user(conn, user)
            _, token = add_server(
                conn, owner, name, int(time.time()), settings, actor=_admin_actor()
            )
    except UnknownUser as exc:
        fail(str(exc))
    except CloreError as exc:
        fail(exc.message)
    console.print(token, highlight=False)


@server_app.command("remove")
def server_remove(user: str, name: str, database_url: DatabaseOpt = None) -> None:
    """Take USER's server NAME off the market: its orders end now (billed up to now)."""
    from openclore.domain.errors import CloreError
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.servers import remove_server

    _, db = _with_db(database_url)
    try:
        with db.write() as conn:
            owner = find_user(conn, user)
            ended = remove_server(conn, owner, name, int(time.time()))
            detail = {"name": name, "orders_ended": ended}
            _audit(conn, "server.remove", f"server:{name}", detail, owner)
    except UnknownUser as exc:
        fail(str(exc))
    except CloreError as exc:
        fail(exc.message)
    console.print(f"removed {name}; {ended} order(s) ended", highlight=False)


def _since(value: str) -> int:
    """``--since``: unix seconds, an ISO date/time (UTC unless it says), or an age (30m, 2h, 7d)."""
    from datetime import UTC, datetime

    text = value.strip()
    if text.isdigit():
        return int(text)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) > 1 and text[-1] in units and text[:-1].isdigit():
        return int(time.time()) - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since: not a time: {value!r} (unix seconds, 2026-11-27T05:00, or 30m/2h/7d)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


@admin_app.command("audit")
def admin_audit(
    user: Annotated[
        str | None, typer.Option("--user", help="Only entries about this user (id or name)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this time: unix seconds, ISO time, or 30m/2h/7d ago"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (newest)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show the audit log: admin commands, token changes, settings and price changes, sign-ins."""
    import json
    from datetime import UTC, datetime

    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.audit import entries

    _, db = _with_db(database_url)
    start = _since(since) if since else None
    try:
        with db.read() as conn:
            user_id = find_user(conn, user) if user else None
            found = entries(conn, user_id=user_id, since=start, limit=limit)
    except UnknownUser as exc:
        fail(str(exc))
    if as_json:
        for e in found:
            print(json.dumps(e.__dict__, ensure_ascii=False))
        return
    table = Table(title=f"audit log ({len(found)} entries)")
    for column in ("when (UTC)", "actor", "action", "target", "source", "detail"):
        table.add_column(column)
    for e in found:
        when = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        detail = json.dumps(e.detail, ensure_ascii=False, sort_keys=True)
        table.add_row(when, e.actor, e.action, e.target, e.source, detail)
    console.print(table)


def main() -> None:
    """The ``openclore`` command: a database that fails mid-command is one line, not a trace."""
    from sqlalchemy.exc import DBAPIError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except DBAPIError as exc:
        url = os.environ.get("OPENCLORE_DATABASE_URL", "")
        err.print(f"error: {database_problem(url, exc)}", markup=False, highlight=False)
        sys.exit(1)
