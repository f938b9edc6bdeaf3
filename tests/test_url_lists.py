"""URL lists (``tasks/url_lists.py``): ``<label>.txt`` files read into manifest rows.

What editors leave in a list (byte-order marks, zero-width padding, any line ending) is tested
in test_edges.py, with the other edge cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.url_lists import read_url_lists


def test_read_url_lists_skips_comments_and_keeps_queries(tmp_path: Path) -> None:
    (tmp_path / "cat.txt").write_text(
        "# exported 2024-05-01\n"
        "  https://a.example/1.jpg?w=200&h=100  \n"
        "\n"
        "   \n"
        "#https://commented.example/x.jpg\n"
        "https://a.example/2.png\n"
    )
    (tmp_path / "ant.txt").write_text("https://b.example/x.jpg\r\nhttps://b.example/y.jpg\r\n")
    (tmp_path / "notes.md").write_text("https://ignored.example/z.jpg\n")

    rows = read_url_lists(tmp_path)
    assert [(r.label, r.url) for r in rows] == [
        ("ant", "https://b.example/x.jpg"),
        ("ant", "https://b.example/y.jpg"),
        ("cat", "https://a.example/1.jpg?w=200&h=100"),
        ("cat", "https://a.example/2.png"),
    ]
    assert [r.url for r in read_url_lists(tmp_path / "cat.txt")] == [
        "https://a.example/1.jpg?w=200&h=100",
        "https://a.example/2.png",
    ]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_url_lists(tmp_path / "nowhere")
