"""Health probes answered off the event loop, in a process of their own (``URSA_HEALTH_PORT``).

Under a burst the event loop is busy refusing and answering requests, and a ``/healthz``
that waits its turn there can take seconds (BENCHMARKS.md): an orchestrator's liveness probe
would then restart a server that is working as designed. A thread of the server did not
help enough: it waits for the interpreter lock behind the loop and the decode and inference
threads. So a small child process answers the probes. What it reports comes from the server's
loop itself, through a page of shared memory: the loop beats every 100 ms
(``serving.metrics.watch_event_loop``) and writes the loaded model's name and version; the
server counts as alive while the last beat is recent. A loop that has not beaten for
``STALL_S`` is stuck, not busy, and a restart is then the right answer. The child exits when
the server does.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_S = 30.0  # longer than any lag a burst causes (BENCHMARKS.md), far shorter than a hang
PAGE = 4096
# The page: a sequence number (odd while the server writes), the last beat (CLOCK_MONOTONIC,
# one clock for every process on the machine), then the model as JSON with its length.
HEADER = struct.Struct("<QdI")
MAX_MODEL_BYTES = PAGE - HEADER.size


class HealthState:
    """The server's heartbeat and loaded model, on a page the health process reads."""

    def __init__(self, page: mmap.mmap, clock: Callable[[], float] = time.monotonic) -> None:
        self.page = page
        self.clock = clock
        self._model: tuple[str, str] | None = None
        self._seq = 0

    @classmethod
    def create(cls, clock: Callable[[], float] = time.monotonic) -> tuple[HealthState, int]:
        """A fresh state and the file descriptor of its page, to hand to the health process."""
        fd = os.memfd_create("ursa-health")
        os.ftruncate(fd, PAGE)
        state = cls(mmap.mmap(fd, PAGE), clock)
        state.beat(None)
        return state, fd

    def beat(self, model: tuple[str, str] | None) -> None:
        """The loop ran now, with ``model`` (name, version) loaded, or ``None``."""
        data = json.dumps(model).encode()[:MAX_MODEL_BYTES]
        self._seq += 1  # odd: a reader retries rather than read half a write
        HEADER.pack_into(self.page, 0, self._seq, 0.0, 0)
        self.page[HEADER.size : HEADER.size + len(data)] = data
        self._seq += 1
        HEADER.pack_into(self.page, 0, self._seq, self.clock(), len(data))

    def read(self) -> tuple[float, tuple[str, str] | None]:
        """Seconds since the last beat, and the model loaded then."""
        while True:
            seq, beat, length = HEADER.unpack_from(self.page, 0)
            data = bytes(self.page[HEADER.size : HEADER.size + length])
            if seq % 2 == 0 and HEADER.unpack_from(self.page, 0)[0] == seq:
                model = json.loads(data) if length else None
                return self.clock() - beat, (tuple(model) if model else None)
            time.sleep(0.001)


def health_answer(path: str, silence_s: float, model: tuple[str, str] | None) -> tuple[int, dict]:
    """Status and JSON body for ``/healthz`` or ``/readyz``, as the main port answers them,
    from the seconds since the loop last ran and the model loaded then."""
    if silence_s > STALL_S:
        return 503, {"error": f"The event loop has not run for {silence_s:.0f} s."}
    if path == "/healthz":
        return 200, {"status": "ok", "event_loop_silence_s": round(silence_s, 3)}
    if path == "/readyz":
        if model is None:
            return 503, {"error": "No model is loaded yet."}
        return 200, {"status": "ready", "model": model[0], "version": model[1]}
    return 404, {"error": "Only /healthz and /readyz are served on this port."}


def health_server(host: str, port: int, state: HealthState) -> ThreadingHTTPServer:
    """The probes' HTTP server (not yet serving)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            status, body = health_answer(self.path.split("?")[0], *state.read())
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a probe every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class HealthProcess:
    """The child process that answers the probes; started and stopped by the server."""

    def __init__(self, host: str, port: int, startup_s: float = 30.0) -> None:
        self.state, fd = HealthState.create()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.health", host, str(port), str(fd), str(os.getpid())],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
        )
        os.close(fd)
        # The child says "listening" once bound, or exits with the reason on stderr.
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if line.strip() != b"listening":
            self.proc.wait(timeout=startup_s)
            raise RuntimeError(f"The health listener could not start on {host}:{port}.")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Answer /healthz and /readyz for ursa serve.")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("fd", type=int, help="the shared page's file descriptor")
    parser.add_argument("parent", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    state = HealthState(mmap.mmap(args.fd, PAGE, prot=mmap.PROT_READ))
    server = health_server(args.host, args.port, state)
    print("listening", flush=True)

    def follow_parent() -> None:
        while os.getppid() == args.parent:
            time.sleep(1)
        server.shutdown()

    threading.Thread(target=follow_parent, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
