"""One cleaning round for real: ingest the embedded default, rank it (the clean flow), review
in a headless Chromium (Debian's ``chromium`` driven by Playwright; `make test` installs it),
rerun ingest, and read the manifest. Plus the review API's refusals, over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from flows.clean import clean
from flows.ingest import ingest
from serving.app import create_app
from tasks.manifest import ImageRow, load_dataset, read_rows
from tests.live import LiveServer
from tests.test_page_browser import CHROMIUM, CHROMIUM_ARGS
from ursa.ledger import effective, ledger_path, read_entries
from ursa.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
TOKEN = "review-test-token"


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> Iterator[Settings]:
    """An ingested and ranked embedded default (small), with an admin token set; shared by
    the tests of this module, each of which starts from an empty ledger."""
    data_dir = tmp_path_factory.mktemp("review") / "data"
    data_dir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("URSA_DATA_DIR", str(data_dir))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{data_dir / 'mlflow.db'}")
        mp.setenv("URSA_ADMIN_TOKEN", TOKEN)
        mp.setenv("URSA_POLL_INTERVAL_S", "0")
        ingest(source="embedded", max_per_class=6, timeout_s=3.0)
        clean(folds=2, epochs=1, image_size=16, batch_size=32)
        yield Settings.from_env()


@pytest.fixture(autouse=True)
def empty_ledger(ranked: Settings) -> None:
    ledger_path(ranked.data_dir).unlink(missing_ok=True)


def test_review_in_the_browser_then_ingest_applies_the_decisions(ranked: Settings) -> None:
    data_dir = ranked.data_dir
    before = load_dataset(data_dir / "datasets" / "dataset.csv")
    with LiveServer(create_app(ranked)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        urls: list[str] = []  # every URL the page asks for: none may carry the token
        page.on("request", lambda request: urls.append(request.url))
        page.goto(server.url + "/review")
        # The login form first; a wrong token is refused.
        page.fill("#name", "alice")
        page.fill("#token", "wrong")
        page.click("#login")
        expect(page.locator(".error")).to_contain_text("not the admin token")
        page.fill("#name", "alice")
        page.fill("#token", TOKEN)
        page.click("#login")
        cards = page.locator(".card")
        expect(cards.first).to_be_visible()
        expect(page.locator("#pageinfo")).to_contain_text("page 1 of")
        [cookie] = page.context.cookies()
        assert cookie["httpOnly"] and cookie["path"] == "/review"
        assert cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]

        # Relabel the first kept suspect with the mouse: pick a class that is not its label.
        first = page.locator(".card", has=page.locator("img")).filter(has_not_text="label_conflict")
        relabel_card = first.nth(0)
        relabel_sha = relabel_card.get_attribute("data-sha256")
        given = relabel_card.get_attribute("data-given")
        classes = relabel_card.locator("select.relabel-to option").all_inner_texts()
        new_label = next(c for c in classes if c != given)
        relabel_card.locator("select.relabel-to").select_option(new_label)
        relabel_card.locator("button.relabel").click()
        expect(relabel_card.locator(".decision")).to_contain_text(f"relabel to {new_label}")

        # Remove another one with the keyboard: select it, press x.
        remove_card = first.nth(1)
        remove_sha = remove_card.get_attribute("data-sha256")
        remove_card.locator("img").click()
        expect(remove_card).to_have_class("card selected")
        page.keyboard.press("x")
        expect(remove_card.locator(".decision")).to_contain_text("remove")
        # The selection moved on; keep the next one (k), then undo it (u).
        kept_card = page.locator(".card.selected")
        kept_sha = kept_card.get_attribute("data-sha256")
        page.keyboard.press("k")
        expect(page.locator(f'.card[data-sha256="{kept_sha}"] .decision').first).to_contain_text(
            "keep"
        )
        page.locator(f'.card[data-sha256="{kept_sha}"] img').first.click()
        page.keyboard.press("u")
        expect(page.locator("#status")).to_contain_text("undone")
        expect(page.locator(f'.card[data-sha256="{kept_sha}"] .decision').first).to_have_text("")

        # Paging: the next page shows other images.
        if page.locator("#next").is_enabled():
            page.keyboard.press("n")
            expect(page.locator("#pageinfo")).to_contain_text("page 2 of")
            assert page.locator(f'.card[data-sha256="{relabel_sha}"]').count() == 0

        csv_text = page.request.get(server.url + "/review/api/ledger.csv").text()
        assert "alice" in csv_text and f"relabel:{new_label}" in csv_text
        browser.close()
    assert not errors, errors
    assert urls and not [url for url in urls if TOKEN in url]

    entries = read_entries(ledger_path(data_dir))
    assert [e.action for e in entries] == ["relabel", "remove", "keep", "undo"]
    assert {e.who for e in entries} == {"alice"}
    in_force = effective(entries)
    assert in_force[relabel_sha].decision == f"relabel:{new_label}"
    assert in_force[remove_sha].decision == "remove"
    assert kept_sha not in in_force

    # The next ingest applies the ledger.
    after = ingest(source="embedded", max_per_class=6, timeout_s=3.0).dataset
    rows = read_rows(Path(after.manifest_path), ImageRow)
    [moved] = [r for r in rows if r.sha256 == relabel_sha]
    assert (moved.label, moved.status) == (new_label, "kept")
    assert moved.review == f"relabel:{given}->{new_label}"
    gone = [r for r in rows if r.sha256 == remove_sha]
    assert gone and all(r.status == "removed" and r.split == "" for r in gone)
    assert after.digest != before.digest
    assert after.ledger_digest == hashlib.sha256(ledger_path(data_dir).read_bytes()).hexdigest()
    assert after.n_train + after.n_valid == before.n_train + before.n_valid - 1


def cookie_attributes(response: httpx.Response) -> set[str]:
    """The attributes of a response's Set-Cookie (lower case), without the name=value."""
    return {a.strip().lower() for a in response.headers["set-cookie"].split(";")[1:]}


def test_review_api_refusals(ranked: Settings) -> None:
    behind_proxy = replace(ranked, trusted_proxies=("127.0.0.1",))
    with LiveServer(create_app(behind_proxy)) as server, server.client() as http:
        assert http.get("/review/api/suspects").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert http.get("/review/api/suspects", headers=wrong).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}", "X-Ursa-Reviewer": "ci bot"}
        listing = http.get("/review/api/suspects?per_page=5&order=margin", headers=auth)
        assert listing.status_code == 200
        body = listing.json()
        assert len(body["items"]) == 5 and body["pages"] >= 2
        margins = [i["margin"] for i in body["items"]]
        assert margins == sorted(margins)
        item = body["items"][0]
        picture = http.get(f"/review/{item['image_url']}", headers=auth)
        assert picture.status_code == 200 and picture.content[:3] in (b"\x89PN", b"\xff\xd8\xff")
        for path in ("/review/api/images/" + "0" * 64, "/review/api/images/..%2Fmlflow.db"):
            assert http.get(path, headers=auth).status_code == 404
        assert http.get("/review/api/suspects?page=999", headers=auth).status_code == 400
        assert http.get("/review/api/suspects?order=random", headers=auth).status_code == 400

        post = "/review/api/decisions"
        sha = item["sha256"]
        for decision, message in (
            ("relabel:nope", "not one of the classes"),
            ("delete", "is not one of keep"),
        ):
            reply = http.post(post, headers=auth, json={"sha256": sha, "decision": decision})
            assert reply.status_code == 400 and message in reply.json()["error"]
        form = http.post(post, headers=auth, data={"sha256": sha, "decision": "keep"})
        assert form.status_code == 400  # not JSON
        unknown = http.post(post, headers=auth, json={"sha256": "f" * 64, "decision": "keep"})
        assert unknown.status_code == 400
        assert not ledger_path(ranked.data_dir).exists(), "a refused decision wrote nothing"
        ok = http.post(post, headers=auth, json={"sha256": sha, "decision": "keep"})
        assert ok.status_code == 201 and ok.json()["who"] == "ci bot"
        # A logged-in browser's cookie does not work from another site's page.
        cookie = http.post("/review/login", data={"name": "eve", "token": TOKEN})
        assert cookie.status_code == 303 and cookie.headers["location"] == "/review"
        attributes = cookie_attributes(cookie)
        assert {"httponly", "samesite=strict", "path=/review"} <= attributes
        assert "secure" not in attributes  # over plain http a browser would not send it back
        assert TOKEN not in cookie.headers["set-cookie"]
        # Behind a proxy that ends TLS (URSA_TRUSTED_PROXIES names 127.0.0.1) it is Secure.
        # Sent outside the client, so that its cookie jar keeps the plain one.
        proxied = httpx.post(
            f"{server.url}/review/login",
            data={"name": "eve", "token": TOKEN},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert {"secure", "httponly", "samesite=strict"} <= cookie_attributes(proxied)
        cross = http.post(
            post,
            json={"sha256": sha, "decision": "remove"},
            headers={"Origin": "http://evil.example"},
        )
        assert cross.status_code == 403
        assert [e.action for e in read_entries(ledger_path(ranked.data_dir))] == ["keep"]

    # With no trusted proxy, anyone may send the header: it is not believed.
    with LiveServer(create_app(ranked)) as server:
        spoofed = httpx.post(
            f"{server.url}/review/login",
            data={"name": "eve", "token": TOKEN},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert spoofed.status_code == 303 and "secure" not in cookie_attributes(spoofed)

    # No admin token configured: no review routes at all.
    with LiveServer(create_app(replace(ranked, admin_token=""))) as server, server.client() as c:
        assert c.get("/review").status_code == 404
