"""A local stand-in for torchvision's weights host (download.pytorch.org), for tests, the demo
and benchmarks on machines that cannot reach it. Point ``URSA_WEIGHTS_MIRROR`` at
:attr:`WeightsHost.base_url`.

It serves, under ``/models/``, a state dict of each architecture asked for, randomly
initialised (seeded): the right keys and shapes, none of ImageNet's knowledge.

**The hash in the name.** torchvision's weight files carry the first 8 hex digits of their
sha256 in their names (``resnet18-f37072fd.pth``) and the download is checked against them.
A file of random weights cannot have the real file's hash (finding bytes whose sha256 starts
with 8 given hex digits takes about 2^32 tries), so the stand-in names each file after its
own hash (``resnet18-<its sha256[:8]>.pth``), and :meth:`WeightsHost.named_in_torchvision`
points torchvision's weights entry at that name for the duration, in this process: the client
code runs unchanged, hash check included. Asked for torchvision's real name, the host answers
with the same bytes, which the hash check then refuses, as it would refuse a bad mirror.
``damage`` serves broken files: ``"corrupt"`` (one byte changed) or ``"truncated"`` (half the
file, then the connection closes).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import torch
import torchvision

DAMAGES = ("", "corrupt", "truncated")


def random_state_dict_bytes(arch: str, seed: int = 0) -> bytes:
    """A seeded, randomly initialised ``arch`` saved as torchvision's files are (a state dict)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


class WeightsHost:
    """An HTTP server in a background thread; a context manager that starts and stops it."""

    def __init__(
        self, archs: tuple[str, ...] = ("resnet18",), seed: int = 0, damage: str = ""
    ) -> None:
        if damage not in DAMAGES:
            raise ValueError(f"damage is '{damage}', expected one of {DAMAGES}.")
        self.archs = tuple(archs)
        self.damage = damage
        self.requests: Counter[str] = Counter()  # path -> requests so far
        self._files: dict[str, bytes] = {}  # path -> bytes
        self._published: dict[str, str] = {}  # arch -> the path named by its own hash
        for arch in self.archs:
            data = random_state_dict_bytes(arch, seed)
            stem = _torchvision_path(arch).name.split("-")[0]
            own = f"/models/{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
            self._published[arch] = own
            self._files[own] = data
            self._files[str(_torchvision_path(arch))] = data
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("WeightsHost is not running.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def file_bytes(self, arch: str) -> bytes:
        return self._files[self._published[arch]]

    def start(self) -> WeightsHost:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="ursa-weightshost", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WeightsHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def named_in_torchvision(self) -> Iterator[None]:
        """torchvision's default weights entry of each served architecture names this host's
        file (its host part stays download.pytorch.org: the mirror setting replaces it)."""
        entries = {arch: torchvision.models.get_model_weights(arch).DEFAULT for arch in self.archs}
        kept = {arch: entry.url for arch, entry in entries.items()}
        try:
            for arch, entry in entries.items():
                parts = urlsplit(entry.url)
                entry.value.url = f"{parts.scheme}://{parts.netloc}{self._published[arch]}"
            yield
        finally:
            for arch, entry in entries.items():
                entry.value.url = kept[arch]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = urlsplit(self.path).path
                host.requests[path] += 1
                data = host._files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                body = data
                if host.damage == "corrupt":
                    middle = len(data) // 2
                    body = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
                elif host.damage == "truncated":
                    body = data[: len(data) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:  # quiet: tests read requests
                pass

        return Handler


def _torchvision_path(arch: str) -> PurePosixPath:
    return PurePosixPath(urlsplit(torchvision.models.get_model_weights(arch).DEFAULT.url).path)
