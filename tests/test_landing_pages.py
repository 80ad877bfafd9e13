"""The click-to-chat landing pages over HTTP (server.http), on a live server's HTTP port.

What a browser, a scanner and a load balancer get: the page with the business's verified name,
about and prefilled text, the QR code as PNG (decoded back to the link's URL) and SVG, our own
404 pages, number links, `/healthz`, and the security headers on every answer. Opening the page
counts one open; fetching its QR image does not. The same pages in a real browser:
tests/test_landing_browser.py.
"""

from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import zxingcpp
from parley.v1 import account_pb2 as apb
from parley.v1 import admin_pb2 as adm
from parley.v1 import admin_pb2_grpc, business_pb2_grpc
from parley.v1 import business_pb2 as bpb
from parley.v1 import chat_links_pb2 as lpb
from PIL import Image

from server import config
from server.http import CSP
from tests.conftest import Device, LiveServer, ServerFactory, register
from tests.test_startup import start_fails

SHOP = "+15550003333"
PERSON = "+15550001111"
TOKEN = "landing-operator-token"
TEXT = 'Hi! Is the <b>spring sale</b> on? "20%" & more'


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def fetch(server: LiveServer, path: str) -> Answer:
    url = f"http://localhost:{server.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return Answer(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, dict(exc.headers), exc.read())


def decode_qr(png: bytes) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))]


@dataclass
class Shop:
    server: LiveServer
    device: Device
    stub: business_pb2_grpc.BusinessServiceStub
    link: lpb.ChatLink

    def counters(self) -> tuple[int, int]:
        reply = self.stub.ListChatLinks(lpb.ListChatLinksRequest(), metadata=self.device.metadata)
        (link,) = reply.links
        return link.opens, link.chats_started


def verified_shop(server: LiveServer) -> Shop:
    """A business whose name the operator approved, with one chat link."""
    device = register(server, SHOP, apb.ACCOUNT_KIND_BUSINESS)
    stub = business_pb2_grpc.BusinessServiceStub(server.channel())
    stub.UpdateBusinessProfile(
        bpb.UpdateBusinessProfileRequest(
            fields=bpb.BusinessProfileFields(display_name="Acme Shoes", about="Shoes since 1990")
        ),
        metadata=device.metadata,
    )
    admin_pb2_grpc.AdminServiceStub(server.channel()).ReviewBusinessName(
        adm.ReviewBusinessNameRequest(
            account_id=device.account_id, decision=adm.REVIEW_DECISION_APPROVE
        ),
        metadata=(("authorization", f"Bearer {TOKEN}"),),
    )
    link = stub.CreateChatLink(
        lpb.CreateChatLinkRequest(prefilled_text=TEXT, label="poster"), metadata=device.metadata
    ).link
    return Shop(server, device, stub, link)


@pytest.fixture
def web_server(make_server: ServerFactory) -> LiveServer:
    return make_server(
        test_numbers={SHOP: "333333", PERSON: "123456"}, admin_token=TOKEN, http_port=0
    )


def assert_secure(answer: Answer) -> None:
    h = answer.headers
    assert h["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "script-src" not in CSP
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["Server"] == "Parley", "no software name and version for scanners"


def test_landing_page_shows_the_business_and_counts_the_open(web_server: LiveServer) -> None:
    shop = verified_shop(web_server)
    link = shop.link
    assert link.url == f"http://localhost:{web_server.http_port}/c/{link.code}"
    assert shop.counters() == (0, 0)

    page = fetch(web_server, f"/c/{link.code}")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert_secure(page)
    assert page.headers["Cache-Control"] == "no-store"  # every open reaches the server
    html = page.text
    assert '<html lang="en">' in html and "<h1>Acme Shoes</h1>" in html
    assert "Verified business" in html and "Shoes since 1990" in html
    # The prefilled text, escaped: markup in it stays text.
    assert "Hi! Is the &lt;b&gt;spring sale&lt;/b&gt; on? &quot;20%&quot; &amp; more" in html
    assert "<b>" not in html and "<script" not in html
    assert f'href="parley://chat?code={link.code}"' in html
    assert f'<img src="/c/{link.code}.png"' in html and 'alt="QR code of this chat link' in html
    assert '<label for="prefilled">' in html and '<textarea id="prefilled"' in html
    assert shop.counters() == (1, 0)

    png = fetch(web_server, f"/c/{link.code}.png")
    assert png.status == 200 and png.headers["Content-Type"] == "image/png"
    assert_secure(png)
    assert decode_qr(png.body) == [link.url]
    svg = fetch(web_server, f"/c/{link.code}.svg")
    assert svg.status == 200 and svg.headers["Content-Type"] == "image/svg+xml"
    assert svg.body.lstrip().startswith(b"<?xml") and b"<svg" in svg.body
    assert shop.counters() == (1, 0)  # the QR images are not opens


def test_unknown_links_and_paths_get_a_404_page(web_server: LiveServer) -> None:
    shop = verified_shop(web_server)
    for path in ("/c/AAAAAAAAAAAAAAAA", "/c/short", "/c/AAAAAAAAAAAAAAAA.png", "/nothing/here"):
        answer = fetch(web_server, path)
        assert answer.status == 404, path
        assert_secure(answer)
        assert '<html lang="en">' in answer.text and "<h1>" in answer.text, path
    shop.stub.DeleteChatLink(
        lpb.DeleteChatLinkRequest(code=shop.link.code), metadata=shop.device.metadata
    )
    gone = fetch(web_server, f"/c/{shop.link.code}")
    assert gone.status == 404 and "does not exist" in gone.text


def test_number_links_and_health(web_server: LiveServer) -> None:
    verified_shop(web_server)
    person = register(web_server, PERSON)
    page = fetch(web_server, "/p/15550003333?text=Hello%20Acme")
    assert page.status == 200 and "<h1>Acme Shoes</h1>" in page.text
    assert ">Hello Acme</textarea>" in page.text
    assert 'href="parley://chat?phone=%2B15550003333&amp;text=Hello+Acme"' in page.text
    # A person's number is no public link until they allow it; the answer does not say
    # whether the number is on Parley.
    refused = fetch(web_server, "/p/15550001111")
    unknown = fetch(web_server, "/p/442071838750")
    assert refused.status == unknown.status == 404
    assert refused.text == unknown.text
    business_pb2_grpc.BusinessServiceStub(web_server.channel()).SetChatLinkSettings(
        lpb.SetChatLinkSettingsRequest(number_links=True), metadata=person.metadata
    )
    assert fetch(web_server, "/p/15550001111").status == 200
    too_long = fetch(web_server, "/p/15550003333?text=" + "x" * 141)
    assert too_long.status == 400 and "at most 140" in too_long.text

    health = fetch(web_server, "/healthz")
    assert (health.status, health.text) == (200, "ok\n")
    assert_secure(health)


def test_http_is_off_unless_asked_for(make_server: ServerFactory) -> None:
    server = make_server()
    with pytest.raises(AssertionError, match="no HTTP"):
        _ = server.http_port


def test_a_taken_http_port_is_a_one_line_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = start_fails(
            "--host", "127.0.0.1", "--port", "0", "--http-port", str(port),
            "--database", str(tmp_path / "p.db"),
        )  # fmt: skip
    assert f"cannot serve the landing pages on 127.0.0.1:{port}" in line
    assert "choose another --http-port" in line


def test_http_settings_parse_and_refuse_clearly() -> None:
    assert config.load([], environ={}).http_port is None
    assert config.load(["--http-port", "off"], environ={}).http_port is None
    assert config.load([], environ={"PARLEY_HTTP_PORT": "0"}).http_port == 0
    url = config.load(["--public-url", "https://chat.example.com/"], environ={}).public_url
    assert url == "https://chat.example.com"
    for argv, words in (
        (["--http-port", "70000"], "not a port"),
        (["--public-url", "chat.example.com"], "not a base URL"),
        (["--port", "8080", "--http-port", "8080"], "must differ from --port"),
    ):
        with pytest.raises(SystemExit, match=words):
            config.load(argv, environ={})
