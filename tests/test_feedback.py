"""Feedback from people: POST /feedback and its refusals, the review page's queue, and an
accepted item reaching the next dataset as a training image with source=feedback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx

from serving.app import create_app
from tasks.dedup import build_dataset
from tasks.feedback import feedback_rows
from tasks.ledger import load_ledger
from tasks.manifest import ImageRow, read_rows
from tasks.sources import local_image_rows
from tasks.verify import verify_rows
from tests.live import LiveServer
from ursa.feedback import feedback_items, read_feedback
from ursa.ledger import ADD, ledger_path, read_entries
from ursa.settings import Settings

TOKEN = "feedback-test-token"


def predict(http: httpx.Client, image: Path) -> dict:
    reply = http.post("/predict", content=image.read_bytes(), headers={"content-type": "image/png"})
    assert reply.status_code == 200
    return reply.json()


def unseen(digits: Path, label: str, n: int) -> list[Path]:
    """Digits the champion's dataset does not hold (it took the first files of each class)."""
    return sorted((digits / label).iterdir())[-n:]


def test_feedback_refusals(digits_champion: Settings, digits: Path, tmp_path: Path) -> None:
    settings = dataclasses.replace(digits_champion, data_dir=tmp_path, feedback_per_minute=6)
    app = create_app(settings)
    with LiveServer(app) as server, server.client() as http:
        sha = predict(http, unseen(digits, "3", 1)[0])["sha256"]
        assert app.state.prediction_log.drain()
        cases = [
            ({"sha256": sha, "label": "cat"}, 400, "not one of"),
            ({"sha256": "../../etc/passwd", "label": "3"}, 400, "not a sha256"),
            ({"sha256": "f" * 64, "label": "3"}, 404, "not one the server kept"),
        ]
        for body, status, message in cases:
            reply = http.post("/feedback", json=body)
            assert reply.status_code == status and message in reply.json()["error"], reply.text
        plain = http.post("/feedback", content=b"3", headers={"content-type": "text/plain"})
        assert plain.status_code == 400
        assert http.post("/feedback", json={"sha256": sha, "label": "3"}).status_code == 201
        assert http.post("/feedback", json={"sha256": sha, "label": "5"}).status_code == 201
        limited = http.post("/feedback", json={"sha256": sha, "label": "3"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        text = http.get("/metrics").text
    assert 'ursa_feedback_total{outcome="rate_limited"} 1.0' in text
    items = feedback_items(read_feedback(tmp_path))
    assert [(i["label"], i["state"]) for i in items] == [("3", "pending"), ("5", "pending")]
    assert not ledger_path(tmp_path).exists()  # nothing reaches the dataset unconfirmed

    # Without image keeping there is nothing to learn from: feedback is refused.
    app = create_app(dataclasses.replace(settings, log_images_max_bytes=0))
    with LiveServer(app) as server, server.client() as http:
        sha = predict(http, unseen(digits, "4", 1)[0])["sha256"]
        assert app.state.prediction_log.drain()
        assert http.post("/feedback", json={"sha256": sha, "label": "4"}).status_code == 404


def test_accepted_feedback_joins_the_next_dataset_for_training(
    digits_champion: Settings, digits: Path, tmp_path: Path
) -> None:
    settings = dataclasses.replace(digits_champion, data_dir=tmp_path, admin_token=TOKEN)
    accepted_image, rejected_image = unseen(digits, "7", 2)
    app = create_app(settings)
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Ursa-Reviewer": "carol"}
    with LiveServer(app) as server, server.client() as http:
        answers = [predict(http, accepted_image), predict(http, rejected_image)]
        assert app.state.prediction_log.drain()
        for answer in answers:
            reply = http.post("/feedback", json={"sha256": answer["sha256"], "label": "7"})
            assert reply.status_code == 201
        assert http.get("/review/api/feedback").status_code == 401
        queue = http.get("/review/api/feedback", headers=auth).json()
        assert queue["pending"] == 2 and "7" in queue["classes"]
        first, second = queue["items"]
        assert (first["label"], first["predicted"]) == ("7", answers[0]["predictions"][0]["label"])
        picture = http.get(f"/review/{first['image_url']}", headers=auth)
        assert picture.status_code == 200 and picture.content == accepted_image.read_bytes()
        decide = "/review/api/feedback/decisions"
        bad = http.post(decide, headers=auth, json={"id": first["id"], "decision": "accept:cat"})
        assert bad.status_code == 400
        ok = http.post(decide, headers=auth, json={"id": first["id"], "decision": "accept"})
        assert ok.status_code == 201 and ok.json()["label"] == "7"
        again = http.post(decide, headers=auth, json={"id": first["id"], "decision": "reject"})
        assert again.status_code == 400 and "already" in again.json()["error"]
        no = http.post(decide, headers=auth, json={"id": second["id"], "decision": "reject"})
        assert no.status_code == 201
        assert http.get("/review/api/feedback", headers=auth).json()["pending"] == 0
    [added] = read_entries(ledger_path(tmp_path))
    assert (added.action, added.sha256, added.label, added.who) == (
        ADD,
        answers[0]["sha256"],
        "7",
        "carol",
    )

    # The next ingest, as flows/ingest.py composes it (without a Prefect run).
    listed = verify_rows(local_image_rows(digits, tmp_path, 12), tmp_path)
    without = read_rows(Path(build_dataset(listed, tmp_path).manifest_path), ImageRow)
    added = verify_rows(feedback_rows(tmp_path, ledger_path(tmp_path)), tmp_path)
    dataset = build_dataset(listed + added, tmp_path, ledger=load_ledger(ledger_path(tmp_path)))
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    [row] = [r for r in rows if r.source == "feedback"]
    assert (row.sha256, row.label, row.status) == (answers[0]["sha256"], "7", "kept")
    # Never in the gate's validation data unless chosen, and the rest split as before.
    assert row.split == "train"
    assert {r.sha256 for r in rows if r.split == "valid"} == {
        r.sha256 for r in without if r.split == "valid"
    }
    assert row.url == f"feedback:{answers[0]['sha256']}"
    assert answers[1]["sha256"] not in {r.sha256 for r in rows}
