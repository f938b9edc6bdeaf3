"""Run the app under uvicorn: the entry point behind ``ursa serve``."""

from __future__ import annotations

import os

import torch
import uvicorn

from serving.app import create_app
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


def run(settings: Settings) -> None:
    torch.set_num_threads(inference_threads(settings.inference_threads))
    uvicorn.run(
        create_app(settings),
        host=settings.serve_host,
        port=settings.serve_port,
        proxy_headers=False,  # no trusted proxy in front by default
        server_header=False,
        access_log=False,  # /metrics counts requests; a log line each costs the server CPU
    )
