"""The results page in a real browser (headless system Chromium through Playwright), on SQLite
and PostgreSQL, with rows written by the pipeline's writer: what a person sees and does."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.fixtures_browser import serve_in_thread
from tests.review_rows import SCRIPT_ID, expected_review_next, expected_suspicious, fill, write_drifted_report
from vectorai import db
from vectorai.review.app import ReviewSettings

pytestmark = pytest.mark.browser


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("pg_database")
    else:
        url = db.sqlite_url(tmp_path / "results.sqlite")
    connected = db.connect(url)
    yield connected
    connected.close()


@pytest.fixture
def site(database, tmp_path):
    fill(database)
    yield from serve_in_thread(database, ReviewSettings(reviewer="browser-test", facets_ttl_s=0))


@pytest.fixture
def filled(database, tmp_path):
    """The rows, and the page serving them, with run reports (only the fields the review order
    reads) that flag some rows' run as drifted."""
    rows = fill(database)
    write_drifted_report(tmp_path / "reports")
    settings = ReviewSettings(reviewer="browser-test", facets_ttl_s=0, reports_dir=tmp_path / "reports")
    for url in serve_in_thread(database, settings):
        yield rows, url


def _cards(page) -> list[str]:
    return page.locator(".card .message-id").all_inner_texts()


def test_the_grid_shows_images_and_filters_change_it(page, site):
    page.goto(f"{site}/predictions?limit=120")
    page.wait_for_load_state("networkidle")
    widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)")
    assert len(widths) == 60 and min(widths) > 0  # PNG, JPEG and raw payloads alike, all re-encoded
    page.screenshot(path=str(page.screenshots / "predictions.png"), full_page=True)
    everything = _cards(page)

    page.select_option("select[name=cls]", "2")
    page.click("form#filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    class_two = page.locator(".card .predicted").all_inner_texts()
    assert class_two and len(class_two) < len(everything) and all(t.startswith("2 ") for t in class_two)

    page.select_option("select[name=cls]", "")
    page.eval_on_selector("#below", "e => { e.value = '0.5'; e.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#below-value") == "0.50"
    page.click("form#filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    confidences = [float(t) for t in page.locator(".card .confidence").all_inner_texts()]
    assert confidences and max(confidences) < 0.5 and len(confidences) < len(everything)

    page.goto(f"{site}/predictions?limit=120")
    page.check("input[name=wrong]")
    page.click("form#filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert 0 < page.locator(".card.wrong").count() == page.locator(".card").count() < len(everything)


def test_review_next_and_suspicious_labels_show_the_expected_cards(page, filled):
    rows, site = filled
    page.goto(f"{site}/predictions?limit=30")
    page.select_option("select#order", "next")
    page.click("form#filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert _cards(page) == expected_review_next(rows)[:30]
    assert page.locator(".card .margin").count() == 30
    page.screenshot(path=str(page.screenshots / "review-next.png"), full_page=True)
    page.click("#next-page")
    page.wait_for_load_state("networkidle")
    assert _cards(page) == expected_review_next(rows)[30:60]

    page.click("#suspicious-labels")
    page.wait_for_load_state("networkidle")
    assert _cards(page) == expected_suspicious(rows)
    assert page.locator(".card.wrong").count() == page.locator(".card").count() > 0
    odds = [float(t.split()[-1]) for t in page.locator(".card .label-probability").all_inner_texts()]
    assert odds == sorted(odds) and max(odds) < 0.5

    # A correction made in "review next" takes the image out of it: the next page load starts after it.
    page.click("#review-next")
    page.wait_for_load_state("networkidle")
    with page.expect_response(lambda r: r.url.endswith("/review") and r.status == 200):
        page.keyboard.press("1")
    first = rows.index(next(r for r in rows if r["message_id"] == expected_review_next(rows)[0]))
    page.reload()
    page.wait_for_load_state("networkidle")
    assert _cards(page) == expected_review_next(rows, {first})[:60]


def test_a_correction_made_with_the_keyboard_is_stored(page, site, database):
    page.goto(f"{site}/predictions?unreviewed=1")
    page.wait_for_load_state("networkidle")
    first = page.locator(".card").first
    message_id = first.get_attribute("data-id")
    assert first.evaluate("e => e === document.activeElement")  # selected on load
    with page.expect_response(lambda r: r.url.endswith("/review") and r.status == 200):
        page.keyboard.press("2")
    # The page updates the card after the response arrives: wait for what a person would see.
    expect(first).to_contain_text("reviewed 2 class2")
    expect(page.locator(".card").nth(1)).to_be_focused()  # the next image is selected

    stored = [(r.message_id, r.label, r.reviewer) for r in db.Review.select()]
    assert stored == [(message_id, 2, "browser-test")]
    with page.expect_response(lambda r: r.url.endswith("/review") and r.status == 200):
        page.keyboard.press("0")
    page.reload()
    page.wait_for_load_state("networkidle")
    assert message_id not in page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)")
    assert db.Review.select().count() == 2


def test_hostile_ids_are_text_and_never_run(page, site):
    page.goto(f"{site}/predictions?limit=120")
    page.wait_for_load_state("networkidle")
    assert SCRIPT_ID in _cards(page)
    page.goto(f"{site}/dead-letters")
    page.wait_for_load_state("networkidle")
    assert SCRIPT_ID in page.locator(".dead-letter .message-id").all_inner_texts()
    assert "<script>window.__pwned = 1</script>" in page.locator(".attributes").first.inner_text()
    assert page.evaluate("() => window.__pwned") is None


def test_dead_letters_confusion_and_runs(page, site):
    page.goto(f"{site}/dead-letters")
    page.wait_for_load_state("networkidle")
    reasons = page.locator(".dead-letter .reason").all_inner_texts()
    assert "label 'seven' is not an integer" in reasons and len(reasons) == 3
    widths = page.eval_on_selector_all(".dead-letter img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and min(widths) > 0  # the payload that still decodes is shown
    hex_view = page.locator(".hex").first.inner_text()  # the newest: the text/html payload
    assert hex_view.startswith("0000  3c 73 63 72 69 70 74 3e") and "<script>window._\n" in hex_view
    page.screenshot(path=str(page.screenshots / "dead-letters.png"), full_page=True)
    page.select_option("select[name=kind]", "cannot decode image")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert page.locator(".dead-letter .reason").all_inner_texts() == ["cannot decode image: broken PNG file"]

    page.goto(f"{site}/confusion")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(page.screenshots / "confusion.png"), full_page=True)
    cell = page.locator("table.confusion td.off a").first
    count = int(cell.inner_text())
    cell.click()
    page.wait_for_load_state("networkidle")
    assert re.search(r"true=\d", page.url) and page.locator(".card").count() == count
    assert page.locator(".card.wrong").count() == count

    page.goto(f"{site}/")
    page.wait_for_load_state("networkidle")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("svg.bars rect").count() == 3  # three classes predicted
    page.screenshot(path=str(page.screenshots / "runs.png"), full_page=True)


def test_a_token_is_asked_for_once(page, database, tmp_path):
    fill(database, count=6)
    for base in serve_in_thread(database, ReviewSettings(reviewer="t", token="open-sesame", facets_ttl_s=0)):
        page.goto(f"{base}/predictions")
        assert "/login" in page.url
        page.fill("input[name=token]", "open-sesame")
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        assert page.locator(".card").count() == 6
        page.goto(f"{base}/dead-letters")
        assert "/login" not in page.url and page.locator(".dead-letter").count() == 3
