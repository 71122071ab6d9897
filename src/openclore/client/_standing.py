"""The SDK's calls for standing orders (openclore, SPEC §8): what each sends and how its answer
is read, shared by the synchronous and the asynchronous client (as :mod:`._calls`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openclore.client._calls import Amount, ApiCall, OrderType, _keyed, decimal, order_fields
from openclore.client._models import StandingOrder, StandingOrderResponse, StandingOrdersResponse


def create_standing_order(
    max_price_per_day: Amount,
    image: str | None = None,
    *,
    query: Mapping[str, str | int | float | bool] | None = None,
    currency: str = "bitcoin",
    gpu_count: int | None = None,
    type: OrderType = "on-demand",
    count: int = 1,
    expires_at: int | None = None,
    template_id: int | None = None,
    ports: Mapping[int, str] | Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    jupyter_token: str | None = None,
    ssh_key: str | None = None,
    ssh_password: str | None = None,
    command: str | None = None,
    disk_gb: int | None = None,
) -> ApiCall[StandingOrder]:
    if type not in ("on-demand", "spot"):
        raise ValueError("type must be 'on-demand' or 'spot'")
    if image is None and template_id is None:
        raise ValueError("a standing order needs an image, or a template_id to take it from")
    body: dict[str, Any] = {
        "query": dict(query or {}),
        "max_price_per_day": decimal(max_price_per_day, "max_price_per_day"),
        "currency": currency,
        "type": type,
        "count": int(count),
    }
    body.update(
        order_fields(
            image,
            template_id,
            ports,
            env,
            jupyter_token=jupyter_token,
            ssh_key=ssh_key,
            ssh_password=ssh_password,
            command=command,
        )
    )
    if gpu_count is not None:
        body["gpu_count"] = int(gpu_count)
    if expires_at is not None:
        body["expires_at"] = int(expires_at)
    if disk_gb is not None:
        body["disk_gb"] = int(disk_gb)
    parse = lambda b: StandingOrderResponse.model_validate(b).standing_order  # noqa: E731
    return _keyed("/v1/create_standing_order", parse, body)


def standing_orders() -> ApiCall[list[StandingOrder]]:
    return ApiCall(
        "GET",
        "/v1/standing_orders",
        lambda b: StandingOrdersResponse.model_validate(b).standing_orders,
    )


def cancel_standing_order(standing_order_id: int) -> ApiCall[StandingOrder]:
    parse = lambda b: StandingOrderResponse.model_validate(b).standing_order  # noqa: E731
    return _keyed("/v1/cancel_standing_order", parse, {"id": int(standing_order_id)})
