"""Run the app under uvicorn: the entry point behind ``ursa serve``."""

from __future__ import annotations

import uvicorn

from serving.app import create_app
from ursa.settings import Settings


def run(settings: Settings) -> None:
    uvicorn.run(
        create_app(settings),
        host=settings.serve_host,
        port=settings.serve_port,
        proxy_headers=False,  # no trusted proxy in front by default
        server_header=False,
    )
