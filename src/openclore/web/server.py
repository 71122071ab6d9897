"""Process entry point for uvicorn (one per worker): the API, its engine ticker and the console."""

from __future__ import annotations

from fastapi import FastAPI

from openclore.api.app import create_app
from openclore.api.transport import configure_protocol
from openclore.config import Settings
from openclore.web.app import install_console


def app_factory() -> FastAPI:
    """uvicorn ``--factory`` target: settings come from OPENCLORE_* variables."""
    settings = Settings()
    configure_protocol(settings)  # this worker's header timeout
    app = create_app(settings, background_ticker=True)
    install_console(app)
    return app
