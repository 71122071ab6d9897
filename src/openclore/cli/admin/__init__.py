"""``openclore admin``: administer a market directly in its database (users and tokens,
money by hand, rates, withdrawals, servers, the audit log), one module per group."""

from __future__ import annotations

import typer

from openclore.cli.admin import audit, money, servers, users

admin_app = typer.Typer(help="Administer a market directly in its database.", no_args_is_help=True)
admin_app.add_typer(users.user_app, name="user")
admin_app.add_typer(users.token_app, name="token")
admin_app.add_typer(servers.server_app, name="server")
admin_app.add_typer(money.rates_app, name="rates")
admin_app.add_typer(money.withdrawals_app, name="withdrawals")
admin_app.command("deposit")(money.admin_deposit)
admin_app.command("refund")(money.admin_refund)
admin_app.command("adjust")(money.admin_adjust)
admin_app.command("audit")(audit.admin_audit)
