"""The local image host in a process of its own, so that its work does not share the
benchmark's GIL (on 2 cores: one for the host, one for the client)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHILD = """
import sys, time
from pathlib import Path
from standins.imagehost import ImageHost
with ImageHost(Path(sys.argv[1]), latency_s=float(sys.argv[2])) as host:
    print(host.base_url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
"""

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def host_process(root: Path, latency_s: float) -> Iterator[str]:
    """Yields the base URL of an ImageHost serving ``root`` from a child process."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), str(latency_s)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"The image host process did not start (said {base_url!r}).")
        yield base_url
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
