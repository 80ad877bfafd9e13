"""The landing page in a real browser: headless Chromium opens `/c/<code>` on a live server.

Driven by Selenium through Debian's chromedriver (`apt-get install chromium chromium-driver`),
never a browser downloaded at test time. It checks what a person sees (the verified business
name, the prefilled text, the "Open in Parley" link), that the QR image actually loaded under
the page's Content-Security-Policy (naturalWidth > 0), and that the QR code decodes back to the
link's URL, both from the PNG the page loads and from the browser's own screenshot (so what is
on screen scans). The screenshot is kept in `test-artifacts/` (git-ignored) for a person to
look at. Without Chromium the test is skipped with the command that installs it; CI
(`.ci/run`) installs it and sets PARLEY_REQUIRE_ALL=1, which turns that skip into a failure.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.conftest import LiveServer, ServerFactory
from tests.test_landing_pages import PERSON, SHOP, TEXT, TOKEN, decode_qr, fetch, verified_shop

CHROMIUM = Path(os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PARLEY_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
INSTALL = "apt-get install -y chromium chromium-driver (as root; .ci/run does it)"
# For this machine and CI: no sandbox (root in a container), no GPU, and nothing that talks to
# the network on its own (updates, sync, QUIC probes).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=900,1400",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Chromium at {CHROMIUM} and chromedriver at {CHROMEDRIVER}: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(
        service=Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log")),
        options=options,
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


@pytest.fixture
def web_server(make_server: ServerFactory) -> LiveServer:
    return make_server(
        test_numbers={SHOP: "333333", PERSON: "123456"}, admin_token=TOKEN, http_port=0
    )


def test_landing_page_in_headless_chromium(
    web_server: LiveServer, browser: webdriver.Chrome
) -> None:
    shop = verified_shop(web_server)
    link = shop.link

    browser.get(link.url)
    assert browser.title == "Chat with Acme Shoes on Parley"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Acme Shoes"
    assert "Verified business" in browser.find_element(By.TAG_NAME, "main").text
    prefilled = browser.find_element(By.ID, "prefilled")
    assert prefilled.get_property("value") == TEXT
    label = browser.find_element(By.CSS_SELECTOR, "label[for=prefilled]")
    assert label.is_displayed()
    open_link = browser.find_element(By.LINK_TEXT, "Open in Parley")
    assert open_link.get_attribute("href") == f"parley://chat?code={link.code}"

    # The QR image loaded (the page's CSP allows images from its own origin only), is shown,
    # and has the alt text a screen reader reads.
    qr = browser.find_element(By.TAG_NAME, "img")
    assert qr.get_property("complete") is True
    natural_width = qr.get_property("naturalWidth")
    assert isinstance(natural_width, int) and natural_width > 0
    assert "QR code of this chat link" in (qr.get_attribute("alt") or "")
    # No script ran or was needed: there is none on the page.
    assert browser.find_elements(By.TAG_NAME, "script") == []

    # The PNG the page loads decodes to the link; so does the QR code on the screenshot.
    src = qr.get_attribute("src") or ""
    assert src == f"http://localhost:{web_server.http_port}/c/{link.code}.png"
    assert decode_qr(fetch(web_server, f"/c/{link.code}.png").body) == [link.url]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "landing-page.png"
    assert browser.save_screenshot(str(shot))
    on_screen = zxingcpp.read_barcodes(Image.open(io.BytesIO(shot.read_bytes())))
    assert [r.text for r in on_screen] == [link.url]

    # The browser's visit was one open, and the image fetch none.
    assert shop.counters() == (1, 0)

    # An unknown link shows the 404 page, also in the browser.
    browser.get(f"http://localhost:{web_server.http_port}/c/AAAAAAAAAAAAAAAA")
    assert browser.find_element(By.TAG_NAME, "h1").text == "This chat link does not exist"
