"""What the ``openclore admin`` commands share: who runs them (for the audit log and the
ledger), the ``--by`` and ``--reason`` options, amounts as typed."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

from openclore.cli.output import fail, terminal

console = terminal()


def who_runs() -> tuple[str, str]:
    """Who runs an admin command, and from where (for the audit log)."""
    import getpass
    import socket

    try:
        login = getpass.getuser()
    except Exception:
        login = "unknown"
    return f"admin:{login}", f"cli@{socket.gethostname()}"


def admin_actor() -> Any:
    """The operator running this command, as the use cases record them."""
    from openclore.market import audit

    actor, source = who_runs()
    return audit.Actor(actor, None, source)


def record(
    conn: Any,
    action: str,
    target: str,
    detail: dict[str, Any],
    user_id: int | None,
    by: str | None = None,
) -> None:
    from openclore.market import audit

    actor, source = who_runs()
    if by:
        actor = f"admin:{by[:64]}"
    audit.record(conn, actor, audit.ADMIN + action, target, detail, source, user_id=user_id)


def operator(by: str | None) -> str:
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


ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (required; the user sees it in the statement).")
]


def parse_units(amount: str, *, signed: bool = False) -> int:
    from openclore.domain.money import AmountError, to_units

    try:
        units = to_units(Decimal(amount))
    except (InvalidOperation, AmountError):
        fail(f"not an amount: {amount!r}")
    if units == 0 or (units < 0 and not signed):
        fail("the amount must be positive" if not signed else "the amount must not be zero")
    return units
