"""``openclore`` commands that drive a Clore-compatible market over its API (openclore or Clore.ai).

One module per group: :mod:`.market` (what is for rent), :mod:`.orders` (renting), :mod:`.keeping`
(stop, start, restart, reset, extend, volumes), :mod:`.account` (SSH keys, templates),
:mod:`.standing` (standing orders),
:mod:`.money`, :mod:`.events`, :mod:`.servers`
(hosting); what they share (the ``--json``/``--profile``/
``--url``/``--api-key`` options, the error handling) is in :mod:`.common`, where the commands go
in :mod:`openclore.cli.profiles`, tables and formatting in :mod:`openclore.cli.output`.

The commands are registered here, in the order ``openclore --help`` lists them.
"""

from __future__ import annotations

import typer

from openclore.cli.commands import (
    account,
    events,
    keeping,
    market,
    money,
    orders,
    servers,
    standing,
)
from openclore.cli.commands.common import PANEL_HOST, PANEL_MONEY, PANEL_RENT

client_app = typer.Typer(no_args_is_help=True)
host_app = typer.Typer(
    help="Servers you host: add one, change its prices and availability.", no_args_is_help=True
)
client_app.add_typer(host_app, name="server", rich_help_panel=PANEL_HOST)
volume_app = typer.Typer(
    help="Your volumes: storage on one server that outlives every order (openclore).",
    no_args_is_help=True,
)
client_app.add_typer(volume_app, name="volume", rich_help_panel=PANEL_RENT)
ssh_key_app = typer.Typer(
    help="SSH keys on your account: every new order gets them (openclore).", no_args_is_help=True
)
client_app.add_typer(ssh_key_app, name="ssh-key", rich_help_panel=PANEL_RENT)
template_app = typer.Typer(
    help="Templates: an image and its settings that `rent --template` starts from (openclore).",
    no_args_is_help=True,
)
client_app.add_typer(template_app, name="template", rich_help_panel=PANEL_RENT)
key_app = typer.Typer(
    help="API keys with scopes, an expiry and a daily spend limit, for bots and agents.",
    no_args_is_help=True,
)
client_app.add_typer(key_app, name="key", rich_help_panel=PANEL_MONEY)
standing_app = typer.Typer(
    help="Standing orders: the market rents matching servers for you as soon as they appear, "
    "earlier standing orders first (openclore).",
    no_args_is_help=True,
)
client_app.add_typer(standing_app, name="standing", rich_help_panel=PANEL_RENT)

for panel, command in (
    (PANEL_RENT, market.market),
    (PANEL_RENT, orders.rent),
    (PANEL_RENT, orders.orders),
    (PANEL_RENT, orders.cancel),
    (PANEL_RENT, keeping.stop),
    (PANEL_RENT, keeping.start),
    (PANEL_RENT, keeping.restart),
    (PANEL_RENT, keeping.reset),
    (PANEL_RENT, keeping.extend),
    (PANEL_RENT, orders.logs),
    (PANEL_RENT, orders.bid),
    (PANEL_RENT, market.spot),
    (PANEL_RENT, market.fees),
    (PANEL_RENT, money.wallets),
    (PANEL_MONEY, money.transactions),
    (PANEL_MONEY, money.statement),
    (PANEL_MONEY, money.withdraw),
    (PANEL_MONEY, money.withdrawals),
    (PANEL_RENT, events.watch),
    (PANEL_RENT, orders.ssh),
    (PANEL_HOST, servers.servers),
):
    client_app.command(rich_help_panel=panel)(command)
host_app.command("add")(servers.server_add)
host_app.command("set")(servers.server_set)
volume_app.command("create")(keeping.volume_create)
volume_app.command("list")(keeping.volume_list)
volume_app.command("delete")(keeping.volume_delete)
ssh_key_app.command("add")(account.ssh_key_add)
ssh_key_app.command("list")(account.ssh_key_list)
ssh_key_app.command("rm")(account.ssh_key_rm)
ssh_key_app.command("attach")(account.ssh_key_attach)
template_app.command("create")(account.template_create)
template_app.command("list")(account.template_list)
template_app.command("rm")(account.template_rm)
key_app.command("create")(account.key_create)
key_app.command("list")(account.key_list)
key_app.command("show")(account.key_show)
key_app.command("revoke")(account.key_revoke)
standing_app.command("place")(standing.standing_place)
standing_app.command("list")(standing.standing_list)
standing_app.command("cancel")(standing.standing_cancel)
