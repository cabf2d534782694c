"""The explorer's page in a real browser (headless Chromium driven by selenium, as the report's browser
test): it loads without console errors, a click on an output pixel lists the exact top-k training
sources the API gives for that position, with their pictures and the block marked. Skips with one line
when Chromium, chromedriver or selenium is missing."""

import pytest

from browser import start_chromium
from explore_server import Server, fake_run


@pytest.fixture(scope="module")
def browser():
    drv = start_chromium(1400, 1100)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(fake_run(tmp_path_factory.mktemp("explore_browser")))
    yield s
    s.stop()


def _wait(drv, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(condition)


def test_click_a_pixel_lists_the_exact_top_k(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    _wait(browser, lambda d: "Click any pixel" in d.find_element(By.ID, "status").text)
    img = browser.find_element(By.ID, "pic-cnn")
    _wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0)
    # The pictures are 16x16 pixels shown 300 px wide; the fine layer (8x8, stride 2) has position
    # (y, x) = (py // 2, px // 2). Click inside pixel (py, px) = (5, 11).
    scale = img.size["width"] / 16
    ActionChains(browser).move_to_element_with_offset(img, int((11.5 - 8) * scale), int((5.5 - 8) * scale)) \
        .click().perform()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sources li")) == 5)
    status, api = server.get("/api/provenance?query=0&y=2&x=5&layer=fine&k=5")
    assert status == 200
    title = browser.find_element(By.ID, "answer-title").text
    assert "Pixel (5, 11)" in title and "position (2, 5) of fine" in title, title
    items = browser.find_elements(By.CSS_SELECTOR, "#sources li")
    shown = [li.find_element(By.CSS_SELECTOR, ".similarity").text for li in items]
    assert shown == [f"{s['similarity']:.4f}" for s in api["sources"]]
    for li, s in zip(items, api["sources"]):
        assert f"training image {s['image']} " in li.text and f"position ({s['y']}, {s['x']})" in li.text
    _wait(browser, lambda d: all(d.execute_script(
        "return [...document.querySelectorAll('#sources img')].map(i => i.complete && i.naturalWidth > 0)")))
    boxes = browser.find_elements(By.CSS_SELECTOR, "#sources .box.patch")
    assert len(boxes) == 5 and all(b.size["width"] > 0 for b in boxes)
    assert "Table 1's matcher (shortlist)" in browser.find_element(By.ID, "table1").text
    assert "training images have a position within 0.01" in browser.find_element(By.ID, "ambiguity").text
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_a_bad_upload_shows_a_message(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    _wait(browser, lambda d: "Click any pixel" in d.find_element(By.ID, "status").text)
    import tempfile

    # A garbage file through the page's own upload form.
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
        f.write(b"this is not a png")
    browser.find_element(By.ID, "upload").send_keys(f.name)
    browser.find_element(By.ID, "upload-button").click()
    _wait(browser, lambda d: "Upload refused" in d.find_element(By.ID, "status").text)
    assert "not an image" in browser.find_element(By.ID, "status").text
    assert server.get("/api/info")[0] == 200
