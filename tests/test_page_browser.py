"""The upload page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

`make test` installs Chromium when /usr/bin/chromium is missing; Playwright's own browser
download is never used (it needs the internet).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from torch import nn

from serving.app import create_app
from tests.live import LiveServer
from ursa.feedback import feedback_items, read_feedback
from ursa.package import log_package
from ursa.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NAME = "bears"
CLASSES = ["grizzly", "black", "teddy"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("page-data")
    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    meta = {"arch": "tiny", "classes": CLASSES, "image_size": 16, "mean": [0.5] * 3}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # an earlier test may have set another one globally
        experiment = mlflow.create_experiment(
            "page", artifact_location=(data_dir / "mlartifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment):
            model_uri = log_package(model, {**meta, "std": [0.25] * 3})
        version = mlflow.register_model(model_uri, NAME).version
    MlflowClient(uri).set_registered_model_alias(NAME, "champion", version)
    settings = Settings(
        data_dir=data_dir,
        tracking_uri=uri,
        model_name=NAME,
        poll_interval_s=0,
        log_images_max_bytes=1_000_000,  # kept images can receive feedback
    )
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: LiveServer) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server.url + "/")
    yield page
    context.close()
    # A Content-Security-Policy violation or a script error shows up here.
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "PNG")
    return buffer.getvalue()


def check_results(page: Page) -> None:
    expect(page.locator("#status")).to_contain_text(f"{NAME} version 1")
    rows = page.locator("tr.prediction")
    expect(rows).to_have_count(3)
    labels = rows.locator("td.label").all_inner_texts()
    assert sorted(labels) == sorted(CLASSES)
    shares = [float(t.rstrip("%")) for t in rows.locator("td.probability").all_inner_texts()]
    assert shares == sorted(shares, reverse=True)
    assert 99.0 <= sum(shares) <= 101.0
    expect(page.locator("#preview")).to_be_visible()


def test_page_shows_the_model_and_classifies_a_picked_image(page: Page, tmp_path: Path) -> None:
    expect(page.locator("#model-version")).to_have_text(f"{NAME} version 1")
    picture = tmp_path / "bear.png"
    picture.write_bytes(png((120, 80, 40)))
    page.set_input_files("#file", str(picture))
    check_results(page)


def test_page_classifies_a_dropped_image(page: Page) -> None:
    data = list(png((30, 30, 30)))
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            const drop = document.getElementById("drop");
            drop.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true}));
            drop.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""",
        data,
    )
    check_results(page)


def test_page_shows_the_servers_error_for_a_non_image(page: Page, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    page.set_input_files("#file", str(text))
    expect(page.locator("#error")).to_contain_text("Content-Type")
    expect(page.locator("#results")).to_be_hidden()


def test_a_person_says_the_answer_was_wrong(page: Page, server: LiveServer, tmp_path: Path) -> None:
    picture = tmp_path / "teddy.png"
    picture.write_bytes(png((200, 150, 90)))
    page.set_input_files("#file", str(picture))
    check_results(page)
    assert server.app.state.prediction_log.drain()  # the image is kept before anyone answers
    page.click("#wrong")
    page.select_option("#correct-class", "teddy")
    page.click("#send-correct")
    expect(page.locator("#feedback-status")).to_contain_text("Thank you")
    expect(page.locator("#wrong")).to_be_disabled()
    [item] = feedback_items(read_feedback(server.app.state.settings.data_dir))
    assert (item["label"], item["state"]) == ("teddy", "pending")
