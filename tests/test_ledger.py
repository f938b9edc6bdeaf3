"""The cleaning ledger: its file format (ursa/ledger.py) and what the next ingest does with it
(tasks/ledger.py, applied by dedup's build_dataset on real image files)."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import threading
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from tasks.dedup import build_dataset
from tasks.ledger import load_ledger
from tasks.manifest import ImageRow, load_dataset, read_rows
from tasks.sources import local_image_rows
from tasks.sweep import start_sweep, trial_grid
from tasks.tracking import experiment_id
from tasks.train import TrainConfig
from tasks.verify import verify_rows
from ursa.embedded import write_embedded_images
from ursa.ledger import (
    LedgerError,
    effective,
    entries_csv,
    ledger_path,
    read_entries,
    read_ledger,
    record,
    undo,
)
from ursa.settings import Settings

A = "a" * 64
B = "b" * 64


def test_decisions_append_and_undo_appends_a_reversal(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    first = record(path, "alice", A, "relabel:cat", classes=["cat", "dog"])
    second = record(path, "bob", A, "remove")
    record(path, "bob", B, "keep")
    assert effective(read_entries(path))[A].id == second.id
    reversal = undo(path, "alice", second.id)
    entries = read_entries(path)
    assert [e.action for e in entries] == ["relabel", "remove", "keep", "undo"]
    assert reversal.undoes == second.id and reversal.sha256 == A
    in_force = effective(entries)
    assert in_force[A].id == first.id and in_force[A].decision == "relabel:cat"
    assert in_force[B].decision == "keep"
    undo(path, "alice", first.id)
    assert A not in effective(read_entries(path))
    with pytest.raises(LedgerError, match="already been undone"):
        undo(path, "alice", first.id)
    with pytest.raises(LedgerError, match="no entry"):
        undo(path, "alice", "0" * 32)

    rows = list(csv.DictReader(io.StringIO(entries_csv(read_entries(path)))))
    assert len(rows) == 5
    assert rows[0]["who"] == "alice" and rows[0]["decision"] == "relabel:cat"
    assert rows[0]["at"].endswith("+00:00")


@pytest.mark.parametrize(
    ("who", "sha", "decision", "message"),
    [
        ("alice", A, "relabel:bird", "not one of the classes"),
        ("alice", A, "relabel:", "is not one of keep"),
        ("alice", A, "delete", "is not one of keep"),
        ("alice", A, "relabel:../x", "is not one of keep"),
        ("alice", "A" * 64, "keep", "not a sha256"),
        ("alice", "../etc", "keep", "not a sha256"),
        ("al\nice", A, "keep", "Reviewer name"),
        ("", A, "keep", "Reviewer name"),
    ],
)
def test_bad_decisions_are_refused_and_write_nothing(
    tmp_path: Path, who: str, sha: str, decision: str, message: str
) -> None:
    path = ledger_path(tmp_path)
    with pytest.raises(LedgerError, match=message):
        record(path, who, sha, decision, classes=["cat", "dog"])
    assert not path.exists()


def test_a_torn_last_line_is_ignored_and_the_next_entry_starts_clean(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    record(path, "alice", A, "keep")
    entries, digest = read_ledger(path)
    with open(path, "ab") as fh:
        fh.write(b'{"id": "half a li')  # a writer killed mid-line
    assert read_ledger(path) == (entries, digest)
    record(path, "alice", B, "remove")
    assert [e.sha256 for e in read_entries(path)] == [A, B]


def test_an_edited_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    record(path, "alice", A, "keep")
    with open(path, "a") as fh:
        fh.write("not json\n")
    with pytest.raises(LedgerError, match="line 2"):
        read_entries(path)


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)

    def write(who: str) -> None:
        for i in range(25):
            record(path, who, hashlib.sha256(f"{who}{i}".encode()).hexdigest(), "remove")

    threads = [threading.Thread(target=write, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_entries(path)) == 100


def _source(root: Path) -> dict[str, Path]:
    """Class folders of real digits: 3 classes x 6 images, plus the same picture of class 0
    under class 1 (a label conflict) and a resized copy of another one (a near-duplicate)."""
    embedded = write_embedded_images(root / "embedded")
    files = {}
    for label in ("0", "1", "2"):
        (root / "src" / label).mkdir(parents=True)
        for f in sorted((embedded / label).glob("*.png"))[:6]:
            shutil.copyfile(f, root / "src" / label / f.name)
            files.setdefault(label, f)
    conflict = sorted((embedded / "0").glob("*.png"))[1]
    shutil.copyfile(conflict, root / "src" / "1" / f"conflict-{conflict.name}")
    files["conflict"] = conflict
    near = files["2"]
    Image.open(near).resize((48, 48), Image.Resampling.BICUBIC).save(root / "src" / "2" / "big.png")
    files["near"] = near
    return files


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ingest_applies_the_ledger_per_duplicate_group(tmp_path: Path, data_dir: Path) -> None:
    files = _source(tmp_path)
    rows = verify_rows(local_image_rows(tmp_path / "src", data_dir), data_dir)
    before = build_dataset(rows, data_dir)
    manifest = read_rows(Path(before.manifest_path), ImageRow)
    by_sha = {}
    for r in manifest:
        by_sha.setdefault(r.sha256, []).append(r)
    conflict = _sha(files["conflict"])
    assert {r.status for r in by_sha[conflict]} == {"label_conflict"}
    near_original = _sha(files["near"])
    near_group = by_sha[near_original][0].group
    copies = [r for r in manifest if r.group == near_group]
    assert sorted(r.status for r in copies) == ["kept", "near_duplicate"]
    moved = _sha(files["0"])

    path = ledger_path(data_dir)
    record(path, "alice", moved, "relabel:2")
    record(path, "alice", conflict, "relabel:0")  # settles the conflict
    record(path, "alice", near_original, "remove")  # and its near-duplicate with it
    ledger = load_ledger(path)
    after = build_dataset(rows, data_dir, ledger=ledger)

    assert after.digest != before.digest
    assert after.ledger_path == str(path.resolve())
    assert after.ledger_digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_dataset(after.manifest_path) == after
    rows_after = read_rows(Path(after.manifest_path), ImageRow)
    [relabelled] = [r for r in rows_after if r.sha256 == moved]
    assert (relabelled.label, relabelled.status, relabelled.review) == ("2", "kept", "relabel:0->2")
    assert relabelled.split in ("train", "valid")
    [settled] = [r for r in rows_after if r.sha256 == conflict]
    assert (settled.label, settled.status) == ("0", "kept")
    removed = [r for r in rows_after if r.group == near_group]
    assert len(removed) == 2
    assert {(r.status, r.split, r.review) for r in removed} == {("removed", "", "remove")}
    # One picture more (the settled conflict), one less (the removed one).
    assert after.n_train + after.n_valid == before.n_train + before.n_valid

    # Undo the removal: the picture comes back, the digest moves again.
    removal = effective(read_entries(path))[near_original]
    undo(path, "bob", removal.id)
    again = build_dataset(rows, data_dir, ledger=load_ledger(path))
    back = [r for r in read_rows(Path(again.manifest_path), ImageRow) if r.group == near_group]
    assert sorted(r.status for r in back) == ["kept", "near_duplicate"]
    assert again.digest not in (before.digest, after.digest)


def test_a_run_records_which_ledger_its_dataset_used(tmp_path: Path, data_dir: Path) -> None:
    files = _source(tmp_path)
    rows = verify_rows(local_image_rows(tmp_path / "src", data_dir), data_dir)
    record(ledger_path(data_dir), "alice", _sha(files["1"]), "remove")
    dataset = build_dataset(rows, data_dir, ledger=load_ledger(ledger_path(data_dir)))
    experiment = experiment_id(Settings.from_env())
    run_id = start_sweep(experiment, TrainConfig(), dataset, trial_grid([1e-3], [1]))
    params = mlflow.get_run(run_id).data.params
    assert params["ledger_path"] == str(ledger_path(data_dir).resolve())
    assert params["ledger_digest"] == dataset.ledger_digest != ""
