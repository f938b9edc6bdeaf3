"""``ursa up``: the whole local stack on 127.0.0.1, started and stopped as one.

A Prefect server (SQLite in the data folder), the ``ursa`` process work pool with the
deployments of ``prefect.yaml``, a process worker, an MLflow tracking server (SQLite + local
artifacts) and the model server. Each runs as a child process in its own session with its log
in ``<data>/logs/``; ``stack.json`` in the data folder names them so ``ursa down`` can stop a
stack started elsewhere. A Prefect worker ignores SIGTERM for a while, so it gets SIGINT.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.processes import wait_until_healthy
from ursa.layout import Layout
from ursa.settings import Settings

BIN = Path(sys.executable).parent
POOL = "ursa"
HOST = "127.0.0.1"


class PortBusy(RuntimeError):
    pass


class StackError(RuntimeError):
    pass


@dataclass
class Ports:
    prefect: int = 4200
    mlflow: int = 5000
    serve: int = 8000


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen | None = None


def check_port_free(port: int, what: str) -> None:
    with socket.socket() as s:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            raise PortBusy(
                f"Port {port} for the {what} is already in use on {HOST}: "
                f"stop what holds it or choose another port (ursa up --help)."
            ) from None


@dataclass
class Stack:
    settings: Settings
    project_dir: Path
    ports: Ports = field(default_factory=Ports)
    services: list[Service] = field(default_factory=list)

    @property
    def urls(self) -> dict[str, str]:
        return {
            "Prefect UI": f"http://{HOST}:{self.ports.prefect}",
            "MLflow UI": f"http://{HOST}:{self.ports.mlflow}",
            "Model API": f"http://{HOST}:{self.ports.serve}/predict",
            "Upload page": f"http://{HOST}:{self.ports.serve}/",
        }

    @property
    def state_file(self) -> Path:
        return self.settings.data_dir / "stack.json"

    @property
    def client_env(self) -> dict[str, str]:
        """What a process needs to report to this stack: its Prefect, MLflow and server."""
        return {
            "PREFECT_API_URL": f"http://{HOST}:{self.ports.prefect}/api",
            "MLFLOW_TRACKING_URI": f"http://{HOST}:{self.ports.mlflow}",
            "URSA_SERVE_URL": f"http://{HOST}:{self.ports.serve}",
            "URSA_ADMIN_TOKEN": self.settings.admin_token,
        }

    def env(self) -> dict[str, str]:
        data = self.settings.data_dir
        return {
            **os.environ,
            **self.client_env,
            "PREFECT_HOME": str(data / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "URSA_DATA_DIR": str(data),
            "URSA_SERVE_HOST": HOST,
            "URSA_SERVE_PORT": str(self.ports.serve),
            "URSA_PROJECT_DIR": str(self.project_dir),
        }

    def up(self, startup_s: float = 120.0) -> dict[str, str]:
        """Start every service, deploy the flows; returns the URLs people open."""
        check_port_free(self.ports.prefect, "Prefect server")
        check_port_free(self.ports.mlflow, "MLflow tracking server")
        check_port_free(self.ports.serve, "model server")
        if not self.settings.admin_token:
            self.settings = _with_token(self.settings)
        data = self.settings.data_dir
        Layout(data).logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start(
                Service(
                    "prefect-server",
                    [
                        str(BIN / "prefect"),
                        "server",
                        "start",
                        "--host",
                        HOST,
                        "--port",
                        str(self.ports.prefect),
                    ],
                    f"http://{HOST}:{self.ports.prefect}/api/health",
                ),
                startup_s,
            )
            self._start(
                Service(
                    "mlflow",
                    [
                        str(BIN / "mlflow"),
                        "server",
                        "--host",
                        HOST,
                        "--port",
                        str(self.ports.mlflow),
                        "--backend-store-uri",
                        f"sqlite:///{data / 'mlflow.db'}",
                        "--default-artifact-root",
                        (data / "mlartifacts").as_uri(),
                        "--workers",
                        "1",
                    ],
                    f"http://{HOST}:{self.ports.mlflow}/health",
                ),
                startup_s,
            )
            self._run(
                [
                    str(BIN / "prefect"),
                    "work-pool",
                    "create",
                    POOL,
                    "--type",
                    "process",
                    "--overwrite",
                ]
            )
            self._run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"])
            self._start(
                Service(
                    "prefect-worker",
                    [str(BIN / "prefect"), "worker", "start", "--pool", POOL],
                    "",
                    stop_signal=signal.SIGINT,
                ),
                startup_s,
            )
            self._start(
                Service(
                    "model-server",
                    [sys.executable, "-m", "app.cli", "serve"],
                    f"http://{HOST}:{self.ports.serve}/healthz",
                ),
                startup_s,
            )
        except BaseException:
            self.down()
            raise
        self._write_state()
        return self.urls

    def _start(self, service: Service, startup_s: float) -> None:
        log = self.settings.layout.logs / f"{service.name}.log"
        with open(log, "ab") as out:
            service.process = subprocess.Popen(
                service.argv,
                cwd=self.project_dir,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own signals, not the terminal's Ctrl-C to the group
            )
        self.services.append(service)
        if service.health_url:
            wait_until_healthy(service.process, service.health_url, service.name, log, startup_s)

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            argv, cwd=self.project_dir, env=self.env(), capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise StackError(
                f"'{' '.join(argv[1:])}' failed with code {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def _write_state(self) -> None:
        state = {
            "urls": self.urls,
            "admin_token": self.settings.admin_token,
            "client_env": self.client_env,
            "services": [
                {"name": s.name, "pid": s.process.pid, "signal": int(s.stop_signal)}
                for s in self.services
                if s.process is not None
            ],
        }
        self.state_file.write_text(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)  # it holds the admin token

    def wait(self) -> str:
        """Block until a service exits; returns its name."""
        while True:
            for service in self.services:
                if service.process is not None and service.process.poll() is not None:
                    return service.name
            time.sleep(1.0)

    def down(self, timeout_s: float = 30.0) -> None:
        """Stop the services in reverse order of start."""
        for service in reversed(self.services):
            if service.process is not None and service.process.poll() is None:
                stop_process_group(service.process.pid, service.stop_signal, timeout_s)
        self.services.clear()
        self.state_file.unlink(missing_ok=True)


def _with_token(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, admin_token=secrets.token_urlsafe(24))


def stop_process_group(pid: int, sig: int, timeout_s: float = 30.0) -> None:
    """Signal a child's session; SIGKILL it if it has not exited within ``timeout_s``."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return False
    except ChildProcessError:  # not our child: ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_stack(data_dir: Path) -> dict | None:
    """The state ``ursa up`` wrote for this data folder while all its services still run
    (``urls``, ``client_env``, ``services``); None when no stack runs here."""
    try:
        state = json.loads((data_dir / "stack.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    services = state.get("services") or []
    if not services or not all(_alive(s["pid"]) for s in services):
        return None
    return state


def down_from_state(data_dir: Path) -> list[str]:
    """Stop a stack that ``ursa up`` started in another process; returns what was stopped."""
    state_file = data_dir / "stack.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    stopped = []
    for service in reversed(state["services"]):
        stop_process_group(service["pid"], service["signal"])
        stopped.append(service["name"])
    state_file.unlink(missing_ok=True)
    return stopped
