"""Renters' own things (openclore, SPEC §8): ``openclore ssh-key add|list|rm|attach`` (keys
every new order's container gets; ``attach`` adds one to an older order) and ``openclore
template create|list|rm`` (what ``rent --template`` starts from), ``openclore key
create|list|show|revoke`` (scoped API keys with an expiry and a daily spend limit)."""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Annotated

import typer

from openclore.cli.commands.common import Ctx, client_command
from openclore.cli.commands.orders import parse_env, parse_ports
from openclore.cli.output import Column, age, call, emit_json, fail, out, print_table
from openclore.client import ApiKey, SshKey, Template

KEY_COLUMNS = [
    Column("id", 0, "right"),
    Column("name", 0),
    Column("type", 1),
    Column("bits", 3, "right"),
    Column("fingerprint", 2),
    Column("age", 4),
]
TEMPLATE_COLUMNS = [
    Column("id", 0, "right"),
    Column("name", 0),
    Column("image", 1),
    Column("ports", 3),
    Column("public", 2),
    Column("mine", 4),
]


def read_public_key(source: str) -> str:
    """A public key from a file, or from standard input for ``-``."""
    if source == "-":
        return sys.stdin.read().strip()
    try:
        with open(source, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror or exc}")


@client_command
def ssh_key_add(
    c: Ctx,
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="A public key file (~/.ssh/id_ed25519.pub) or -.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="What to call it (default: the file's name).")
    ] = None,
) -> None:
    """Keep an SSH public key on your account: every order you create from now on gets it."""
    text = read_public_key(source)
    label = name or ("stdin" if source == "-" else source.rsplit("/", 1)[-1])[:64]
    with c.session() as client:
        key = call("adding the key…", lambda: client.add_ssh_key(label, text))
    if c.json:
        emit_json(key)
        return
    out.print(f"key {key.id} {key.name!r}: {key.type} {key.bits} bits {key.fingerprint}")


def _key_row(k: SshKey, now: int) -> list[str]:
    return [str(k.id), k.name, k.type, str(k.bits), k.fingerprint, age(k.created_at, now)]


@client_command
def ssh_key_list(c: Ctx) -> None:
    """Your account's SSH keys."""
    with c.session() as client:
        keys = call("loading keys…", client.ssh_keys)
    if c.json:
        emit_json(keys)
        return
    now = c.now()
    print_table(f"{len(keys)} key(s)", KEY_COLUMNS, [_key_row(k, now) for k in keys])


@client_command
def ssh_key_rm(c: Ctx, key_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Remove a key from your account (orders created before keep it)."""
    with c.session() as client:
        call(f"removing key {key_id}…", lambda: client.delete_ssh_key(key_id))
    if c.json:
        emit_json({"id": key_id, "deleted": True})
    else:
        out.print(f"key {key_id} removed")


@client_command
def ssh_key_attach(
    c: Ctx,
    order_id: Annotated[int, typer.Argument(metavar="ORDER", help="Your live order.")],
    key_id: Annotated[int, typer.Argument(metavar="KEY", help="One of your keys.")],
) -> None:
    """Add a key to an order made before it: its container is made again with the key, its
    files kept."""
    with c.session() as client:
        added = call("attaching the key…", lambda: client.attach_ssh_key(order_id, key_id))
    if c.json:
        emit_json({"order_id": order_id, "key_id": key_id, "attached": added})
    else:
        out.print(f"key {key_id} {'attached to' if added else 'was already on'} order {order_id}")


@client_command
def template_create(
    c: Ctx,
    name: Annotated[str, typer.Argument(help="Its name (64 characters at most).")],
    image: Annotated[str, typer.Option(help="Docker image, e.g. pytorch/pytorch:latest.")],
    port: Annotated[
        list[str] | None, typer.Option("--port", help="PORT[:tcp|http], repeatable.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME=VALUE, repeatable.")] = None,
    command: Annotated[str | None, typer.Option(help="Command run when an order starts.")] = None,
    jupyter_token: Annotated[str | None, typer.Option(help="Jupyter token.")] = None,
    disk: Annotated[int | None, typer.Option("--disk", min=1, help="GB of disk.")] = None,
    public: Annotated[bool, typer.Option("--public", help="List it to everyone.")] = False,
    readme: Annotated[str | None, typer.Option(help="A few words on how to use it.")] = None,
) -> None:
    """Create a template that `rent --template ID` starts from."""
    ports = parse_ports(port) if port else None
    variables = parse_env(env or []) or None
    with c.session() as client:
        made = call(
            f"creating template {name!r}…",
            lambda: client.create_template(
                name,
                image,
                command=command,
                env=variables,
                ports=ports,
                jupyter_token=jupyter_token,
                disk_gb=disk,
                public=public,
                readme=readme,
            ),
        )
    if c.json:
        emit_json(made)
        return
    shown = "public" if made.public else "private"
    out.print(f"template {made.id} {made.name!r}: {made.image}, {shown}")


def _template_row(t: Template) -> list[str]:
    ports = ", ".join(f"{p}:{kind}" for p, kind in (t.ports or {}).items()) or "-"
    return [
        str(t.id),
        t.name,
        t.image,
        ports,
        "yes" if t.public else "no",
        "yes" if t.mine else "",
    ]


@client_command
def template_list(
    c: Ctx,
    q: Annotated[str | None, typer.Option("--search", "-q", help="A part of the name.")] = None,
) -> None:
    """Your templates and the public ones."""
    with c.session() as client:
        found = call("loading templates…", lambda: client.templates(q))
    if c.json:
        emit_json(found)
        return
    print_table(f"{len(found)} template(s)", TEMPLATE_COLUMNS, [_template_row(t) for t in found])


@client_command
def template_rm(c: Ctx, template_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Delete one of your templates (orders made from it keep their settings)."""
    with c.session() as client:
        call(f"deleting template {template_id}…", lambda: client.delete_template(template_id))
    if c.json:
        emit_json({"id": template_id, "deleted": True})
    else:
        out.print(f"template {template_id} deleted")


API_KEY_COLUMNS = [
    Column("id", 0, "right"),
    Column("name", 0),
    Column("prefix", 2),
    Column("scopes", 1),
    Column("expires", 3),
    Column("limit / day", 2),
    Column("spent today", 3),
]


def _coins(amounts: dict[str, Decimal] | None) -> str:
    if amounts is None:
        return "-"
    return ", ".join(f"{v.normalize():f} {c}" for c, v in sorted(amounts.items()))


def _api_key_row(k: ApiKey, now: int) -> list[str]:
    expires = (
        "-"
        if k.expires_at is None
        else ("expired" if k.expired else "in " + age(now, k.expires_at))
    )
    return [
        str(k.id),
        k.name or "",
        k.prefix,
        ",".join(k.scopes),
        expires,
        _coins(k.spend_limit),
        _coins(k.spent_today),
    ]


def parse_limit(values: list[str]) -> dict[str, str] | None:
    """``CURRENCY=AMOUNT`` pairs."""
    if not values:
        return None
    limit: dict[str, str] = {}
    for item in values:
        currency, sep, amount = item.partition("=")
        if not sep or not currency or not amount:
            fail(f"--spend-limit {item!r}: write CURRENCY=AMOUNT, e.g. bitcoin=0.001")
        limit[currency] = amount
    return limit


@client_command
def key_create(
    c: Ctx,
    scopes: Annotated[
        str,
        typer.Option(
            "--scopes", help="Comma-separated: read, rent, host, money, account (e.g. read,rent)."
        ),
    ],
    name: Annotated[str | None, typer.Option("--name", help="What to call it.")] = None,
    expires_in: Annotated[
        int | None,
        typer.Option("--expires-in", min=1, help="Seconds of market time until it stops working."),
    ] = None,
    spend_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--spend-limit",
            help="CURRENCY=AMOUNT its orders may be billed per market day (repeatable).",
        ),
    ] = None,
) -> None:
    """Make an API key that can do less than your account: for a bot or an AI agent."""
    limit = parse_limit(spend_limit or [])
    listed = [s.strip() for s in scopes.split(",") if s.strip()]
    with c.session() as client:
        made = call(
            "making the key…",
            lambda: client.create_api_key(
                listed, name=name, expires_in=expires_in, spend_limit=limit
            ),
        )
    if c.json:
        emit_json(made)
        return
    out.print(f"key {made.key.id} ({','.join(made.key.scopes)}): {made.secret}")
    out.print("this secret is shown once: keep it now")


@client_command
def key_list(c: Ctx) -> None:
    """Your account's API keys (never their secrets)."""
    with c.session() as client:
        keys = call("loading keys…", client.api_keys)
    if c.json:
        emit_json(keys)
        return
    now = c.now()
    print_table(f"{len(keys)} key(s)", API_KEY_COLUMNS, [_api_key_row(k, now) for k in keys])


@client_command
def key_show(c: Ctx) -> None:
    """The key this command runs with: its scopes, expiry, limit and today's spend."""
    with c.session() as client:
        key = call("loading the key…", client.current_api_key)
    if c.json:
        emit_json(key)
        return
    print_table("this key", API_KEY_COLUMNS, [_api_key_row(key, c.now())])


@client_command
def key_revoke(c: Ctx, key_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke an API key at once."""
    with c.session() as client:
        call(f"revoking key {key_id}…", lambda: client.revoke_api_key(key_id))
    if c.json:
        emit_json({"id": key_id, "revoked": True})
    else:
        out.print(f"key {key_id} revoked")
