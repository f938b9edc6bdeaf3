"""Hot swap over real HTTP: swaps under continuous load, alias polling, broken versions refused.

Each registered version always predicts its own class (a zero-weight head with a one-hot
bias), so an answer's top label proves which model produced it, whatever version it names.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
import mlflow
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from torch import nn

import serving.models
from serving.app import create_app
from tests.live import LiveServer
from ursa.package import log_package, resolve_models_uri
from ursa.settings import Settings

NAME = "swapper"
CLASSES = ["cat", "dog", "fox"]
TOKEN = "swap-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
META = {"arch": "tiny", "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


def always(label: str) -> nn.Module:
    """A model whose answer is ``label`` for every image."""
    head = nn.Linear(4, len(CLASSES))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(CLASSES.index(label)), 3) * 5)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head
    )


@dataclasses.dataclass
class Store:
    data_dir: Path
    tracking_uri: str
    label_of: dict[str, str]  # version -> the label that version always answers
    corrupt: str  # a version whose weights file is garbage

    def crown(self, version: str) -> None:
        MlflowClient(self.tracking_uri).set_registered_model_alias(NAME, "champion", version)

    def settings(self, **changes: object) -> Settings:
        base = Settings(
            data_dir=self.data_dir,
            tracking_uri=self.tracking_uri,
            model_name=NAME,
            admin_token=TOKEN,
            poll_interval_s=0,
            batch_max_wait_ms=2,
        )
        return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    data_dir = tmp_path_factory.mktemp("swap-data")
    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # an earlier test may have set another one globally
        experiment = mlflow.create_experiment(
            "swap", artifact_location=(data_dir / "mlartifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment):
            uris = {
                label: log_package(always(label), {**META, "classes": CLASSES}, name=label)
                for label in ("cat", "dog", "fox")
            }
            # Logged apart (versions of one logged model share its files): corrupted below.
            broken = log_package(always("fox"), {**META, "classes": CLASSES}, name="broken")
        label_of = {}
        for label, model_uri in uris.items():
            label_of[str(mlflow.register_model(model_uri, NAME).version)] = label
        # Version 4: a fox model whose weights file is then overwritten with garbage.
        corrupt = str(mlflow.register_model(broken, NAME).version)
    location = resolve_models_uri(f"models:/{NAME}/{corrupt}", uri)
    local = Path(url2pathname(urlparse(location).path)) if "://" in location else Path(location)
    (local / "data" / "model.pt2").write_bytes(b"this is not a model" * 100)
    store = Store(data_dir, uri, label_of, corrupt)
    store.crown("1")
    yield store


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def refused_polls(metrics: str) -> float:
    prefix = 'ursa_model_reloads_total{outcome="refused",trigger="poll"} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def served_version(client: httpx.Client) -> str:
    return client.get("/version").json()["version"]


def test_five_swaps_under_load_lose_no_request(store: Store) -> None:
    store.crown("1")
    body = png()
    answers: list[list[dict]] = [[] for _ in range(4)]
    failures: list[str] = []
    stop = threading.Event()

    with LiveServer(create_app(store.settings())) as server:

        def client(seen: list[dict]) -> None:
            try:
                with server.client() as http:
                    while not stop.is_set():
                        reply = http.post(
                            "/predict?k=1", content=body, headers={"content-type": "image/png"}
                        )
                        if reply.status_code != 200:
                            failures.append(f"{reply.status_code} {reply.text}")
                        else:
                            seen.append(reply.json())
            except BaseException as exc:  # a client that dies of anything fails the test
                failures.append(repr(exc))

        threads = [threading.Thread(target=client, args=(seen,)) for seen in answers]
        for thread in threads:
            thread.start()
        try:
            with server.client() as admin:
                for target in ("2", "3", "1", "3", "2"):
                    before = sum(map(len, answers))
                    store.crown(target)
                    reply = admin.post("/admin/reload", headers=AUTH)
                    assert reply.status_code == 200, reply.text
                    assert reply.json()["version"] == target and reply.json()["changed"]
                    assert served_version(admin) == target
                    # Every client gets answers from the new version before the next swap.
                    deadline = time.monotonic() + 60
                    while sum(map(len, answers)) < before + 20 or not all(
                        seen and seen[-1]["version"] == target for seen in answers
                    ):
                        assert not failures, failures[:5]
                        assert time.monotonic() < deadline, f"a client got no answer from {target}"
                        time.sleep(0.02)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[:5]
    flat = [a for seen in answers for a in seen]
    assert len(flat) >= 100
    for answer in flat:
        assert answer["predictions"][0]["label"] == store.label_of[answer["version"]], answer
    assert {a["version"] for a in flat} == {"1", "2", "3"}
    for seen in answers:  # each client sees the versions change only at the swaps
        changes = sum(
            1 for a, b in zip(seen, seen[1:], strict=False) if a["version"] != b["version"]
        )
        assert changes <= 5


def test_polling_picks_up_a_promotion_made_by_hand(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    real_load = serving.models.load_package

    def counted_load(uri: str, tracking_uri: str | None = None):
        loaded.append(uri)
        return real_load(uri, tracking_uri)

    monkeypatch.setattr(serving.models, "load_package", counted_load)
    store.crown("1")
    with LiveServer(create_app(store.settings(poll_interval_s=0.2))) as server:
        with server.client() as client:
            assert served_version(client) == "1"
            store.crown("2")  # as if in the MLflow UI: nobody calls /admin/reload
            deadline = time.monotonic() + 30
            while served_version(client) != "2":
                assert time.monotonic() < deadline, "the server did not pick up the new champion"
                time.sleep(0.1)
            reply = client.post(
                "/predict?k=1", content=png(), headers={"content-type": "image/png"}
            )
            assert reply.json()["version"] == "2"
            assert reply.json()["predictions"][0]["label"] == store.label_of["2"]

            store.crown(store.corrupt)  # a broken promotion by hand: polled, refused
            deadline = time.monotonic() + 30
            while refused_polls(client.get("/metrics").text) < 3:  # several polls, all refused
                assert time.monotonic() < deadline, "the poll did not try the new champion"
                time.sleep(0.1)
            assert served_version(client) == "2"
            assert client.get("/readyz").status_code == 200
            metrics = client.get("/metrics").text
    assert f'ursa_model_version_info{{model="{NAME}",version="2"}} 1.0' in metrics
    assert refused_polls(metrics) >= 3
    # ... and the broken version was downloaded once, not once per poll.
    assert loaded.count(f"models:/{NAME}/{store.corrupt}") == 1
    store.crown("1")


def test_broken_version_is_refused_and_the_old_one_keeps_serving(store: Store) -> None:
    store.crown("1")
    with LiveServer(create_app(store.settings())) as server, server.client() as client:
        store.crown(store.corrupt)
        reply = client.post("/admin/reload", headers=AUTH)
        assert reply.status_code == 409
        body = reply.json()
        assert f"Version {store.corrupt} of '{NAME}' is refused" in body["error"]
        assert body["version"] == "1"
        assert str(store.data_dir) not in reply.text  # no internal paths
        assert "Traceback" not in reply.text
        assert client.get("/readyz").json()["version"] == "1"
        answer = client.post("/predict?k=1", content=png(), headers={"content-type": "image/png"})
        assert answer.status_code == 200
        assert answer.json()["version"] == "1"
        assert answer.json()["predictions"][0]["label"] == store.label_of["1"]
        # Refused again when asked again (the admin retries the load), not served.
        assert client.post("/admin/reload", headers=AUTH).status_code == 409
    store.crown("1")
