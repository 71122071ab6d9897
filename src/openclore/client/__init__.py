"""openclore's Python SDK for any Clore-compatible market (openclore or Clore.ai), API v1.

::

    from openclore.client import Client

    with Client("API-TOKEN", base_url="http://127.0.0.1:8000") as clore:
        order = clore.create_order(6, "cloreai/ubuntu20.04-jupyter", ports={22: "tcp"})
        print(order.ssh_command())

:class:`Client` (threads) and :class:`AsyncClient` (asyncio) have one method per endpoint, return
typed models (money as :class:`~decimal.Decimal`; prices per day; order ``mrl`` in seconds, server
``mrl`` in hours), pace themselves to the API's rate limits and raise the exceptions drawn in
:mod:`openclore.client._errors` (all below :class:`CloreError`).
"""

from openclore.client._async import AsyncClient, AsyncSandbox
from openclore.client._calls import DEFAULT_BASE_URL, Amount, OrderType, pick_new_order
from openclore.client._errors import (
    AmountTooLow,
    CanLowerEvery600Seconds,
    CantRentFromYourself,
    CloreConnectionError,
    CloreError,
    CurrencyNotAllowed,
    ExceededMaxStep,
    InternalError,
    InvalidEndpoint,
    InvalidInput,
    InvalidToken,
    IssueDescriptionTooLong,
    MarketError,
    NotEnoughBalance,
    OrderDoesNotExist,
    OrderLimitReached,
    OrderLookupFailed,
    OrderNotActive,
    PriceChanged,
    RateLimited,
    ServerAlreadyRented,
    ServerDoesNotExist,
    ServerLimitReached,
    ServerNameTaken,
    ServerOffline,
    TooLowPrice,
    UnexpectedResponse,
    YouAlreadyHaveSpotOrder,
    YouDontOwnThisOrder,
    error_for,
)
from openclore.client._exactjson import dumps as json_dumps
from openclore.client._exactjson import loads as json_loads
from openclore.client._models import (
    AddedServer,
    BackgroundJob,
    CoinMap,
    CreateOrderResponse,
    Marketplace,
    MarketplaceResponse,
    MarketPrice,
    MarketServer,
    MyOrdersResponse,
    MyServer,
    MyServersResponse,
    Net,
    Order,
    Rating,
    ServerConfig,
    ServerConfigResponse,
    Specs,
    SpotMarket,
    SpotMarketplace,
    SpotMarketplaceResponse,
    SpotOffer,
    SpotServer,
    Wallet,
    WalletsResponse,
)
from openclore.client._pacing import NoPacing, Pacer
from openclore.client._sync import Client, Sandbox

__all__ = [
    "DEFAULT_BASE_URL",
    "AddedServer",
    "Amount",
    "AmountTooLow",
    "AsyncClient",
    "AsyncSandbox",
    "BackgroundJob",
    "CanLowerEvery600Seconds",
    "CantRentFromYourself",
    "Client",
    "CloreConnectionError",
    "CloreError",
    "CoinMap",
    "CreateOrderResponse",
    "CurrencyNotAllowed",
    "ExceededMaxStep",
    "InternalError",
    "InvalidEndpoint",
    "InvalidInput",
    "InvalidToken",
    "IssueDescriptionTooLong",
    "MarketError",
    "MarketPrice",
    "MarketServer",
    "Marketplace",
    "MarketplaceResponse",
    "MyOrdersResponse",
    "MyServer",
    "MyServersResponse",
    "Net",
    "NoPacing",
    "NotEnoughBalance",
    "Order",
    "OrderDoesNotExist",
    "OrderLimitReached",
    "OrderLookupFailed",
    "OrderNotActive",
    "OrderType",
    "Pacer",
    "PriceChanged",
    "RateLimited",
    "Rating",
    "Sandbox",
    "ServerAlreadyRented",
    "ServerConfig",
    "ServerConfigResponse",
    "ServerDoesNotExist",
    "ServerLimitReached",
    "ServerNameTaken",
    "ServerOffline",
    "Specs",
    "SpotMarket",
    "SpotMarketplace",
    "SpotMarketplaceResponse",
    "SpotOffer",
    "SpotServer",
    "TooLowPrice",
    "UnexpectedResponse",
    "Wallet",
    "WalletsResponse",
    "YouAlreadyHaveSpotOrder",
    "YouDontOwnThisOrder",
    "error_for",
    "json_dumps",
    "json_loads",
    "pick_new_order",
]
