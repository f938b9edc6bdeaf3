"""The inference server over real HTTP: uvicorn in a thread, a real MLflow registry in SQLite.

A 1x1 image is accepted (200): the model resizes every image to its input size, and refusing
small images is a product decision that ``open_image(min_side=...)`` can make later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from starlette.requests import Request
from starlette.routing import Mount, Route
from torch import nn

import serving.models
from app.demo import free_port
from serving.app import create_app
from serving.health import STALL_S, HealthState, health_answer
from serving.models import ModelHolder, NoChampion
from serving.server import inference_threads
from serving.uploads import UploadError, read_body
from tests.images import encode, png_header_only
from tests.live import LiveServer
from ursa.package import PIP_REQUIREMENTS, log_package
from ursa.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
NAME = "digits"
CLASSES = ["cat", "dog", "fox"]
TOKEN = "s3cret-token"
MAX_BODY = 64 * 1024


@dataclasses.dataclass
class Registry:
    data_dir: Path
    tracking_uri: str
    good: str  # versions 1 and 2: the same working model
    wrong_classes: str
    no_metadata: str

    def settings(self, **changes: object) -> Settings:
        base = Settings(
            data_dir=self.data_dir,
            tracking_uri=self.tracking_uri,
            model_name=NAME,
            max_body_bytes=MAX_BODY,
            max_image_pixels=1_000_000,
            poll_interval_s=0,  # tests move the alias: no server may follow it on its own
        )
        return dataclasses.replace(base, **changes)

    def crown(self, version: str) -> None:
        MlflowClient(self.tracking_uri).set_registered_model_alias(NAME, "champion", version)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, len(CLASSES)),
    )


META = {"arch": "tiny", "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One store for the module: logging a pt2 model takes seconds, so log each kind once."""
    data_dir = tmp_path_factory.mktemp("serving-data")
    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("URSA_DATA_DIR", str(data_dir))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # an earlier test may have set another one globally
        experiment = mlflow.create_experiment(
            "serving", artifact_location=(data_dir / "mlartifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment):
            good = log_package(tiny_model(), {**META, "classes": CLASSES}, name="good")
            wrong = log_package(tiny_model(), {**META, "classes": list("abcde")}, name="wrong")
            bare = mlflow.pytorch.log_model(
                tiny_model(),
                name="bare",
                input_example=np.zeros((2, 3, 16, 16), dtype=np.float32),
                pip_requirements=PIP_REQUIREMENTS,
            ).model_uri
        versions = [mlflow.register_model(u, NAME).version for u in (good, good, wrong, bare)]
        assert [str(v) for v in versions] == ["1", "2", "3", "4"]
        registry = Registry(data_dir, uri, good="1", wrong_classes="3", no_metadata="4")
        registry.crown("1")
        yield registry


@pytest.fixture(scope="module")
def served(registry: Registry) -> Iterator[LiveServer]:
    """A server with version 1 and no admin token, shared by the read-only tests."""
    registry.crown("1")
    with LiveServer(create_app(registry.settings())) as server:
        yield server


@pytest.fixture
def admin(registry: Registry) -> Iterator[LiveServer]:
    """A server of its own with an admin token, starting on version 1."""
    registry.crown("1")
    with LiveServer(create_app(registry.settings(admin_token=TOKEN))) as server:
        yield server


def image_bytes(size: tuple[int, int] = (20, 20), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (20, 20), (0, 50, 100, 0)), "JPEG")


def png_16bit() -> bytes:
    return encode(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "xyzzy") -> bytes:
    """A multipart/form-data body from (field name, filename or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def check_prediction(body: dict, version: str, k: int = 3) -> None:
    assert body["model"] == NAME
    assert body["version"] == version
    predictions = body["predictions"]
    assert len(predictions) == k
    assert {p["label"] for p in predictions} <= set(CLASSES)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert sum(probabilities) <= 1.0 + 1e-5


def assert_healthy(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        response = client.post(
            "/predict", content=image_bytes(), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200


def test_importing_serving_pulls_in_no_training_code() -> None:
    code = (
        "import serving.app, serving.server, sys; "
        "assert 'prefect' not in sys.modules; "
        "assert not any(m.startswith(('tasks', 'flows')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_predict_multipart(served: LiveServer) -> None:
    with served.client() as client:
        response = client.post("/predict", files={"file": ("x.png", image_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    check_prediction(response.json(), version="1")


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_predict_raw_body(served: LiveServer, content_type: str) -> None:
    with served.client() as client:
        response = client.post(
            "/predict?k=2",
            content=image_bytes(fmt="JPEG"),
            headers={"content-type": content_type},
        )
    assert response.status_code == 200, response.text
    check_prediction(response.json(), version="1", k=2)


def test_one_pixel_image_is_accepted(served: LiveServer) -> None:
    with served.client() as client:
        response = client.post(
            "/predict?k=1", content=image_bytes((1, 1)), headers={"content-type": "image/png"}
        )
    assert response.status_code == 200, response.text
    check_prediction(response.json(), version="1", k=1)


def test_health_ready_and_version(served: LiveServer) -> None:
    with served.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["version"] == "1"
        info = client.get("/version").json()
    assert info["model"] == NAME
    assert info["version"] == "1"
    assert info["classes"] == CLASSES
    assert info["image_size"] == 16
    assert info["run_id"]
    assert info["loaded_at"]


def test_no_champion_means_not_ready(data_dir: Path) -> None:
    settings = Settings.from_env()  # data_dir: an empty store, no registered model at all
    with LiveServer(create_app(settings)) as server, server.client() as client:
        assert client.get("/healthz").status_code == 200
        for response in (
            client.get("/readyz"),
            client.get("/version"),
            client.post("/predict", content=image_bytes(), headers={"content-type": "image/png"}),
        ):
            assert response.status_code == 503
            assert "error" in response.json()


def test_admin_endpoints_are_off_without_a_token(served: LiveServer) -> None:
    with served.client() as client:
        response = client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404
    assert "error" in response.json()


def test_reload_moves_to_the_new_champion(registry: Registry, admin: LiveServer) -> None:
    with admin.client() as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            response = client.post("/admin/reload", headers=headers)
            assert response.status_code == 401
            assert "error" in response.json()

        auth = {"authorization": f"Bearer {TOKEN}"}
        unchanged = client.post("/admin/reload", headers=auth).json()
        assert unchanged == {"changed": False, "version": "1", "previous": "1"}

        registry.crown("2")
        response = client.post("/admin/reload", headers=auth)
        assert response.json() == {"changed": True, "version": "2", "previous": "1"}
        assert client.get("/version").json()["version"] == "2"
        predicted = client.post(
            "/predict", content=image_bytes(), headers={"content-type": "image/png"}
        )
        check_prediction(predicted.json(), version="2")


@pytest.mark.parametrize("broken", ["wrong_classes", "no_metadata"])
def test_broken_champion_is_refused(registry: Registry, admin: LiveServer, broken: str) -> None:
    registry.crown(getattr(registry, broken))
    with admin.client() as client:
        response = client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 409
        body = response.json()
        assert body["error"]
        assert body["version"] == "1"
        assert client.get("/version").json()["version"] == "1"
    assert_healthy(admin)


BAD_INPUTS = {
    "empty body": ({"content-type": "image/png"}, b"", 400, "empty"),
    "no content type": ({}, image_bytes(), 415, None),
    "text/plain": ({"content-type": "text/plain"}, b"hello", 415, None),
    "truncated jpeg": (
        {"content-type": "image/jpeg"},
        image_bytes((64, 64), "JPEG")[:300],
        422,
        "corrupt",
    ),
    "html as jpeg": (
        {"content-type": "image/jpeg"},
        b"<!doctype html><html></html>",
        422,
        "not_image",
    ),
    "over the pixel limit": (
        {"content-type": "image/png"},
        png_header_only(2000, 2000),
        422,
        "too_many_pixels",
    ),
    "decompression bomb": (
        {"content-type": "image/png"},
        png_header_only(60000, 60000),
        422,
        "too_many_pixels",
    ),
    "oversize body": (
        {"content-type": "image/png"},
        b"\x89PNG" + b"0" * (3 * MAX_BODY),
        413,
        None,
    ),
    "multipart without a file": (
        {"content-type": "multipart/form-data; boundary=xyzzy"},
        multipart([("note", None, b"hello")]),
        400,
        "no_file",
    ),
    "multipart with two files": (
        {"content-type": "multipart/form-data; boundary=xyzzy"},
        multipart([("a", "a.png", image_bytes()), ("b", "b.png", image_bytes())]),
        400,
        "bad_form",
    ),
    "multipart without boundary": (
        {"content-type": "multipart/form-data"},
        multipart([("a", "a.png", image_bytes())]),
        400,
        "bad_form",
    ),
    "multipart with an empty file": (
        {"content-type": "multipart/form-data; boundary=xyzzy"},
        multipart([("a", "a.png", b"")]),
        400,
        "empty",
    ),
    "zero-size image (0x0 png)": (
        {"content-type": "image/png"},
        png_header_only(0, 0),
        422,
        "corrupt",
    ),
    "zero-width image (0x10 png)": (
        {"content-type": "image/png"},
        png_header_only(0, 10),
        422,
        "corrupt",
    ),
    "truncated cmyk jpeg": ({"content-type": "image/jpeg"}, half(cmyk_jpeg()), 422, "corrupt"),
    "truncated 16-bit png": ({"content-type": "image/png"}, half(png_16bit()), 422, "corrupt"),
    "animated gif cut in its first frame": (
        {"content-type": "image/gif"},
        animated_gif()[:40],
        422,
        "corrupt",
    ),
    "jpeg signature only": ({"content-type": "image/jpeg"}, b"\xff\xd8\xff", 422, "corrupt"),
    "truncated webp": (
        {"content-type": "image/webp"},
        encode(Image.new("RGB", (20, 20)), "WEBP")[:30],
        422,
        "corrupt",
    ),
    "truncated bmp": (
        {"content-type": "image/bmp"},
        encode(Image.new("RGB", (20, 20)), "BMP")[:60],
        422,
        "corrupt",
    ),
    "svg (xml, not pixels)": (
        {"content-type": "image/svg+xml"},
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        422,
        "not_image",
    ),
    "pdf as octet-stream": (
        {"content-type": "application/octet-stream"},
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj",
        422,
        "not_image",
    ),
    "json content type": ({"content-type": "application/json"}, b'{"image": "x"}', 415, None),
    "form-urlencoded": (
        {"content-type": "application/x-www-form-urlencoded"},
        b"file=abc",
        415,
        None,
    ),
    "multipart with many parts": (
        {"content-type": "multipart/form-data; boundary=xyzzy"},
        multipart([(f"f{i}", None, b"x") for i in range(200)] + [("a", "a.png", image_bytes())]),
        400,
        "bad_form",
    ),
    "multipart with a text file": (
        {"content-type": "multipart/form-data; boundary=xyzzy"},
        multipart([("a", "notes.txt", b"just some text")]),
        422,
        "not_image",
    ),
    "oversize multipart": (
        {"content-type": "multipart/form-data; boundary=xyzzy"},
        multipart([("a", "a.png", b"\x89PNG" + b"0" * (2 * MAX_BODY))]),
        413,
        None,
    ),
}


def test_the_bad_input_corpus_covers_every_refusal_the_server_has() -> None:
    """Every status the upload path answers and every reason an image is refused for."""
    uploads = (ROOT / "serving" / "uploads.py").read_text()
    images = (ROOT / "ursa" / "images.py").read_text()
    statuses = {int(s) for s in re.findall(r"UploadError\(\s*(\d{3})", uploads)}
    reasons = set(re.findall(r'ImageError\(\s*"(\w+)"', images))
    assert statuses and reasons  # the patterns still find what they look for
    reasons.discard("too_small")  # the server asks for no minimum side
    statuses |= {400, 422}  # decode(): an empty upload, an unusable image
    covered_statuses = {status for _, _, status, _ in BAD_INPUTS.values()}
    covered_reasons = {reason for _, _, _, reason in BAD_INPUTS.values()}
    assert statuses <= covered_statuses
    assert reasons <= covered_reasons


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_a_json_4xx(served: LiveServer, case: str) -> None:
    headers, content, status, reason = BAD_INPUTS[case]
    with served.client() as client:
        response = client.post("/predict", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]
    assert response.json().get("reason") == reason
    assert "object at 0x" not in response.text and "Traceback" not in response.text
    assert_healthy(served)


# Unusual but valid images: the server takes them (converted to 8-bit RGB), it does not refuse.
AWKWARD_BUT_VALID = {
    "cmyk jpeg": ("image/jpeg", cmyk_jpeg),
    "16-bit png": ("image/png", png_16bit),
    "animated gif (first frame)": ("image/gif", animated_gif),
    "grayscale png": ("image/png", lambda: encode(Image.new("L", (20, 20), 99), "PNG")),
    "rgba png": ("image/png", lambda: encode(Image.new("RGBA", (20, 20), (1, 2, 3, 0)), "PNG")),
    "webp": ("image/webp", lambda: encode(Image.new("RGB", (20, 20)), "WEBP")),
    "palette png": ("image/png", lambda: encode(palette_image(), "PNG")),
}


def palette_image() -> Image.Image:
    """Three palette colours in bands; index 2 is the one a PNG may mark transparent."""
    im = Image.new("P", (20, 20), 0)
    im.putpalette([200, 30, 90, 10, 120, 240, 0, 0, 0] + [0] * (3 * 253))
    im.paste(1, (0, 7, 20, 14))
    im.paste(2, (0, 14, 20, 20))
    return im


def probabilities(served: LiveServer, data: bytes) -> list[float]:
    with served.client() as client:
        response = client.post("/predict?k=3", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return [p["probability"] for p in sorted(response.json()["predictions"], key=str)]


@pytest.mark.parametrize("transparent", [False, True], ids=["opaque", "transparent index"])
def test_palette_images_are_classified_as_their_rgb_pixels(
    served: LiveServer, transparent: bool
) -> None:
    palette = palette_image()
    rgb = palette.convert("RGB")
    if transparent:  # the transparent index is composited on white, like any transparency
        rgb.paste((255, 255, 255), (0, 14, 20, 20))
    served_palette = encode(palette, "PNG", **({"transparency": 2} if transparent else {}))
    assert probabilities(served, served_palette) == pytest.approx(
        probabilities(served, encode(rgb, "PNG")), abs=1e-6
    )


@pytest.mark.parametrize("fields, status", [(8, 200), (9, 400)])
def test_up_to_eight_form_fields_beside_the_file(
    served: LiveServer, fields: int, status: int
) -> None:
    parts = [(f"note{i}", None, b"x") for i in range(fields)] + [("a", "a.png", image_bytes())]
    with served.client() as client:
        response = client.post(
            "/predict",
            content=multipart(parts),
            headers={"content-type": "multipart/form-data; boundary=xyzzy"},
        )
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["reason"] == "bad_form"


@pytest.mark.parametrize("case", AWKWARD_BUT_VALID, ids=list(AWKWARD_BUT_VALID))
def test_awkward_but_valid_images_are_classified(served: LiveServer, case: str) -> None:
    content_type, build = AWKWARD_BUT_VALID[case]
    with served.client() as client:
        response = client.post("/predict", content=build(), headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    check_prediction(response.json(), version="1")


def test_oversize_chunked_body_is_refused(served: LiveServer) -> None:
    chunks = (b"\xff\xd8\xff" + b"0" * 16 * 1024 for _ in range(64))  # no Content-Length
    with served.client() as client:
        response = client.post("/predict", content=chunks, headers={"content-type": "image/jpeg"})
    assert response.status_code == 413
    assert response.json()["error"]
    assert_healthy(served)


@pytest.mark.parametrize("k", ["0", "4", "-1", "1.5", "two", "", "\u00b2", "\u0661"])
def test_bad_k_is_400(served: LiveServer, k: str) -> None:
    with served.client() as client:
        response = client.post(
            "/predict",
            params={"k": k},
            content=image_bytes(),
            headers={"content-type": "image/png"},
        )
    assert response.status_code == 400
    assert "k" in response.json()["error"]


def test_unknown_route_and_method_are_json(served: LiveServer) -> None:
    with served.client() as client:
        missing = client.get("/nope")
        wrong_method = client.get("/predict")
    assert missing.status_code == 404 and missing.json()["error"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]


def test_unexpected_failure_is_a_bare_500(registry: Registry, admin: LiveServer) -> None:
    class FailingPackage:
        classes = CLASSES

        def probabilities(self, images: list[Image.Image]) -> np.ndarray:
            raise RuntimeError("boom in /secret/internal/path.py")

    holder = admin.app.state.holder
    good = holder.current
    holder._current = dataclasses.replace(good, package=FailingPackage())
    try:
        with admin.client() as client:
            response = client.post(
                "/predict", content=image_bytes(), headers={"content-type": "image/png"}
            )
        assert response.status_code == 500
        assert response.json() == {"error": "Internal server error."}
    finally:
        holder._current = good
    assert_healthy(admin)


def test_body_reading_stops_at_the_limit() -> None:
    """A chunked body is refused once past the limit, without reading the rest of it."""
    received = 0

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}  # endless

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    with pytest.raises(UploadError) as caught:
        asyncio.run(read_body(Request(scope, receive), limit=4 * 1024))
    assert caught.value.status_code == 413
    assert received == 5


def test_concurrent_reloads_load_once(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    real_load = serving.models.load_package

    def slow_load(uri: str, tracking_uri: str | None = None):
        loaded.append(uri)
        time.sleep(0.2)
        return real_load(uri, tracking_uri)

    monkeypatch.setattr(serving.models, "load_package", slow_load)
    holder = ModelHolder(NAME, registry.tracking_uri)
    registry.crown("2")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: holder.reload(), range(2)))
    assert loaded == [f"models:/{NAME}/2"]
    assert sorted(result.changed for result in results) == [False, True]


def test_registered_model_without_alias_is_no_champion(registry: Registry) -> None:
    MlflowClient(registry.tracking_uri).delete_registered_model_alias(NAME, "champion")
    try:
        with pytest.raises(NoChampion):
            ModelHolder(NAME, registry.tracking_uri).reload()
    finally:
        registry.crown("1")


def test_metrics_count_routes_statuses_batches_and_the_version(served: LiveServer) -> None:
    with served.client() as client:
        for _ in range(3):
            client.post("/predict", content=image_bytes(), headers={"content-type": "image/png"})
        client.post("/predict", content=b"hello", headers={"content-type": "text/plain"})
        client.get("/no/such/path/123")
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    def value(series: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(series + " ")]
        assert lines, f"no series {series}"
        return float(lines[0].split()[-1])

    assert value('ursa_http_requests_total{method="POST",route="/predict",status="200"}') >= 3
    assert value('ursa_http_requests_total{method="POST",route="/predict",status="415"}') >= 1
    assert value('ursa_http_requests_total{method="GET",route="(unmatched)",status="404"}') >= 1
    assert "/no/such/path" not in text  # one label for every unknown path
    assert value('ursa_http_request_duration_seconds_count{route="/predict"}') >= 4
    assert value("ursa_batch_size_count") >= 3
    assert value("ursa_batch_size_sum") >= 3
    assert value(f'ursa_model_version_info{{model="{NAME}",version="1"}}') == 1.0
    assert value("ursa_event_loop_lag_seconds_count") >= 1  # watched since the start


def test_openapi_describes_every_route_and_nothing_else(registry: Registry) -> None:
    for token, admin_route in (("", False), (TOKEN, True)):
        app = create_app(registry.settings(admin_token=token))
        with LiveServer(app) as server, server.client() as client:
            schema = client.get("/openapi.json").json()
        assert schema["openapi"].startswith("3.")
        routes = {
            (route.path, m.lower())
            for route in app.routes
            if isinstance(route, Route)
            for m in route.methods - {"HEAD"}
        }
        routes |= {(f"{m.path}/{{path}}", "get") for m in app.routes if isinstance(m, Mount)}
        described = {(path, method) for path, ops in schema["paths"].items() for method in ops}
        assert described == routes
        assert (("/admin/reload", "post") in described) == admin_route
        for path, ops in schema["paths"].items():
            for op in ops.values():
                assert op["summary"] and op["responses"], path


def test_cors_is_off_unless_configured(registry: Registry, served: LiveServer) -> None:
    preflight = {
        "origin": "https://example.org",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    with served.client() as client:
        response = client.options("/predict", headers=preflight)
        plain = client.get("/version", headers={"origin": "https://example.org"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in plain.headers

    app = create_app(registry.settings(cors_origins=("https://example.org",)))
    with LiveServer(app) as server, server.client() as client:
        allowed = client.options("/predict", headers=preflight)
        other = client.options("/predict", headers={**preflight, "origin": "https://evil.test"})
        admin = client.options(
            "/predict", headers={**preflight, "access-control-request-headers": "authorization"}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://example.org"
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert admin.status_code == 400  # the admin token header is never allowed cross-origin


def test_upload_page_is_served_with_a_strict_policy(served: LiveServer) -> None:
    with served.client() as client:
        page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '<script src="static/upload.js">' in page.text and "<script>" not in page.text
    assert 'type="file"' in page.text and "style=" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing external
    with served.client() as client:
        script = client.get("/static/upload.js")
    assert script.status_code == 200 and "predict?k=" in script.text
    assert "javascript" in script.headers["content-type"]


def test_serving_settings_come_from_the_environment() -> None:
    env = {
        "URSA_BATCH_MAX_SIZE": "8",
        "URSA_BATCH_MAX_WAIT_MS": "2.5",
        "URSA_POLL_INTERVAL_S": "0",
        "URSA_CORS_ORIGINS": "https://a.example, https://b.example/",
        "URSA_TRUSTED_PROXIES": "10.0.0.7, ::1",
        "URSA_RELEASE_MARGIN": "0.02",
        "URSA_MAX_QUEUE": "0",
        "URSA_REQUEST_TIMEOUT_S": "2.5",
    }
    settings = Settings.from_env(env)
    assert (settings.batch_max_size, settings.batch_max_wait_ms) == (8, 2.5)
    assert settings.poll_interval_s == 0
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.trusted_proxies == ("10.0.0.7", "::1")
    assert Settings.from_env({}).trusted_proxies == ()  # none believed by default
    assert settings.release_margin == 0.02
    assert (settings.max_queue, settings.request_timeout_s) == (0, 2.5)  # 0: no bound
    assert Settings.from_env({}).max_queue is None  # unset: sized from the answer rate
    for key, bad in (
        ("URSA_BATCH_MAX_SIZE", "0"),
        ("URSA_BATCH_MAX_WAIT_MS", "-1"),
        ("URSA_MAX_QUEUE", "-1"),
        ("URSA_REQUEST_TIMEOUT_S", "nan"),
    ):
        with pytest.raises(ValueError, match=key):
            Settings.from_env({key: bad})


# -- load shedding over HTTP --------------------------------------------------------------


class HeldPackage:
    """The real package, but every batch waits until ``release`` is set."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.classes = real.classes
        self.meta = real.meta
        self.release = threading.Event()

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        self.release.wait(60)
        return self.real.probabilities(images)


@contextlib.contextmanager
def held_server(registry: Registry, **changes: object) -> Iterator[tuple[LiveServer, HeldPackage]]:
    """A server of its own whose batches wait for the test to release them."""
    registry.crown("1")
    with LiveServer(create_app(registry.settings(**changes))) as server:
        holder = server.app.state.holder
        held = HeldPackage(holder.current.package)
        holder._current = dataclasses.replace(holder.current, package=held)
        try:
            yield server, held
        finally:
            held.release.set()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def post_image(client: httpx.Client) -> httpx.Response:
    return client.post("/predict", content=image_bytes(), headers={"content-type": "image/png"})


def shed_count(server: LiveServer, reason: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    series = f'ursa_shed_requests_total{{reason="{reason}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(series)).split()[-1])


def check_overloaded(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["reason"] == reason and response.json()["error"]
    assert int(response.headers["retry-after"]) >= 1


def test_a_full_queue_refuses_at_once_with_retry_after(registry: Registry) -> None:
    with (
        held_server(registry, max_queue=1, request_timeout_s=0) as (server, held),
        ThreadPoolExecutor(1) as pool,
    ):
        admission = server.app.state.admission
        first = pool.submit(post_image, server.client())
        wait_until(lambda: admission.in_flight == 1, "the first request to take the place")
        # Answered while the first request still holds the only place: nothing waited.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            check_overloaded(post_image(client), "queue_full")
        assert not first.done()
        held.release.set()
        check_prediction(first.result(timeout=60).json(), version="1")
        assert shed_count(server, "queue_full") == 1
        assert shed_count(server, "deadline") == 0
        with server.client() as client:
            text = client.get("/metrics").text
        assert 'ursa_http_requests_total{method="POST",route="/predict",status="503"} 1.0' in text


def raw_request(method: str, path: str, body: bytes = b"", close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: image/png\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + body


def read_response(stream: io.BufferedReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off a raw connection: status, headers, body."""
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline().decode().strip()) != "":
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, stream.read(int(headers["content-length"]))


def test_refusals_come_before_the_app_and_keep_the_connection(registry: Registry) -> None:
    """Served as ``ursa serve`` serves it, a refusal is written by the HTTP protocol, with
    no request task and no app; the refused body is read and dropped, so the next request
    on the same connection is answered; ``Connection: close`` closes it."""
    with (
        held_server(registry, max_queue=1, request_timeout_s=0) as (server, held),
        ThreadPoolExecutor(1) as pool,
    ):
        shedding = server.app.state.shedding
        early: list[float] = []
        counted = shedding.counted
        shedding.counted = lambda seconds: (early.append(seconds), counted(seconds))
        first = pool.submit(post_image, server.client())
        wait_until(lambda: shedding.admission.in_flight == 1, "the first request to take the place")
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            stream = conn.makefile("rb")
            conn.sendall(raw_request("POST", "/predict", image_bytes()))
            status, headers, body = read_response(stream)
            assert status == 503 and int(headers["retry-after"]) >= 1, body
            assert headers["content-type"] == "application/json" and "date" in headers
            assert json.loads(body)["reason"] == "queue_full"
            assert len(early) == 1  # refused by the protocol, before the app
            conn.sendall(raw_request("GET", "/healthz"))
            assert read_response(stream)[0] == 200  # the same connection, still in step
            conn.sendall(raw_request("POST", "/predict", image_bytes(), close=True))
            assert read_response(stream)[0] == 503
            assert stream.read() == b""  # and then closed, as asked
        held.release.set()
        check_prediction(first.result(timeout=60).json(), version="1")
        assert shed_count(server, "queue_full") == 2 and len(early) == 2
        with server.client() as client:
            text = client.get("/metrics").text
        assert 'ursa_http_requests_total{method="POST",route="/predict",status="503"} 2.0' in text


def test_a_pipelined_request_is_answered_in_order(registry: Registry) -> None:
    """A second request sent behind one still being answered is not refused ahead of it
    (its 503 would reach the client as the first one's answer): it waits its turn."""
    with held_server(registry, max_queue=1, request_timeout_s=0) as (server, held):
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            stream = conn.makefile("rb")
            conn.sendall(raw_request("POST", "/predict", image_bytes()))
            admission = server.app.state.admission
            wait_until(lambda: admission.in_flight == 1, "the first request to take the place")
            conn.sendall(raw_request("POST", "/predict", image_bytes()))
            time.sleep(0.2)  # time for the second to be parsed while the place is held
            held.release.set()
            for _ in range(2):
                status, _, body = read_response(stream)
                assert status == 200, body
                check_prediction(json.loads(body), version="1")
        assert shed_count(server, "queue_full") == 0


def test_with_cors_refusals_go_through_the_app_and_carry_its_headers(registry: Registry) -> None:
    origin = "https://example.org"
    with (
        held_server(registry, max_queue=1, request_timeout_s=0, cors_origins=(origin,)) as (
            server,
            held,
        ),
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(post_image, server.client())
        admission = server.app.state.admission
        wait_until(lambda: admission.in_flight == 1, "the first request to take the place")
        with server.client() as client:
            refused = client.post(
                "/predict",
                content=image_bytes(),
                headers={"content-type": "image/png", "origin": origin},
            )
        check_overloaded(refused, "queue_full")
        assert refused.headers["access-control-allow-origin"] == origin
        held.release.set()
        check_prediction(first.result(timeout=60).json(), version="1")


def test_a_request_past_its_deadline_is_refused(registry: Registry) -> None:
    with held_server(registry, max_queue=0, request_timeout_s=0.5) as (server, held):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            check_overloaded(post_image(client), "deadline")
        assert not held.release.is_set()  # refused while its batch was still running
        assert shed_count(server, "deadline") == 1
        held.release.set()
        assert_healthy(server)  # the abandoned batch's answer went nowhere


def test_health_is_answered_during_a_burst(registry: Registry) -> None:
    burst, places = 60, 8

    async def burst_and_probe(server: LiveServer, held: HeldPackage) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=burst + 2)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            sent = [
                asyncio.ensure_future(
                    client.post(
                        "/predict", content=image_bytes(), headers={"content-type": "image/png"}
                    )
                )
                for _ in range(burst)
            ]
            deadline = time.monotonic() + 60
            while sum(task.done() for task in sent) < burst - places:
                assert time.monotonic() < deadline, "the refusals did not come"
                await asyncio.sleep(0.01)
            # The queue is full and its requests wait on the model: the probes must not.
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert sum(task.done() for task in sent) == burst - places  # still held
            held.release.set()
            return await asyncio.gather(*sent)

    with held_server(registry, max_queue=places, request_timeout_s=0) as (server, held):
        responses = asyncio.run(burst_and_probe(server, held))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * places + [503] * (burst - places)
        for response in responses:
            if response.status_code == 503:
                check_overloaded(response, "queue_full")
        assert shed_count(server, "queue_full") == burst - places


def test_the_health_port_answers_while_the_event_loop_is_blocked(registry: Registry) -> None:
    registry.crown("1")
    port = free_port()
    with LiveServer(create_app(registry.settings(health_port=port))) as server:
        health = f"http://127.0.0.1:{port}"
        ready = {"status": "ready", "model": NAME, "version": "1"}
        assert httpx.get(f"{health}/readyz", timeout=10).json() == ready
        # Hold the request loop itself, as a long burst of work on it would.
        loop = server.app.state.batcher._task.get_loop()
        blocked, release = threading.Event(), threading.Event()

        def block() -> None:
            blocked.set()
            release.wait(30)

        loop.call_soon_threadsafe(block)
        assert blocked.wait(10)
        try:
            alive = httpx.get(f"{health}/healthz", timeout=10)
            assert alive.status_code == 200 and alive.json()["status"] == "ok"
            assert httpx.get(f"{health}/readyz", timeout=10).json() == ready
            assert not release.is_set()  # both answered while the loop was still held
        finally:
            release.set()
        missing = httpx.get(f"{health}/predict", timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]
    with pytest.raises(httpx.ConnectError):  # the health process ended with the server
        httpx.get(f"{health}/healthz", timeout=10)


def test_the_health_page_reports_a_stuck_loop_and_a_missing_model() -> None:
    clock = [100.0]
    state, fd = HealthState.create(clock=lambda: clock[0])
    os.close(fd)
    assert health_answer("/readyz", *state.read()) == (503, {"error": "No model is loaded yet."})
    assert health_answer("/healthz", *state.read())[0] == 200
    state.beat(("m", "1"))
    clock[0] += STALL_S - 1  # busy, not stuck: still alive
    assert health_answer("/healthz", *state.read())[0] == 200
    clock[0] += 2
    for path in ("/healthz", "/readyz"):
        status, body = health_answer(path, *state.read())
        assert status == 503 and "has not run for" in body["error"]
    state.beat(("m", "2"))
    ready = {"status": "ready", "model": "m", "version": "2"}
    assert health_answer("/readyz", *state.read()) == (200, ready)


def test_inference_threads_are_as_configured_else_every_usable_core() -> None:
    assert Settings.from_env({"URSA_INFERENCE_THREADS": "1"}).inference_threads == 1
    assert inference_threads(1) == 1 and inference_threads(3) == 3
    assert inference_threads(Settings.from_env({}).inference_threads) == len(
        os.sched_getaffinity(0)
    )
