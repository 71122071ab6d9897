"""OpenAPI: every endpoint with its real request and response shapes and the error envelope.

Handlers read raw bodies (lenient JSON, exact decimals), so the document is assembled here from
the same pydantic models the handlers validate with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from openclore.api import models
from openclore.api.state import Endpoint
from openclore.market import inputs

REQUESTS: dict[str, type[BaseModel]] = {
    "server_config": inputs.ServerNameRequest,
    "set_server_settings": inputs.SetServerSettingsRequest,
    "set_spot_price": inputs.SetSpotPriceRequest,
    "cancel_order": inputs.CancelOrderRequest,
    "create_order": inputs.CreateOrderRequest,
    "add_server": inputs.AddServerRequest,
    "cancel_orders": inputs.CancelOrdersRequest,
    "create_gigaspot_orders": inputs.CreateGigaspotOrdersRequest,
    "edit_gigaspot_orders": inputs.EditGigaspotOrdersRequest,
    "advance_time": inputs.SandboxAdvanceRequest,
    "deposit": inputs.SandboxDepositRequest,
    "webhooks": inputs.CreateWebhookRequest,
    "delete_webhook": inputs.WebhookIdRequest,
    "ping_webhook": inputs.WebhookIdRequest,
    "set_alerts": inputs.SetAlertsRequest,
    "withdraw": inputs.WithdrawRequest,
    "stop_order": inputs.OrderIdRequest,
    "start_order": inputs.OrderIdRequest,
    "restart_order": inputs.OrderIdRequest,
    "reset_order": inputs.OrderIdRequest,
    "extend_order": inputs.ExtendOrderRequest,
    "create_volume": inputs.CreateVolumeRequest,
    "delete_volume": inputs.OrderIdRequest,
    "add_ssh_key": inputs.AddSshKeyRequest,
    "delete_ssh_key": inputs.OrderIdRequest,
    "attach_ssh_key": inputs.AttachSshKeyRequest,
    "create_template": inputs.CreateTemplateRequest,
    "delete_template": inputs.OrderIdRequest,
    "create_standing_order": inputs.CreateStandingOrderRequest,
    "cancel_standing_order": inputs.OrderIdRequest,
}
RESPONSES: dict[str, type[BaseModel]] = {
    "wallets": models.WalletsResponse,
    "my_servers": models.MyServersResponse,
    "server_config": models.ServerConfigResponse,
    "marketplace": models.MarketplaceResponse,
    "my_orders": models.MyOrdersResponse,
    "spot_marketplace": models.SpotMarketplaceResponse,
    "create_order": models.CreateOrderResponse,
    "add_server": models.AddServerResponse,
    "events": models.EventsResponse,
    "webhooks": models.WebhooksResponse,
    "webhook_deliveries": models.DeliveriesResponse,
    "alerts": models.AlertsResponse,
    "cancel_orders": models.CancelOrdersResponse,
    "renter_fees": models.RenterFeesResponse,
    "poh_balance": models.PohBalanceResponse,
    "get_gigaspot": models.GetGigaspotResponse,
    "create_gigaspot_orders": models.CreateGigaspotOrdersResponse,
    "edit_gigaspot_orders": models.EditGigaspotOrdersResponse,
    "transactions": models.TransactionsResponse,
    "statement": models.StatementResponse,
    "withdraw": models.WithdrawResponse,
    "withdrawals": models.WithdrawalsResponse,
    "order_logs": models.OrderLogsResponse,
}
SUMMARIES = {
    "wallets": "Wallets and balances",
    "my_servers": "Servers you offer on the market",
    "server_config": "One of your servers' configuration (GET with a JSON body, ?server_name=)",
    "marketplace": (
        "Public servers on the market (token optional); openclore extension: the query "
        "parameters filter, sort and page on the server (without them: the whole cached listing)"
    ),
    "my_orders": "Your orders (?return_completed=true adds ended ones)",
    "spot_marketplace": "The spot order book of one server (?market=SERVER_ID)",
    "set_server_settings": "Change availability, mrl (hours) and prices of your server",
    "set_spot_price": "Raise or lower your spot bid (lowering: once per 600 s, one step)",
    "cancel_order": "End an order or spot offer, optionally reporting an issue",
    "create_order": "Rent a server on demand or bid for it on the spot market (1 per 5 s)",
    "add_server": "openclore extension: add a server and get its 48-character init_token",
    "cancel_orders": "End several orders (each on its own; per-order results)",
    "renter_fees": "Platform fees and creation fees per currency (token optional)",
    "poh_balance": "Proof of Holding balance (openclore has none: always zero)",
    "get_gigaspot": "GigaSPOT snapshot: spot-rentable servers, their bids and GPU ranges",
    "create_gigaspot_orders": "Place spot bids in a batch (a JSON array), with GPU settings",
    "edit_gigaspot_orders": "Re-price GigaSPOT bids and replace their GPU settings (array)",
    "advance_time": "Sandbox: move the market clock forward (billing and expiry apply)",
    "deposit": "Sandbox: credit your own wallet",
    "reset": "Sandbox: throw the market away and restore the demo world",
    "events": "openclore extension: your events as a server-sent-event stream (resume with "
    "Last-Event-ID), or ?after=ID as JSON",
    "webhooks": "openclore extension: GET lists your webhooks; POST {url, events?} adds one "
    "(answer: WebhookCreated, with its signing secret)",
    "delete_webhook": "openclore extension: remove a webhook (its pending deliveries stop)",
    "ping_webhook": "openclore extension: send a webhook.ping event to one webhook",
    "webhook_deliveries": "openclore extension: a webhook's delivery log, newest first",
    "set_alerts": "openclore extension: balance.low when a wallet's runway drops under "
    "low_balance_seconds (null: off)",
    "alerts": "openclore extension: your alert settings",
    "transactions": "openclore extension: your ledger entries with the balance after each "
    "(cursor pages)",
    "statement": "openclore extension: a month's statement (?month=YYYY-MM&currency=)",
    "withdraw": "openclore extension: ask to withdraw; amount + fee leave the wallet at once",
    "withdrawals": "openclore extension: your withdrawal requests and their state",
    "order_logs": "openclore extension: the last lines of your order's container output, "
    "fetched from its host (?id=ORDER&tail=200)",
    "stop_order": "openclore extension: stop an order; it frees its GPUs, keeps its disk and "
    "pays storage only (answer: the order)",
    "start_order": "openclore extension: start a stopped order again on its server, or "
    "gpus_not_free (it stays stopped)",
    "restart_order": "openclore extension: restart the order's container (its files stay)",
    "reset_order": "openclore extension: recreate the order's container from its image "
    "(volumes and ports stay)",
    "extend_order": "openclore extension: {id, hours}: more time before the order ends, "
    "within the host's maximum rental length",
    "create_volume": "openclore extension: {server_id, size_gb, name, currency?}: a volume on "
    "that server, billed per GB per day until deleted",
    "volumes": "openclore extension: your volumes (?include_ended=true adds deleted ones)",
    "delete_volume": "openclore extension: {id}: delete a volume no live order mounts",
    "add_ssh_key": "openclore extension: {name, public_key}: keep an SSH public key on your "
    "account; every new order's container gets it",
    "ssh_keys": "openclore extension: your account's SSH keys",
    "delete_ssh_key": "openclore extension: {id}: remove a key (orders made before keep it)",
    "attach_ssh_key": "openclore extension: {order_id, key_id}: add an account key to a live "
    "order made before it (its container is made again, its files kept)",
    "create_template": "openclore extension: {name, image, command?, env?, ports?, "
    "jupyter_token?, disk_gb?, public?, readme?}: a template create_order can start from",
    "templates": "openclore extension: your templates and the public ones (?q= searches names)",
    "delete_template": "openclore extension: {id}: delete one of your templates",
    "create_standing_order": "openclore extension: {query, max_price_per_day, currency, "
    "gpu_count?, type?, count?, expires_at?, template_id? or create_order's fields}: rent up to "
    "count matching servers as soon as they appear, in the order standing orders were placed",
    "standing_orders": "openclore extension: your standing orders and the orders they made",
    "cancel_standing_order": "openclore extension: {id}: an open standing order fills no more",
}
QUERY: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "marketplace": [
        ("gpu", {"type": "string"}),
        ("min_gpus", {"type": "integer", "minimum": 0}),
        ("min_vram", {"type": "number", "minimum": 0}),
        ("max_price", {"type": "number", "minimum": 0}),
        ("currency", {"type": "string"}),
        ("country", {"type": "string"}),
        ("min_reliability", {"type": "number", "minimum": 0, "maximum": 1}),
        ("available", {"type": "boolean"}),
        ("sort", {"type": "string", "enum": ["id", "price", "gpus", "vram", "reliability"]}),
        ("limit", {"type": "integer", "minimum": 0, "maximum": 10000}),
        ("offset", {"type": "integer", "minimum": 0}),
    ],
    "my_orders": [("return_completed", {"type": "boolean"})],
    "order_logs": [
        ("id", {"type": "integer"}),
        ("tail", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200}),
    ],
    "spot_marketplace": [("market", {"type": "integer"})],
    "server_config": [("server_name", {"type": "string"})],
    "events": [
        ("after", {"type": "integer"}),
        ("limit", {"type": "integer", "maximum": 1000}),
        ("types", {"type": "string", "description": "comma-separated event types"}),
        ("last_event_id", {"type": "integer", "description": "as the Last-Event-ID header"}),
    ],
    "webhook_deliveries": [("id", {"type": "integer"}), ("limit", {"type": "integer"})],
    "transactions": [
        ("currency", {"type": "string"}),
        ("since", {"type": "integer", "description": "unix seconds, inclusive"}),
        ("until", {"type": "integer", "description": "unix seconds, exclusive"}),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        ("cursor", {"type": "string", "description": "next_cursor of the previous page"}),
    ],
    "statement": [
        ("month", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}),
        ("currency", {"type": "string"}),
    ],
}


def install_openapi(app: FastAPI, v1: Sequence[Endpoint], sandbox: Sequence[Endpoint]) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=[]
        )
        all_models: list[type[BaseModel]] = [
            *REQUESTS.values(),
            *RESPONSES.values(),
            inputs.PaymentDepositRequest,
            models.PaymentDepositResponse,
            models.ErrorEnvelope,
            models.Envelope,
            models.WebhookCreated,
        ]
        _, top = models_json_schema(
            [
                (m, "validation" if issubclass(m, inputs.Request) else "serialization")
                for m in all_models
            ],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {})
        components["schemas"] = top.get("$defs", {})
        components["securitySchemes"] = {"auth": {"type": "apiKey", "in": "header", "name": "auth"}}
        paths: dict[str, Any] = {}
        for prefix, endpoints in (("/v1", v1), ("/sandbox", sandbox)):
            for ep in endpoints:
                paths[f"{prefix}/{ep.name}"] = _path(ep)
        paths["/payments/deposit"] = _payments_path()
        schema["paths"] = paths
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]


IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "openclore: the same key and body within 24 h replay the first answer byte for "
    "byte without acting again (Idempotent-Replayed: true); the key with another request: code 2",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _path(ep: Endpoint) -> dict[str, Any]:
    ok = RESPONSES.get(ep.name, models.Envelope)
    error = {"application/json": {"schema": _ref(models.ErrorEnvelope)}}
    op: dict[str, Any] = {
        "summary": SUMMARIES.get(ep.name, ep.name),
        "operationId": ep.name,
        "tags": ["sandbox" if ep.sandbox else "v1"],
        "responses": {
            "200": {
                "description": "code 0 with the result, or codes 2/3/4/6 (Clore HTTP mode)",
                "content": {
                    "application/json": {
                        "schema": {"anyOf": [_ref(ok), _ref(models.ErrorEnvelope)]}
                    }
                },
            },
            "413": {"description": "code 2: request body too large", "content": error},
            "429": {"description": "code 5: over the rate limit (Retry-After)", "content": error},
            "500": {"description": "code 1: internal error", "content": error},
        },
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in QUERY.get(ep.name, [])
        ],
    }
    if not ep.readonly:
        op["parameters"].append(IDEMPOTENCY_KEY)
    op["security"] = [{"auth": []}] if ep.auth else [{"auth": []}, {}]
    request = REQUESTS.get(ep.name)
    if request is not None:
        op["requestBody"] = {
            "required": ep.name != "server_config",
            "content": {"application/json": {"schema": _ref(request)}},
        }
        return {"post": op, "get": {**op, "operationId": ep.name + "_get"}}
    return {"get": op, "post": {**op, "operationId": ep.name + "_post"}}


def _payments_path() -> dict[str, Any]:
    error = {"application/json": {"schema": _ref(models.ErrorEnvelope)}}
    return {
        "post": {
            "summary": "Payment provider webhook: credit a deposit once per external_id "
            "(signed, see docs/payments.md)",
            "operationId": "payments_deposit",
            "tags": ["payments"],
            "parameters": [
                {
                    "name": "Openclore-Signature",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": 't=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>',
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(inputs.PaymentDepositRequest)}},
            },
            "responses": {
                "200": {
                    "description": "credited (or a replay: credited false)",
                    "content": {
                        "application/json": {"schema": _ref(models.PaymentDepositResponse)}
                    },
                },
                "400": {"description": "code 2 or 6: malformed delivery", "content": error},
                "401": {"description": "code 3: bad signature or stale", "content": error},
                "404": {"description": "code 4 (off) or 6 unknown_account", "content": error},
                "409": {"description": "code 6 deposit_conflict", "content": error},
                "413": {"description": "code 2: request body too large", "content": error},
                "500": {"description": "code 1: internal error", "content": error},
            },
        }
    }
