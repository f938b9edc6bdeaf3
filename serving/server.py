"""Run the app under uvicorn: the entry point behind ``ursa serve``."""

from __future__ import annotations

import os
from typing import Any

import torch
import uvicorn
from starlette.applications import Starlette

from serving.app import create_app
from serving.protocol import shedding_protocol
from ursa.settings import Settings


def inference_threads(configured: int) -> int:
    """Torch threads for the model: as configured, else every core this process may use.

    On a quiet machine more threads serve faster (BENCHMARKS.md), so a server that has its
    machine to itself uses every core. On a machine shared with other busy processes, set
    URSA_INFERENCE_THREADS to fewer cores: torch's threads wait for each other on every
    operator, and a busy neighbour then stalls them all.
    """
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)))


def uvicorn_options(app: Starlette) -> dict[str, Any]:
    """The uvicorn options ``ursa serve`` runs an app of :func:`create_app` with."""
    settings: Settings = app.state.settings
    return {
        # Refusals under overload before a request task exists; with CORS configured they go
        # through the app, which adds the CORS headers.
        "http": "auto" if settings.cors_origins else shedding_protocol(app.state.shedding),
        # X-Forwarded-* believed from the configured proxies only (none by default).
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None,
        "server_header": False,
        "access_log": False,  # /metrics counts requests; a log line each costs the server CPU
    }


def run(settings: Settings) -> None:
    torch.set_num_threads(inference_threads(settings.inference_threads))
    app = create_app(settings)
    uvicorn.run(app, host=settings.serve_host, port=settings.serve_port, **uvicorn_options(app))
