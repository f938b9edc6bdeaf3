"""Real servers that some tests need beside the app: PostgreSQL and an MLflow tracking server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.demo import free_port
from app.processes import stop, wait_until_healthy


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            "The PostgreSQL server is not installed: `make test` installs Debian's postgresql "
            "package, or run `apt-get install -y postgresql`."
        )
    return found[-1]


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs the suite as root.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_postgres_user(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields the URI of database ``mlflow``."""
    # Under /tmp itself: pytest's own temporary folders are closed to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="ursa-pg-"))
    data, sockets = root / "pgdata", root / "pgsock"
    for d in (root, data, sockets):
        d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(d, "postgres", "postgres")
    port = free_port()
    run = _run
    run([_postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    options = f"-p {port} -k {sockets} -h 127.0.0.1"
    # -l: the server's output goes to a file, not to our pipe (which would then never close).
    log = str(root / "postgres.log")
    run(
        [
            _postgres_bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "start",
        ]
    )
    try:
        run(
            [
                "createdb" if shutil.which("createdb") else _postgres_bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "mlflow",
            ]
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        run([_postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """``mlflow server`` on a free port of 127.0.0.1; yields its tracking URI."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--workers",
        "2",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, f"{url}/health", "mlflow server", log)
        yield url
    finally:
        stop(proc)
