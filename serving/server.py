"""Run the app under uvicorn: the entry point behind ``ursa serve``."""

from __future__ import annotations

import os

import torch
import uvicorn

from serving.app import create_app
from ursa.settings import Settings


def inference_threads(configured: int) -> int:
    """Torch threads for the model: as configured, else all cores but one, at least one.

    The spare core is for the event loop and decoding. Measured on 2 shared cores
    (BENCHMARKS.md): with 2 torch threads every operator waits for both, and when anything
    else runs on the machine, resnet18 drops from about 300 to under 60 images/s.
    """
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) - 1)


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
