"""Click-to-chat's landing pages over HTTP, served by the gRPC server's process and event loop.

`/c/<code>` is what a chat link opens in a browser: the business's verified name and about,
the prefilled first message, the QR code, and an "Open in Parley" deep link
(`parley://chat?code=<code>`) that hands the link to the app. `/c/<code>.png` and `.svg` are
the QR code, `/p/<digits>?text=...` a number link, `/healthz` the load balancer's probe.

Why the pages are built this way:
- **Nothing to track.** Opening a page bumps the link's open counter (`server.domain.links`,
  rule 1) and nothing else: no cookie, no log line with the code or address, no third-party
  asset that would tell another server who opened what.
- **No script at all**, one inline stylesheet allowed by its hash, images from this origin
  only: a Content-Security-Policy of `default-src 'none'` makes injected markup inert even if
  escaping were ever missed, and the usual headers forbid framing, sniffing and referrers.
- **Accessible**: a language, one h1, headings in order, alt text on the QR code, a label on
  the prefilled text, a link (not a button faked with script) to open the app.
- The QR images are not counted (a page shows one on every open) and may be cached; the
  pages themselves are `no-store`, so every open reaches the server and is counted.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from server.domain.errors import DomainError, InvalidArgument, NotFound
from server.domain.links import ChatLinks, Resolution, qr_png, qr_svg

log = logging.getLogger("parley.http")

STYLE = """
body{font:18px/1.5 system-ui,sans-serif;margin:0;background:#f4f6f5;color:#111}
main{max-width:34rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:12px}
h1{font-size:1.6rem;margin:0 0 .25rem}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.badge{color:#0a5d2c;font-weight:600}
textarea{width:100%;box-sizing:border-box;font:inherit;padding:.5rem;border:1px solid #555}
a.open{display:inline-block;margin-top:1rem;padding:.75rem 1.25rem;border-radius:8px;
background:#0a5d2c;color:#fff;text-decoration:none;font-weight:600}
a.open:focus{outline:3px solid #111;outline-offset:2px}
img{display:block;width:16rem;height:16rem;max-width:100%;image-rendering:pixelated}
""".strip()
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'sha256-" + STYLE_HASH + "'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # aiohttp would announce itself and its version, which tells a scanner what to try.
    "Server": "Parley",
}
# A QR image of a live link never changes; an hour of caching spares repeated renders.
QR_CACHE = "public, max-age=3600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpBindError(Exception):
    """The HTTP port cannot be bound; the message says what to change."""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def not_found_page(what: str = "This chat link does not exist") -> web.Response:
    return _page(
        "Link not found · Parley",
        f"<h1>{html.escape(what)}</h1>\n"
        "<p>It may have been deleted, or the address is mistyped. Ask whoever shared it for a"
        " new link.</p>",
        status=404,
    )


def _who(r: Resolution, phone_number: str = "") -> tuple[str, str]:
    """(heading, line under it) for the page."""
    if r.business and r.verified_name:
        return r.verified_name, '<p class="badge">Verified business</p>'
    if r.business:
        return "A business on Parley", "<p>Its name has not been verified yet.</p>"
    return phone_number or "A Parley user", "<p>A person on Parley.</p>"


def landing_page(r: Resolution, deep_link: str, qr_src: str | None, phone_number: str = "") -> str:
    """The body of a landing page (escaped; `deep_link` and `qr_src` are built by us). A
    number link has no QR image: its address is the QR code's content already."""
    name, badge = _who(r, phone_number)
    about = f'<p class="about">{html.escape(r.about)}</p>\n' if r.about else ""
    text = html.escape(r.prefilled_text)
    qr = (
        "<h2>On another device?</h2>\n"
        f'<img src="{html.escape(qr_src)}" width="256" height="256"'
        " alt=\"QR code of this chat link: scan it with your phone's camera to open the chat"
        ' there">\n'
        "<p>Scan the code with your phone to open this chat there.</p>\n"
        if qr_src
        else ""
    )
    return (
        f"<h1>{html.escape(name)}</h1>\n{badge}\n{about}"
        "<h2>Your first message</h2>\n"
        '<label for="prefilled">The chat starts with this message, which you can change'
        " before sending:</label>\n"
        f'<textarea id="prefilled" rows="3" readonly>{text}</textarea>\n'
        f'<p><a class="open" href="{html.escape(deep_link)}">Open in Parley</a></p>\n'
        f"{qr}"
        "<p><small>Messages on Parley are end-to-end encrypted. Opening this page is counted,"
        " but not who opened it.</small></p>"
    )


class LandingPages:
    """The aiohttp application and its listener, started and stopped with the gRPC server."""

    def __init__(
        self,
        links: ChatLinks,
        host: str,
        port: int,
        healthy: Callable[[], bool],
    ) -> None:
        self._links = links
        self._host = host
        self._port = port
        self._healthy = healthy
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/c/{code}.png", self._png)
        app.router.add_get("/c/{code}.svg", self._svg)
        app.router.add_get("/c/{code}", self._code_page)
        app.router.add_get("/p/{digits}", self._number_page)
        self.app = app

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise HttpBindError(
                f"cannot serve the landing pages on {self._host}:{self._port}"
                f" ({exc.strerror or exc}); choose another --http-port, or off"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The security headers on every answer, and our 404 page for every unknown path."""
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = not_found_page("This page does not exist")
        except web.HTTPException as exc:
            response = exc
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})
        return web.Response(
            text="storage is failing\n", status=503, headers={"Cache-Control": "no-store"}
        )

    async def _code_page(self, request: web.Request) -> web.Response:
        code = request.match_info["code"]
        try:
            r = await self._links.resolve(None, code, "", "")
        except (NotFound, InvalidArgument):
            return not_found_page()
        return _page(
            f"Chat with {_who(r)[0]} on Parley",
            landing_page(r, "parley://chat?" + urlencode({"code": code}), f"/c/{code}.png"),
        )

    async def _number_page(self, request: web.Request) -> web.Response:
        digits = request.match_info["digits"]
        text = request.query.get("text", "")
        if not digits.isascii() or not digits.isdigit():
            return not_found_page("This is not a number link")
        number = "+" + digits
        try:
            r = await self._links.resolve(None, "", number, text)
        except NotFound:
            return not_found_page("No chat at this number link")
        except InvalidArgument as exc:
            return _page(
                "Not a valid link · Parley",
                f"<h1>This link is not valid</h1>\n<p>{html.escape(exc.message)}</p>",
                status=400,
            )
        deep = "parley://chat?" + urlencode({"phone": number, "text": text})
        return _page(
            f"Chat with {_who(r, number)[0]} on Parley", landing_page(r, deep, None, number)
        )

    async def _png(self, request: web.Request) -> web.Response:
        return await self._qr(request, qr_png, "image/png")

    async def _svg(self, request: web.Request) -> web.Response:
        return await self._qr(request, qr_svg, "image/svg+xml")

    async def _qr(
        self, request: web.Request, render: Callable[[str], bytes], content_type: str
    ) -> web.Response:
        """The QR code of a live link (no open counted: the page shows it on every open)."""
        try:
            url = await self._links.link_for_qr(request.match_info["code"])
        except DomainError:
            return not_found_page()
        return web.Response(
            body=render(url), content_type=content_type, headers={"Cache-Control": QR_CACHE}
        )
