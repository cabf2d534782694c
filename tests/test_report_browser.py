"""report.html in a real browser (headless Chromium driven by selenium): no console errors, no broken
images, pointing at a CompNN pixel names the training image it came from, and the legend names every
class. Skips with one line when Chromium, chromedriver or selenium is missing."""

import shutil
from pathlib import Path

import pytest

from browser import start_chromium
from report_run import tiny_run


@pytest.fixture(scope="module")
def browser():
    drv = start_chromium(1400, 1000)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    pytest.importorskip("tensorflow")
    out = tiny_run(tmp_path_factory)
    # Alone in a fresh directory: the page must not need anything beside it.
    alone = tmp_path_factory.mktemp("moved") / "report.html"
    shutil.copy(out / "report.html", alone)
    browser.get(Path(alone).as_uri())
    return browser


def test_no_console_errors_and_no_broken_images(page):
    severe = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    images = page.execute_script(
        "return [...document.querySelectorAll('img[src]')].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) >= 3 * 5 + 5  # query panels + analysis figures
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, broken


def test_pointing_at_a_compnn_pixel_shows_its_source(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    mark = page.find_element(By.CSS_SELECTOR, ".pic.live .mark")
    assert mark.value_of_css_property("display") == "none"  # no marker before any interaction
    img = page.find_element(By.ID, "compnn-0")
    page.execute_script("arguments[0].scrollIntoView()", img)
    ActionChains(page).move_to_element(img).click().perform()
    caption = page.find_element(By.ID, "cap-0").text
    assert "was copied from" in caption and "of training image" in caption, caption
    data = page.execute_script("return DATA")
    ids = {t["id"] for t in data["train"].values()}
    named = caption.split("of training image ")[1].split(" ")[0]
    assert named in ids
    assert mark.value_of_css_property("display") == "block"
    shown = page.execute_script(
        "return [...document.querySelectorAll('#src-0 .pic img')].map(i => i.naturalWidth)")
    assert len(shown) == 3 and all(w > 0 for w in shown)
    assert not [e for e in page.get_log("browser") if e["level"] == "SEVERE"]


def test_legend_names_every_class(page):
    from compnn_py.data import TASKS
    from selenium.webdriver.common.by import By

    items = [li.text.strip() for li in page.find_elements(By.CSS_SELECTOR, "#legend li")]
    for name in TASKS["cityscapes"].class_names:
        assert name in items, (name, items)


def test_a_folded_section_opens_on_click_and_from_the_navigation(page):
    from selenium.webdriver.common.by import By

    first = page.find_element(By.CSS_SELECTOR, "#matching > p")
    assert not first.is_displayed()  # folded when the page opens
    summary = page.find_element(By.CSS_SELECTOR, "#matching > summary")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
    summary.click()
    assert first.is_displayed() and page.execute_script("return document.getElementById('matching').open")
    summary.click()
    assert not first.is_displayed()
    # Following the navigation's link to a folded section unfolds it.
    assert not page.execute_script("return document.getElementById('run').open")
    page.find_element(By.CSS_SELECTOR, "nav a[href='#run']").click()
    assert page.execute_script("return document.getElementById('run').open")
    assert page.find_element(By.CSS_SELECTOR, "#run table").is_displayed()
    # The second query starts folded and opens on click, like a section.
    q1 = page.find_element(By.ID, "compnn-1")
    assert not q1.is_displayed()
    q1_summary = page.find_element(By.CSS_SELECTOR, "#query-1 > summary")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", q1_summary)
    q1_summary.click()
    assert q1.is_displayed()


def test_figure_and_chart_words_are_readable_text(page):
    """Picture titles and chart labels are page text at 13 px or more (they were ~6 px bitmap text)."""
    sizes = page.execute_script(
        "return [...document.querySelectorAll('figure.cell figcaption, figure.chart svg text, figure.chart "
        "figcaption, .scale .ends span')].map(e => [e.textContent, parseFloat(getComputedStyle(e).fontSize)])")
    assert len(sizes) > 20
    small = [(t, s) for t, s in sizes if s < 13]
    assert not small, small
