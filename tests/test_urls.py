"""`ursa urls`: the real ddgs client against the local DuckDuckGo stand-in, and the rules of
collection (pacing, backoff, variants, dedup, filters, conflicts, resume) around it."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from standins.searchhost import Listing, SearchHost, catalog_from_lists
from tasks.image_search import (
    ImageHit,
    RateLimited,
    SearchOptions,
    SearchPage,
    SearchUnavailable,
    image_search,
)
from tasks.urls import (
    STATE_NAME,
    Pacer,
    Pacing,
    Rules,
    SearchGaveUp,
    collect_class,
    load_collection,
    query_variants,
)


def _listings(label: str, n: int) -> list[Listing]:
    return [
        Listing(f"http://img.test/{label}/{i}.jpg", f"{label} {i}", f"http://p.test/{i}", 900, 600)
        for i in range(n)
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def _pacer(pacing: Pacing | None = None, clock: FakeClock | None = None) -> Pacer:
    clock = clock or FakeClock()
    return Pacer(
        pacing or Pacing(interval_s=0), sleep=clock.sleep, clock=clock, rng=random.Random(0)
    )


def test_the_real_ddgs_client_speaks_the_stand_ins_protocol() -> None:
    with SearchHost({"grizzly": _listings("grizzly", 250)}, per_query=180) as engine:
        search = image_search("duckduckgo", SearchOptions(base_url=engine.base_url, layout="Wide"))
        first = search.page("grizzly bear", 1)
        second = search.page("grizzly bear", 2)
        assert len(first.hits) == 100 and first.more
        assert first.hits[0].width == 900 and first.hits[0].title.startswith("grizzly")
        assert second.hits[0] in first.hits, "later pages repeat results"
        assert not second.more
        assert search.page("teddy bear", 1).hits == []
        paths = [path for _, path, _ in engine.requests]
        assert paths[:2] == ["/", "/i.js"], "a vqd token first, then results"
        _, query = engine.result_requests()[1]
        assert query["s"] == "100" and "layout:Wide" in query["f"] and query["vqd"].startswith("4-")

        for status in (403, 202, 429):
            engine.rate_limit(1, [status])
            with pytest.raises(RateLimited, match=str(status)):
                search.page("grizzly bear", 1)
    with pytest.raises(SearchUnavailable, match="onnect"):
        image_search("duckduckgo", SearchOptions(base_url=engine.base_url, timeout_s=2)).page(
            "grizzly bear", 1
        )


def test_a_class_fills_from_query_variants_in_rank_order_without_junk(tmp_path: Path) -> None:
    lists = {
        "grizzly": [f"http://img.test/g/{i}.jpg" for i in range(60)],
        "black": [f"http://img.test/b/{i}.jpg" for i in range(60)],
    }
    catalog = catalog_from_lists(lists)
    with SearchHost(catalog, per_query=25) as engine:
        search = image_search("duckduckgo", SearchOptions(base_url=engine.base_url))
        c = load_collection(tmp_path)
        rules = Rules(min_width=100, min_height=100)
        report = collect_class(search, _pacer(), c, "grizzly", "grizzly bear", 40, rules)

    assert report.collected == 40 and report.status == "full"
    urls = (tmp_path / "grizzly.txt").read_text().split()
    assert len(urls) == len(set(urls)) == 40
    assert not any("shutterstock" in u or "istockphoto" in u or "alamy" in u for u in urls)
    assert not any(u.endswith("?w=64") for u in urls), "thumbnail-sized results are filtered"
    assert report.blocked >= 1 and report.too_small >= 1
    rows = list(csv.DictReader(open(tmp_path / "urls.csv")))
    assert [r["url"] for r in rows] == urls
    assert {r["query"] for r in rows} >= set(query_variants("grizzly bear")[:2])
    first_query = [r for r in rows if r["query"] == "grizzly bear"]
    ranks = [int(r["rank"]) for r in first_query]
    assert ranks == sorted(ranks), "kept in the engine's rank order"
    assert all(r["provider"] == "duckduckgo" and r["width"] and r["time"] for r in rows)


def test_a_rerun_leaves_full_classes_alone_and_tops_up_short_ones(tmp_path: Path) -> None:
    with SearchHost({"grizzly": _listings("grizzly", 80)}, per_query=30) as engine:
        search = image_search("duckduckgo", SearchOptions(base_url=engine.base_url))
        collect_class(search, _pacer(), load_collection(tmp_path), "grizzly", "grizzly bear", 20)
        before = (tmp_path / "grizzly.txt").read_text()
        asked = len(engine.result_requests())

        again = collect_class(
            search, _pacer(), load_collection(tmp_path), "grizzly", "grizzly bear", 20
        )
        assert again.queries == 0 and len(engine.result_requests()) == asked
        more = collect_class(
            search, _pacer(), load_collection(tmp_path), "grizzly", "grizzly bear", 50
        )
    after = (tmp_path / "grizzly.txt").read_text()
    assert after.startswith(before) and len(after.split()) == 50
    assert more.new == 30
    # The top-up went on from where the first run stopped, not from page 1 of the first query.
    assert (tmp_path / STATE_NAME).exists()


def test_rate_limits_back_off_with_jitter_then_stop_with_what_to_do(tmp_path: Path) -> None:
    clock = FakeClock()
    pacing = Pacing(interval_s=1.0, attempts=4, backoff_s=4.0)
    with SearchHost({"grizzly": _listings("grizzly", 30)}) as engine:
        search = image_search("duckduckgo", SearchOptions(base_url=engine.base_url))
        pacer = _pacer(pacing, clock)
        engine.rate_limit(2)
        page = pacer.page(search, "grizzly bear", 1)
        assert len(page.hits) == 30
        backoffs = [s for s in clock.sleeps if s > 1.0]
        assert len(backoffs) == 2
        assert 2.0 <= backoffs[0] <= 6.0 and 4.0 <= backoffs[1] <= 12.0, backoffs

        pacer.page(search, "grizzly bear", 1)
        assert clock.sleeps[-1] == pytest.approx(1.0), "queries at least interval_s apart"

        engine.rate_limit(100)
        asked = len(engine.requests)
        c = load_collection(tmp_path)
        with pytest.raises(SearchGaveUp) as gave_up:
            collect_class(search, pacer, c, "grizzly", "grizzly bear", 10)
        message = str(gave_up.value)
        assert "rate-limited" in message and "4 tries" in message
        assert "proxy" in message and "Wait" in message and "run the same command" in message
        assert len(engine.requests) - asked == 4, "bounded: no endless retry loop"


class _Fake:
    """A provider that answers from a dict: query -> pages of URLs."""

    name = "fake"

    def __init__(self, pages: dict[str, list[list[str]]]) -> None:
        self.pages = pages

    def page(self, query: str, number: int) -> SearchPage:
        pages = self.pages.get(query, [])
        urls = pages[number - 1] if number <= len(pages) else []
        return SearchPage([ImageHit(u, width=500, height=400) for u in urls], number < len(pages))


def test_a_url_under_two_classes_is_left_out_of_both_unless_asked(tmp_path: Path) -> None:
    fake = _Fake(
        {
            "grizzly bear": [["http://a/1", "http://a/shared", "http://a/2"]],
            "black bear": [["http://b/1", "http://a/shared", "http://b/2"]],
        }
    )
    c = load_collection(tmp_path / "strict")
    collect_class(fake, _pacer(), c, "grizzly", "grizzly bear", 3)
    report = collect_class(fake, _pacer(), c, "black", "black bear", 3)
    assert report.conflicts == ["http://a/shared"]
    assert (tmp_path / "strict" / "grizzly.txt").read_text().split() == ["http://a/1", "http://a/2"]
    assert (tmp_path / "strict" / "black.txt").read_text().split() == ["http://b/1", "http://b/2"]
    assert "http://a/shared" in load_collection(tmp_path / "strict").excluded

    kept = load_collection(tmp_path / "kept")
    collect_class(fake, _pacer(), kept, "grizzly", "grizzly bear", 3, Rules(keep_conflicts=True))
    collect_class(fake, _pacer(), kept, "black", "black bear", 3, Rules(keep_conflicts=True))
    assert "http://a/shared" in (tmp_path / "kept" / "black.txt").read_text()


def test_other_errors_are_raised_as_they_are(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def page(self, query: str, number: int) -> SearchPage:
            raise ValueError("bad region 'xx-yy'")

    with pytest.raises(ValueError, match="xx-yy"):
        collect_class(Broken(), _pacer(), load_collection(tmp_path), "g", "g", 5)


@pytest.mark.usefixtures("prefect_harness")
def test_ursa_urls_writes_lists_that_ingest_reads(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.artifacts import Artifact

    from app.cli import main
    from tasks.sources import read_source

    catalog = {"grizzly": _listings("grizzly", 40), "black": _listings("black", 40)}
    catalog["black"].insert(2, catalog["grizzly"][1])  # the same image under two classes
    with SearchHost(catalog, per_query=100) as engine:
        monkeypatch.setenv("URSA_SEARCH_URL", engine.base_url)
        out = tmp_path / "bears"
        args = [
            "urls",
            "grizzly=grizzly bear",
            "black=black bear",
            "--max",
            "12",
            "--out",
            str(out),
        ]
        assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".urls-state.json",
        "black.txt",
        "grizzly.txt",
        "urls.csv",
    ]
    rows = read_source(out, data_dir)
    assert {r.label for r in rows} == {"grizzly", "black"}
    assert len([r for r in rows if r.label == "grizzly"]) == 12
    assert catalog["grizzly"][1].image not in {r.url for r in rows}

    table = json.loads(Artifact.get("urls-counts").data)  # the latest of that key
    assert {r["label"]: (r["collected"], r["target"]) for r in table} == {
        "grizzly": (12, 12),
        "black": (12, 12),
    }

    # Stock sites are left out unless --allow-stock; --block leaves out more domains.
    stock = Listing(
        "https://www.shutterstock.com/g.jpg", "grizzly", "https://www.shutterstock.com/g", 900, 600
    )
    other = Listing("http://cdn.blocked.test/g.jpg", "grizzly", "http://blocked.test/g", 900, 600)
    small = {"grizzly": [*_listings("grizzly", 10), stock, other]}
    plain = {x.image for x in small["grizzly"][:10]}
    with SearchHost(small, per_query=100) as engine:
        monkeypatch.setenv("URSA_SEARCH_URL", engine.base_url)
        for name, options, expected in [
            ("blocked", ["--block", "blocked.test"], plain),
            ("allowed", ["--allow-stock"], plain | {stock.image, other.image}),
        ]:
            args = ["urls", "grizzly=grizzly bear", "--max", "12", "--out", str(tmp_path / name)]
            assert main([*args, *options]) == 0
            assert {r.url for r in read_source(tmp_path / name, data_dir)} == expected
