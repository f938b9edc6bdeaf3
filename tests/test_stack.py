"""`ursa up` for real: Prefect server, process worker, MLflow server and model server on
loopback; the `pipeline` deployment from prefect.yaml triggered through the Prefect API with
custom parameters, exactly as the UI's "Custom run" does."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import PrefectClient

from app.cli import project_dir
from app.demo import free_port
from app.stack import PortBusy, Ports, Stack, check_port_free
from ursa.settings import Settings

CUSTOM_RUN = {"max_per_class": 10, "lrs": [0.003], "epochs": [1], "image_size": 16}


async def _run_deployment(api: str, name: str, parameters: dict, timeout_s: float = 420) -> dict:
    async with PrefectClient(api=api) as client:
        deployment = await client.read_deployment_by_name(name)
        run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        for _ in range(int(timeout_s)):
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                break
            await asyncio.sleep(1)
        schedules = deployment.schedules
        return {
            "state": run.state.type.value if run.state else None,
            "parameters": run.parameters,
            "crons": [getattr(s.schedule, "cron", None) for s in schedules],
        }


def test_up_runs_the_pipeline_deployment_through_the_real_servers(data_dir: Path) -> None:
    ports = Ports(free_port(), free_port(), free_port())
    stack = Stack(Settings.from_env(), project_dir(), ports)
    try:
        stack.up()
        api = f"http://127.0.0.1:{ports.prefect}/api"
        result = asyncio.run(_run_deployment(api, "pipeline/nightly", CUSTOM_RUN))
        assert result["state"] == "COMPLETED", (
            data_dir / "logs" / "prefect-worker.log"
        ).read_text()[-3000:]
        assert result["parameters"]["max_per_class"] == 10
        assert "0 2 * * *" in result["crons"]

        tracking = f"http://127.0.0.1:{ports.mlflow}"
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("ursa")
        sweeps = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`ursa.role` = 'sweep'"
        )
        assert len(sweeps) == 1
        children = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{sweeps[0].info.run_id}'",
        )
        assert len(children) == 1
        assert client.get_metric_history(children[0].info.run_id, "val_loss")
        champion = str(client.get_model_version_by_alias("ursa", "champion").version)

        image = next((data_dir / "images").glob("*.png")).read_bytes()
        reply = httpx.post(
            f"http://127.0.0.1:{ports.serve}/predict",
            files={"file": ("digit.png", image, "image/png")},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["version"] == champion

        # `ursa down` from another shell stops the stack by the stack.json this one wrote.
        names = [service.name for service in stack.services]
        said = ursa_down([service.process for service in stack.services])
        assert said == f"stopped: {', '.join(reversed(names))}"
        assert [s.name for s in stack.services if s.process.poll() is None] == []  # all stopped
        assert not (data_dir / "stack.json").exists()
        for port in (ports.prefect, ports.mlflow, ports.serve):
            check_port_free(port, "stopped service")  # every service let go of its port
    finally:
        stack.down()


def ursa_down(services: list[subprocess.Popen]) -> str:
    """Run `ursa down` as another shell would, reaping ``services`` as they exit (as `ursa up`
    does); return what it said, on one line (the console may wrap it)."""
    down = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "down"],
        cwd=project_dir(),
        stdout=subprocess.PIPE,
        text=True,
    )
    while down.poll() is None:
        for service in services:
            service.poll()
        time.sleep(0.1)
    assert down.returncode == 0
    return " ".join(down.stdout.read().split())


def test_a_busy_port_is_named(data_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        stack = Stack(Settings.from_env(), project_dir(), Ports(free_port(), busy, free_port()))
        with pytest.raises(PortBusy, match=f"Port {busy} for the MLflow tracking server"):
            stack.up()


def test_down_from_another_shell_stops_what_stack_json_names(data_dir: Path) -> None:
    # Two stand-in services, each in its own session as `ursa up` starts them.
    services = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(2)]
    try:
        state = {
            "services": [
                {"name": f"s{i}", "pid": p.pid, "signal": int(signal.SIGTERM)}
                for i, p in enumerate(services)
            ]
        }
        (data_dir / "stack.json").write_text(json.dumps(state))
        assert ursa_down(services) == "stopped: s1, s0"
        assert [p.pid for p in services if p.poll() is None] == []  # both stopped
        assert not (data_dir / "stack.json").exists()
    finally:
        for service in services:
            service.kill()
            service.wait()
