"""The MCP server: the tools a key's scopes allow, served over stdio or streamable HTTP with the
official ``mcp`` SDK (FastMCP)."""

from __future__ import annotations

import hmac
import sys
from typing import Any, Literal

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send

from openclore.client import AsyncClient, InvalidEndpoint
from openclore.mcp.tools import KeyInfo, MarketTools, allowed_tools

Transport = Literal["stdio", "http"]

INSTRUCTIONS = """\
Rent GPU servers on an openclore market (Clore.ai API v1). Find one with search_offers, rent it
with rent_server, then poll order_status until its connection info (ssh command, ports, URL)
appears. stop_order keeps the disk and frees the GPUs (storage is billed), start_order resumes,
cancel_order ends the order for good. Money is exact decimal strings, per day, in whole coins of
the currency. wallet shows balances, burn, runway and this key's daily spend limit (the budget).
Only the tools this API key's scopes allow are offered."""

# how each tool behaves, for clients that ask before calling (MCP tool annotations)
_ANNOTATIONS: dict[str, ToolAnnotations] = {
    "search_offers": ToolAnnotations(title="Search GPU offers", readOnlyHint=True),
    "order_status": ToolAnnotations(title="Orders and connection info", readOnlyHint=True),
    "order_logs": ToolAnnotations(title="Order logs", readOnlyHint=True),
    "wallet": ToolAnnotations(title="Wallet, runway and budget", readOnlyHint=True),
    "list_templates": ToolAnnotations(title="List templates", readOnlyHint=True),
    "rent_server": ToolAnnotations(
        title="Rent a server", readOnlyHint=False, destructiveHint=False, idempotentHint=False
    ),
    "stop_order": ToolAnnotations(
        title="Stop an order", readOnlyHint=False, destructiveHint=False, idempotentHint=True
    ),
    "start_order": ToolAnnotations(
        title="Start a stopped order",
        readOnlyHint=False,
        destructiveHint=False,
        idempotentHint=True,
    ),
    "cancel_order": ToolAnnotations(
        title="Cancel an order", readOnlyHint=False, destructiveHint=True, idempotentHint=True
    ),
    "create_template": ToolAnnotations(
        title="Create a template", readOnlyHint=False, destructiveHint=False
    ),
}


async def key_info(client: AsyncClient) -> KeyInfo:
    """The key's scopes, spend limit and today's spend as the market reports them
    (``GET /v1/api_key``, the SDK's ``current_api_key``); a
    market without that endpoint (code 4) is taken to give the key every scope, once a read
    (``wallets``) shows the key is valid there. Raises ``InvalidToken`` for a key the market
    refuses."""
    try:
        return KeyInfo.from_api(await client.current_api_key())
    except InvalidEndpoint:
        await client.wallets()
        return KeyInfo.unreported()


def build_server(
    client: AsyncClient,
    key: KeyInfo,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    path: str = "/mcp",
) -> FastMCP[Any]:
    """A FastMCP server offering the tools ``key``'s scopes allow, over ``client``."""
    server: FastMCP[Any] = FastMCP(
        "openclore",
        instructions=INSTRUCTIONS,
        host=host,
        port=port,
        streamable_http_path=path,
        log_level="WARNING",
    )
    tools = MarketTools(client, key)
    for name in allowed_tools(key.scopes):
        server.add_tool(
            getattr(tools, name), name=name, annotations=_ANNOTATIONS[name], structured_output=True
        )
    return server


class BearerToken:
    """HTTP requests must carry ``Authorization: Bearer <token>`` (401 otherwise); the lifespan
    passes through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def serve(
    client: AsyncClient,
    transport: Transport,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    path: str = "/mcp",
    http_token: str | None = None,
) -> None:
    """Read the key's scopes, then serve until the client goes (stdio) or the process is
    stopped (HTTP; with ``http_token``, only to requests that carry it as a bearer token)."""
    key = await key_info(client)
    server = build_server(client, key, host=host, port=port, path=path)
    if transport == "stdio":
        await server.run_stdio_async()
        return
    import uvicorn

    app: ASGIApp = server.streamable_http_app()
    if http_token:
        app = BearerToken(app, http_token)
    print(
        f"openclore MCP server on http://{host}:{port}{path} (streamable HTTP"
        f"{', bearer token required' if http_token else ''}), "
        f"tools: {', '.join(allowed_tools(key.scopes)) or 'none'}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    await uvicorn.Server(config).serve()
