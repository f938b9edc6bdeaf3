"""Child processes that serve HTTP: wait until one answers, stop it without leaving it behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


class ServiceDidNotStart(RuntimeError):
    pass


def wait_until_healthy(
    process: subprocess.Popen, url: str, name: str, log: Path, timeout_s: float = 120.0
) -> None:
    """Poll ``url`` until it answers 200; fail at once, naming the log, if ``process`` exits."""
    import httpx  # here: the CLI imports this module to read the stack's state, in a hurry

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ServiceDidNotStart(
                f"{name} exited with code {process.returncode} before answering {url}; see {log}."
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise ServiceDidNotStart(
                f"{name} did not answer {url} in {timeout_s:.0f} s; see {log}."
            )
        time.sleep(0.5)


def stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
