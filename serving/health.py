"""Health probes answered off the event loop, on a port of their own (``URSA_HEALTH_PORT``).

Under a burst the event loop is busy refusing and answering requests, and a ``/healthz``
that waits its turn there can take seconds (BENCHMARKS.md): an orchestrator's liveness probe
would then restart a server that is working as designed. This listener runs in a thread of
its own, so a probe waits for no request. What it reports comes from the loop itself: the
loop beats every 100 ms (``serving.metrics.watch_event_loop``), and the server counts as
alive while the last beat is recent. A loop that has not beaten for ``STALL_S`` is stuck,
not busy, and a restart is then the right answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_S = 30.0  # longer than any lag a burst causes (BENCHMARKS.md), far shorter than a hang


class Heartbeat:
    """When the event loop last ran, as the loop's watch task reports it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()

    def silence_s(self) -> float:
        """Seconds since the loop last beat."""
        return self.clock() - self.last


def health_answer(
    path: str, heartbeat: Heartbeat, model: Callable[[], tuple[str, str] | None]
) -> tuple[int, dict]:
    """Status and JSON body for ``/healthz`` or ``/readyz``, like the main port's.

    ``model`` returns the loaded model's name and version, or ``None`` when none is loaded.
    """
    silence = heartbeat.silence_s()
    if silence > STALL_S:
        return 503, {"error": f"The event loop has not run for {silence:.0f} s."}
    if path == "/healthz":
        return 200, {"status": "ok", "event_loop_silence_s": round(silence, 3)}
    if path == "/readyz":
        loaded = model()
        if loaded is None:
            return 503, {"error": "No model is loaded yet."}
        return 200, {"status": "ready", "model": loaded[0], "version": loaded[1]}
    return 404, {"error": "Only /healthz and /readyz are served on this port."}


class HealthListener:
    """A stdlib HTTP server in a daemon thread answering :func:`health_answer`."""

    def __init__(
        self,
        host: str,
        port: int,
        heartbeat: Heartbeat,
        model: Callable[[], tuple[str, str] | None],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                status, body = health_answer(self.path.split("?")[0], heartbeat, model)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would flood the server's log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="ursa-health", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
