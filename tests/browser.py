"""Headless Chromium for the browser tests (selenium driving Debian's chromium and chromedriver, which
.ci/run installs): one place for the options, and a one-line skip when any of them is missing."""

import shutil

import pytest

CHROME = next((p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None)
DRIVER = shutil.which("chromedriver")


def start_chromium(width: int, height: int):
    """A headless Chromium WebDriver of that window size that keeps the page's console log."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if CHROME is None or DRIVER is None:
        pytest.skip("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which(CHROME)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)
