"""``openclore admin user …`` and ``admin token …``: users, passwords, roles and API tokens."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from openclore.cli.admin.common import console, record
from openclore.cli.database import DatabaseOpt, with_db
from openclore.cli.output import fail

user_app = typer.Typer(help="Users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


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
    settings, db = with_db(database_url)
    now = int(time.time())
    try:
        with db.write() as conn:
            user_id = create_user(conn, name, now, settings)
            token = issue_token(conn, user_id, now)
            record(conn, "user.add", f"user:{user_id}", {"name": name}, user_id)
            record(conn, "token.issue", f"user:{user_id}", {"prefix": token[:8]}, user_id)
            if secret is not None:
                set_password(conn, user_id, secret)
                record(conn, "user.password", f"user:{user_id}", {}, user_id)
            if admin:
                set_role(conn, user_id, "admin")
                record(conn, "user.role", f"user:{user_id}", {"role": "admin"}, user_id)
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
    _, db = with_db(database_url)
    try:
        with db.write() as conn:
            uid = find_user(conn, user)
            set_password(conn, uid, secret)
            record(conn, "user.password", f"user:{uid}", {}, uid)
    except (UnknownUser, ValueError) as exc:
        fail(str(exc))
    console.print("password set")


@user_app.command("signout")
def user_signout(user: str, database_url: DatabaseOpt = None) -> None:
    """End every web console session of USER (a leaked session, a departing person)."""
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.sessions import end_user_sessions

    _, db = with_db(database_url)
    try:
        with db.write() as conn:
            uid = find_user(conn, user)
            ended = end_user_sessions(conn, uid)
            record(conn, "user.signout", f"user:{uid}", {"sessions": ended}, uid)
    except UnknownUser as exc:
        fail(str(exc))
    console.print(f"{ended} session(s) ended")


@user_app.command("role")
def user_role(user: str, role: str, database_url: DatabaseOpt = None) -> None:
    """Make USER an operator (admin) or a plain user."""
    from openclore.market.accounts import UnknownUser, find_user, set_role

    _, db = with_db(database_url)
    try:
        with db.write() as conn:
            uid = find_user(conn, user)
            set_role(conn, uid, role)
            record(conn, "user.role", f"user:{uid}", {"role": role}, uid)
    except (UnknownUser, ValueError) as exc:
        fail(str(exc))
    console.print(f"{user} is now {role}")


@token_app.command("issue")
def token_issue(user: str, database_url: DatabaseOpt = None) -> None:
    """Issue another API token for USER (id or name)."""
    from openclore.market.accounts import UnknownUser, find_user, issue_token

    _, db = with_db(database_url)
    try:
        with db.write() as conn:
            user_id = find_user(conn, user)
            token = issue_token(conn, user_id, int(time.time()))
            record(conn, "token.issue", f"user:{user_id}", {"prefix": token[:8]}, user_id)
    except UnknownUser as exc:
        fail(str(exc))
    console.print(token, highlight=False)


@token_app.command("revoke")
def token_revoke(token: str, database_url: DatabaseOpt = None) -> None:
    """Revoke an API token."""
    from openclore.market.accounts import revoke_token, token_owner

    _, db = with_db(database_url)
    with db.write() as conn:
        owner = token_owner(conn, token)
        done = revoke_token(conn, token, int(time.time()))
        if done:
            target = f"user:{owner}" if owner is not None else ""
            record(conn, "token.revoke", target, {"prefix": token[:8]}, owner)
    if not done:
        fail("no such live token")
    console.print("revoked")
