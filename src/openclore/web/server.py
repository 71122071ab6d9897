"""Process entry point for uvicorn (one per worker): the API's app (engine ticker, gateway, as
``api.server`` builds it) with the web console mounted on it."""

from __future__ import annotations

from fastapi import FastAPI

from openclore.api.server import app_factory as api_app_factory
from openclore.web.app import install_console


def app_factory() -> FastAPI:
    """uvicorn ``--factory`` target: settings come from OPENCLORE_* variables."""
    app = api_app_factory()
    install_console(app)
    return app
