"""A real uvicorn server for tests, on a free port of 127.0.0.1, in a background thread."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette

from serving.server import uvicorn_options


class LiveServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1, in a background thread."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        # As ``ursa serve`` runs it: the same protocol and options.
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options(app))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)
