"""The lesson's journey end to end, as a user types it, against the three local stand-ins:
`ursa urls` (the real ddgs client, DuckDuckGo stand-in) -> `ursa ingest` (generated photos on
the image host, junk included) -> `ursa train --recipe photos --pretrained` (weights
downloaded from the stand-in weights host through URSA_WEIGHTS_MIRROR) -> `ursa release` ->
a photo to the running server's /predict."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from app.cli import main
from serving.app import create_app
from standins.photos import QUERIES, write_photos
from standins.searchhost import photo_search
from standins.weightshost import WeightsHost
from tests.live import LiveServer
from ursa.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
TOKEN = "journey-token"


def test_search_terms_to_a_served_photo_classifier(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = write_photos(tmp_path / "photos", per_class=10)
    monkeypatch.setenv("URSA_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    monkeypatch.setenv("URSA_RELEASE_MIN_VALID", "0")  # 24 photos: a validation split of 6
    bears = tmp_path / "bears"
    with (
        photo_search(photos) as (_, search),
        WeightsHost(("resnet34",)) as weights,
        weights.named_in_torchvision(),
    ):
        monkeypatch.setenv("URSA_SEARCH_URL", search.base_url)
        monkeypatch.setenv("URSA_WEIGHTS_MIRROR", weights.base_url)
        terms = [f"{label}={query}" for label, query in QUERIES.items()]
        assert main(["urls", *terms, "--max", "8", "--out", str(bears)]) == 0
        for label in QUERIES:
            assert len((bears / f"{label}.txt").read_text().split()) == 8

        assert main(["ingest", str(bears), "--timeout", "3"]) == 0
        # The recipe, made small: 32 px, the head's epoch and one more, no range test.
        train = ["train", "--recipe", "photos", "--pretrained", "--image-size", "32"]
        train += [
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--no-lr-find",
            "--no-centre-lrs",
        ]
        assert main(train) == 0
        hub = tmp_path / "torch-home" / "hub" / "checkpoints"
        (downloaded,) = hub.iterdir()
        assert downloaded.read_bytes() == weights.file_bytes("resnet34")

        settings = Settings.from_env()
        with LiveServer(create_app(settings)) as server, server.client() as http:
            assert main(["release", "--serve-url", server.url]) == 0
            # A phone's photo: stored sideways, with the EXIF tag that turns it upright.
            rotated = next(
                p
                for p in sorted(photos.rglob("*.jpg"))
                if Image.open(p).getexif().get(0x0112, 1) != 1
            )
            reply = http.post(
                "/predict", files={"file": (rotated.name, rotated.read_bytes(), "image/jpeg")}
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["version"] == "1"
            assert {p["label"] for p in body["predictions"]} <= set(QUERIES)
