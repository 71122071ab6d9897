"""``openclore mcp``: serve the Model Context Protocol for AI agents (:mod:`openclore.mcp`)."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Annotated

import typer

from openclore.cli.commands.common import KeyOpt, ProfileOpt, UrlOpt, handled
from openclore.cli.output import fail
from openclore.cli.profiles import config_path, load_target

MISSING = (
    "the MCP server needs the official `mcp` package: pip install 'openclore[mcp]' "
    "(or pip install mcp)"
)


def mcp(
    transport: Annotated[
        str,
        typer.Option(
            "--transport",
            "-t",
            envvar="OPENCLORE_MCP_TRANSPORT",
            help="stdio (an MCP client starts this command) or http (streamable HTTP).",
        ),
    ] = "stdio",
    host: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_MCP_HOST",
            help="http: bind address. Anyone who reaches it acts with this API key.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="OPENCLORE_MCP_PORT", help="http: port.")] = 8765,
    path: Annotated[
        str, typer.Option(envvar="OPENCLORE_MCP_PATH", help="http: the endpoint's path.")
    ] = "/mcp",
    http_token: Annotated[
        str | None,
        typer.Option(
            envvar="OPENCLORE_MCP_TOKEN",
            help="http: answer only requests with 'Authorization: Bearer <this>'.",
        ),
    ] = None,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Serve the Model Context Protocol to AI agents (Claude Desktop and other MCP clients):
    search offers, rent, connect, logs, stop/start, cancel, wallet and runway, templates. The
    tools offered are those the API key's scopes allow (a read-only key gets the read tools)."""
    if transport not in ("stdio", "http"):
        fail(f"--transport: stdio or http, not {transport!r}", code=2)
    if importlib.util.find_spec("mcp") is None:
        fail(MISSING)
    target = load_target(url, api_key, profile)
    if not target.api_key:
        fail(
            "no API key: set OPENCLORE_API_KEY, pass --api-key, or add api_key to a profile "
            f"in {config_path()}"
        )
    if not path.startswith("/"):
        path = "/" + path

    from openclore.client import AsyncClient
    from openclore.mcp.server import serve

    async def run() -> None:
        async with AsyncClient(target.api_key, base_url=target.url, retry_backoff=0.25) as client:
            await serve(
                client,
                "stdio" if transport == "stdio" else "http",
                host=host,
                port=port,
                path=path,
                http_token=http_token,
            )

    with handled(target):
        try:
            asyncio.run(run())
        except KeyboardInterrupt:
            return
