"""Feedback from people: "Right?" under each answer of the upload page, and what reviewers
decide about it.

``<data>/feedback/feedback.jsonl`` is append-only JSON lines (as the cleaning ledger), one
object per event: ``kind`` ``feedback`` (a person says image ``sha256`` is ``label``; the
model's answer beside it) or ``accept``/``reject`` (a reviewer's verdict on feedback
``feedback``). Feedback is unconfirmed until accepted; an accepted item also goes into the
cleaning ledger as a new labelled image (:func:`ursa.ledger.record_addition`), which the next
ingest adds with ``source=feedback``. Feedback is taken only about images the prediction
log kept (:func:`ursa.predictions.kept_answer`), so its bytes are there to learn from.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from ursa.layout import Layout
from ursa.ledger import (
    LedgerError,
    append_json_line,
    check_sha256,
    check_who,
    ledger_path,
    parse_entries_json,
    record_addition,
)
from ursa.predictions import kept_answer

FEEDBACK = "feedback"  # also the dataset's ``source`` of the images it adds
ACCEPT = "accept"
REJECT = "reject"
URL_SCHEME = "feedback:"  # the dataset manifest's url of an image that came from feedback


class FeedbackError(ValueError):
    """Feedback that cannot be taken; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def feedback_path(data_dir: Path) -> Path:
    return Layout(data_dir).feedback / "feedback.jsonl"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def record_feedback(data_dir: Path, sha256: str, label: str, classes: list[str]) -> dict:
    """Store "image ``sha256`` is ``label``" beside the answer the model gave; unconfirmed."""
    try:
        check_sha256(sha256)
    except LedgerError as exc:
        raise FeedbackError(400, str(exc)) from None
    if label not in classes:
        raise FeedbackError(400, f"Class '{str(label)[:100]}' is not one of {classes}.")
    answer = kept_answer(data_dir, sha256)
    if answer is None:
        raise FeedbackError(
            404, f"Image {sha256} is not one the server kept: feedback needs the image."
        )
    item = {
        "id": uuid.uuid4().hex,
        "at": _now(),
        "kind": FEEDBACK,
        "sha256": sha256,
        "label": label,
        "predicted": answer.get("label", ""),
        "confidence": answer.get("confidence", 0.0),
        "model": answer.get("model", ""),
        "version": answer.get("version", ""),
    }
    append_json_line(feedback_path(data_dir), item)
    return item


def read_feedback(data_dir: Path) -> list[dict]:
    """Every feedback event, in file order (a torn last line is skipped)."""
    path = feedback_path(data_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse_entries_json(data[: data.rfind(b"\n") + 1])


def feedback_items(events: list[dict]) -> list[dict]:
    """The feedback items with their review state (``pending``, ``accept`` or ``reject``)."""
    verdicts = {e["feedback"]: e for e in events if e.get("kind") in (ACCEPT, REJECT)}
    items = []
    for e in events:
        if e.get("kind") != FEEDBACK:
            continue
        verdict = verdicts.get(e["id"])
        items.append(
            {
                **e,
                "state": verdict["kind"] if verdict else "pending",
                "reviewed_by": verdict["who"] if verdict else None,
            }
        )
    return items


def review(data_dir: Path, who: str, feedback_id: str, decision: str, classes: list[str]) -> dict:
    """A reviewer's verdict on one feedback item: ``accept`` (or ``accept:<class>`` to take
    another class than the person's) adds the image to the cleaning ledger; ``reject`` only
    closes the item."""
    who = check_who(who)
    kind, _, label = str(decision).partition(":")
    if kind not in (ACCEPT, REJECT) or (kind == REJECT and label):
        raise LedgerError(f"Decision '{decision}' is not accept, accept:<class> or reject.")
    items = {i["id"]: i for i in feedback_items(read_feedback(data_dir))}
    item = items.get(feedback_id)
    if item is None:
        raise LedgerError(f"No feedback '{str(feedback_id)[:40]}'.")
    if item["state"] != "pending":
        raise LedgerError(f"Feedback '{feedback_id}' was already {item['state']}ed.")
    verdict = {
        "id": uuid.uuid4().hex,
        "at": _now(),
        "kind": kind,
        "feedback": feedback_id,
        "who": who,
        "label": label or item["label"],
    }
    if kind == ACCEPT:
        if kept_answer(data_dir, item["sha256"]) is None:
            raise LedgerError("The image has expired from the prediction log; reject it.")
        entry = record_addition(
            ledger_path(data_dir),
            who,
            item["sha256"],
            verdict["label"],
            classes,
            note=f"feedback {feedback_id}: model said {item['predicted']}",
        )
        verdict["ledger_entry"] = entry.id
    append_json_line(feedback_path(data_dir), verdict)
    return verdict
