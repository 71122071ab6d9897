"""Process entry point for uvicorn (one per worker): the app with its background engine ticker."""

from __future__ import annotations

from fastapi import FastAPI

from openclore.api.app import create_app
from openclore.api.transport import configure_protocol
from openclore.config import Settings


def app_factory() -> FastAPI:
    """uvicorn ``--factory`` target: settings come from OPENCLORE_* variables."""
    settings = Settings()
    configure_protocol(settings)  # this worker's header timeout
    return create_app(settings, background_ticker=True, gateway=settings.gateway)
