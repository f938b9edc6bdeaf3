"""The cleaning ledger's file format: who decided what about which image, and when.

An append-only JSON-lines file (``<data>/cleaning/ledger.jsonl``), one entry per decision,
keyed by the image's sha256. Nothing is ever rewritten: an undo is a new entry that names
the entry it reverses. The review page (serving) writes it, the next ingest (tasks) reads it;
both import this module, which needs neither Prefect nor training code.

Each entry is written with one ``write`` on a file opened for appending, under an exclusive
lock, and flushed to disk before the call returns; a reader skips a last line without its
newline (a writer killed mid-line), and the next writer cuts it off, so nobody ever reads
half an entry.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from ursa.layout import Layout

KEEP = "keep"
REMOVE = "remove"
RELABEL = "relabel"
UNDO = "undo"
ADD = "add"  # a new labelled image for the dataset: accepted feedback (ursa/feedback.py)
ACTIONS = (KEEP, RELABEL, REMOVE, UNDO, ADD)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Who decided: a name or an address, nothing that could break a CSV cell or a log line.
_WHO = re.compile(r"^[\w.@+ -]{1,64}$")
# Class names are folder and file names elsewhere in Ursa: no separators, no control chars.
_LABEL = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,100}$")


class LedgerError(ValueError):
    """A decision or a ledger line that cannot be accepted; the message names the value."""


@dataclass(frozen=True)
class Entry:
    """One line of the ledger."""

    id: str  # unique id of this entry (an undo names it)
    at: str  # UTC time, ISO 8601
    who: str
    sha256: str  # the image the decision is about ("" for an undo)
    action: str  # keep | relabel | remove | undo | add
    label: str = ""  # relabel: the new class; add: the image's class
    undoes: str = ""  # undo: the id of the entry it reverses
    note: str = ""  # free text, e.g. the label the reviewer saw

    @property
    def decision(self) -> str:
        """``keep``, ``remove`` or ``relabel:<class>``, as people write it."""
        return f"{RELABEL}:{self.label}" if self.action == RELABEL else self.action


def ledger_path(data_dir: Path) -> Path:
    """Where the review page writes decisions and the next ingest reads them."""
    return Layout(data_dir).cleaning / "ledger.jsonl"


def parse_decision(decision: str, classes: Iterable[str] | None = None) -> tuple[str, str]:
    """``"keep"``, ``"remove"`` or ``"relabel:<class>"`` -> (action, label).

    With ``classes``, a relabel must name one of them.
    """
    action, _, label = str(decision).partition(":")
    if action in (KEEP, REMOVE) and not label:
        return action, ""
    if action == RELABEL and _LABEL.match(label or ""):
        if classes is not None and label not in set(classes):
            raise LedgerError(f"Cannot relabel to '{label}': not one of the classes {classes}.")
        return action, label
    raise LedgerError(
        f"Decision '{decision}' is not one of keep, remove or relabel:<class> "
        "(a class name without slashes or control characters)."
    )


def check_who(who: str) -> str:
    who = str(who).strip()
    if not _WHO.match(who):
        raise LedgerError(
            f"Reviewer name '{who}' is not accepted: 1-64 letters, digits, spaces or . @ + - _."
        )
    return who


def check_sha256(sha256: str) -> str:
    if not _SHA256.match(str(sha256)):
        raise LedgerError(f"Image id '{sha256}' is not a sha256 (64 lowercase hex digits).")
    return sha256


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def append_json_line(path: Path, value: dict) -> None:
    """Append ``value`` as one JSON line, under an exclusive lock, flushed to disk.

    The append-only files people's decisions go to (this ledger, the feedback file) all
    use it; their readers skip a last line without its newline.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(value, ensure_ascii=False, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A writer killed mid-line left a torn last line, which no reader ever took for an
        # entry: cut it off, so that ours starts on a line of its own.
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(path: Path, entry: Entry) -> Entry:
    append_json_line(path, asdict(entry))
    return entry


def record(
    path: Path,
    who: str,
    sha256: str,
    decision: str,
    classes: Iterable[str] | None = None,
    note: str = "",
) -> Entry:
    """Append one decision (keep | relabel:<class> | remove) about an image; return it."""
    action, label = parse_decision(decision, classes)
    return _record(path, who, sha256, action, label, note)


def record_addition(
    path: Path, who: str, sha256: str, label: str, classes: Iterable[str], note: str = ""
) -> Entry:
    """Append a new labelled image (accepted feedback): the next ingest adds it."""
    _, label = parse_decision(f"{RELABEL}:{label}", classes)  # the same rules for the class
    return _record(path, who, sha256, ADD, label, note)


def _record(path: Path, who: str, sha256: str, action: str, label: str, note: str) -> Entry:
    entry = Entry(
        id=uuid.uuid4().hex,
        at=_now(),
        who=check_who(who),
        sha256=check_sha256(sha256),
        action=action,
        label=label,
        note=str(note)[:200],
    )
    return _append(Path(path), entry)


def undo(path: Path, who: str, entry_id: str) -> Entry:
    """Append the reversal of entry ``entry_id``; the entry itself stays in the file."""
    entries = read_entries(path)
    target = next((e for e in entries if e.id == entry_id), None)
    if target is None:
        raise LedgerError(f"Ledger {path} has no entry '{entry_id}' to undo.")
    if target.action == UNDO:
        raise LedgerError(f"Entry '{entry_id}' is an undo; record the decision again instead.")
    if any(e.action == UNDO and e.undoes == entry_id for e in entries):
        raise LedgerError(f"Entry '{entry_id}' has already been undone.")
    entry = Entry(
        id=uuid.uuid4().hex,
        at=_now(),
        who=check_who(who),
        sha256=target.sha256,
        action=UNDO,
        undoes=entry_id,
    )
    return _append(Path(path), entry)


def parse_entries_json(data: bytes, source: str = "ledger") -> list[dict]:
    """The JSON objects of an append-only file's bytes; a torn last line is skipped."""
    objects: list[dict] = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if number == len(lines) or not line.strip():
            continue  # the part after the final newline: empty, or a torn write
        try:
            value = json.loads(line)
        except ValueError as exc:
            # Lines are only ever appended whole; a bad one means someone edited the file.
            raise LedgerError(f"{source}, line {number}: not JSON ({exc}).") from exc
        if not isinstance(value, dict):
            raise LedgerError(f"{source}, line {number}: not a JSON object.")
        objects.append(value)
    return objects


def parse_entries(data: bytes, source: str = "ledger") -> list[Entry]:
    """Entries from the bytes of a ledger; a torn last line (no newline) is skipped."""
    names = {f.name for f in fields(Entry)}
    entries: list[Entry] = []
    numbers = [n for n, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    for number, raw in zip(numbers, parse_entries_json(data, source), strict=False):
        try:
            entry = Entry(**{k: str(v) for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise LedgerError(f"{source}, line {number}: not a ledger entry ({exc}).") from exc
        if entry.action not in ACTIONS:
            raise LedgerError(f"{source}, line {number}: unknown action '{entry.action}'.")
        entries.append(entry)
    return entries


def read_ledger(path: Path) -> tuple[list[Entry], str]:
    """(entries, digest) of the ledger at ``path``, both from the same read of its bytes.

    The digest is the sha256 of the complete lines: what a dataset built from these entries
    records, so that a run can be traced to the exact decisions it used. No file: ([], "").
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], ""
    complete = data[: data.rfind(b"\n") + 1]
    return parse_entries(complete, str(path)), hashlib.sha256(complete).hexdigest()


def read_entries(path: Path) -> list[Entry]:
    return read_ledger(path)[0]


def effective(entries: Iterable[Entry]) -> dict[str, Entry]:
    """sha256 -> the decision in force: the latest entry about the image not undone."""
    entries = list(entries)
    undone = {e.undoes for e in entries if e.action == UNDO}
    current: dict[str, Entry] = {}
    for e in entries:  # file order is time order: later entries win
        if e.action not in (UNDO, ADD) and e.id not in undone:
            current[e.sha256] = e
    return current  # an undone latest decision lets the one before it stand again


def additions(entries: Iterable[Entry]) -> dict[str, Entry]:
    """sha256 -> the image added to the dataset (accepted feedback) and not undone; decisions
    about it later (remove, relabel) apply on top, as for any other image."""
    entries = list(entries)
    undone = {e.undoes for e in entries if e.action == UNDO}
    return {e.sha256: e for e in entries if e.action == ADD and e.id not in undone}


def entries_csv(entries: Iterable[Entry]) -> str:
    """The ledger as CSV, one row per entry, in file order (for spreadsheets and pandas)."""
    names = [f.name for f in fields(Entry)] + ["decision"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({**asdict(e), "decision": e.decision})
    return out.getvalue()
