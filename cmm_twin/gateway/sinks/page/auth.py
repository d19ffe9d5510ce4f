"""The gateway's HTTP token (docs/page.md, "Token"): with GATEWAY_TOKEN set, every route but /health
needs it, as `Authorization: Bearer <token>` or as the page's cookie.

A browser cannot put a header on the page's own requests (EventSource sends none), so the page
logs in once: `GET /?token=<token>` (a link for a kiosk) or the form `GET /` shows without one
(`POST /`, the token not in the URL) sets an HttpOnly, SameSite=Strict cookie holding an HMAC of
the token (not the token itself) and redirects to `/`; from then on the browser sends the cookie
with every request of the page, the event stream included. Comparisons are constant-time.

/health stays open: container and service probes carry no token, and it holds counts and sink
states, no measurement. The cookie is not `Secure` because the gateway speaks plain HTTP: across an
untrusted network put a TLS reverse proxy in front (`--http-allowed-hosts`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from cmm_twin.gateway.config import HTTP_TOKEN_ENV, is_loopback

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

log = logging.getLogger(__name__)

COOKIE = "cmm_gateway_auth"
COOKIE_MAX_AGE_S = 30 * 86400
"""An operator screen stays logged in for 30 days (a kiosk survives reboots)."""
OPEN_PATHS = frozenset({"/health"})
"""Answered without a token (probes)."""
LOGIN_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cmm-twin · token required</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 32em; margin: 3em auto; padding: 0 1em">
<h1 style="font-size: 1.3em">cmm-twin gateway: token required</h1>
<p>This gateway serves its page and APIs only with its token (GATEWAY_TOKEN).{message}</p>
<form method="post" action="/">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus style="width: 100%">
<button type="submit" style="margin-top: 0.6em">Open the page</button>
</form>
</body></html>
"""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpAuth:
    """The token every route but OPEN_PATHS requires."""

    token: str = field(repr=False)

    @property
    def cookie_value(self) -> str:
        """What the page's cookie holds: an HMAC of the token, so the cookie never is the token."""
        return hmac.new(self.token.encode(), b"cmm-twin page cookie", hashlib.sha256).hexdigest()

    def matches(self, given: str) -> bool:
        """The token, compared in constant time."""
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode())

    def allows(self, request: web.Request) -> bool:
        """True when the request carries the token (bearer header) or the page's cookie."""
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.matches(credentials.strip()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode("utf-8", "surrogateescape"), self.cookie_value.encode())


def http_auth(config: GatewayConfig, environ: Mapping[str, str]) -> HttpAuth | None:
    """The token check of this gateway, or None when it serves without one (loopback without a
    token, or --http-allow-anonymous). Set, the token is required on loopback too."""
    token = environ.get(HTTP_TOKEN_ENV, "").strip()
    if config.http_allow_anonymous:
        if token:
            log.warning("HTTP: --http-allow-anonymous is given: %s is ignored, no token is required", HTTP_TOKEN_ENV)
        return None
    if not token:
        if not is_loopback(config.http[0]):  # load_config refuses this; a gateway built otherwise must not serve
            raise RuntimeError(f"--http {config.http[0]} without {HTTP_TOKEN_ENV} or --http-allow-anonymous")
        return None
    return HttpAuth(token)


def _login_page(status: int, message: str = "") -> web.Response:
    response = web.Response(
        status=status, text=_LOGIN_PAGE.format(message=message), headers=LOGIN_HEADERS, content_type="text/html"
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="cmm-twin gateway"'
    return response


def _logged_in(auth: HttpAuth) -> web.Response:
    """303 to `/` with the page's cookie (the token leaves the address bar)."""
    response = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})
    response.set_cookie(COOKIE, auth.cookie_value, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="Strict")
    return response


async def _login(request: web.Request, auth: HttpAuth) -> web.Response | None:
    """The answer to a login attempt at `/` (`?token=` or the form), None when it is none."""
    given: str | None = None
    if request.method == "GET" and "token" in request.query:
        given = request.query["token"]
    elif request.method == "POST":
        form = await request.post()
        value = form.get("token")
        given = value if isinstance(value, str) else ""
    if given is None:
        return None
    if auth.matches(given.strip()):
        return _logged_in(auth)
    log.warning("HTTP: a wrong token was given at / from %s", request.remote)
    return _login_page(401, " That token is not this gateway's.")


def auth_middleware(auth: HttpAuth) -> Middleware:
    """Requires the token on every route but OPEN_PATHS; `/` logs a browser in (see the module docstring)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if request.path == "/":
            login = await _login(request, auth)
            if login is not None:
                return login
        if auth.allows(request):
            return await handler(request)
        if request.path == "/":
            return _login_page(401)
        return web.json_response(
            {"error": f"missing or invalid token: send Authorization: Bearer <{HTTP_TOKEN_ENV}> or open / to log in"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    return middleware
