"""The FastAPI application: settings, security headers, authentication and CSRF, and the two routers
(`api` for the REST API under /api, `ui` for the server-rendered pages).

Authentication: a browser logs in with a form and gets an HttpOnly, SameSite=Lax session cookie; a script sends
`Authorization: Bearer <token>` with a per-user API token. A state-changing request authenticated by the cookie
must carry the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`); token requests need
none, since a browser never adds the header on its own.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader

from . import security, service
from .db import Database, User, sqlite_path
from .service import AppError

HERE = Path(__file__).parent
SESSION_COOKIE = "pl_session"
LOGIN_CSRF_COOKIE = "pl_login_csrf"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Swagger UI at /docs loads its code from a CDN and runs an inline script; it shows no annotation data
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Settings:
    db_url: str
    data_dir: Path | None = None
    secure_cookies: bool = False
    login_limit: int = 5
    """Failed logins allowed per username (and 4x per client address) in `login_window` seconds."""
    login_window: float = 300.0
    max_body: int = 2 << 20
    """Largest request body in bytes (413 above), checked before the body is read or anyone authenticated."""
    max_import_body: int = 64 << 20
    """Largest body of an item import (`POST /api/projects/{id}/items`, the import form); bigger files go
    through `prefloop annotate import`."""


@dataclass
class Principal:
    user: User
    via: str  # "cookie" or "token"
    csrf: str | None = None
    session_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"


class SecurityHeaders:
    """ASGI middleware adding the Content Security Policy and related headers to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = DOCS_CSP if scope["path"] in ("/docs", "/docs/oauth2-redirect") else CSP

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                            (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


IMPORT_PATH = re.compile(r"^/(api/projects/\d+/items|admin/projects/\d+/import)$")


class BodyLimit:
    """ASGI middleware refusing request bodies over the settings' limits with 413: FastAPI parses a JSON or
    form body before the handler asks who sent it, so without a limit anyone could make the server read and
    parse any amount. A declared Content-Length is refused before reading; a streamed body when it passes."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.settings.max_import_body if IMPORT_PATH.match(scope["path"]) else self.settings.max_body
        message = f"the request body is larger than {limit} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            if scope["path"].startswith("/api/"):
                return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return await PlainTextResponse(message, status_code=413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            msg = await receive()
            received += len(msg.get("body", b""))
            if received > limit:
                raise HTTPException(413, message)
            return msg

        await self.app(scope, limited_receive, send)


def default_data_dir(db_url: str) -> Path | None:
    path = sqlite_path(db_url)
    return path.parent if path is not None else None


def create_app(settings: Settings) -> FastAPI:
    from . import api, ui

    db = Database(settings.db_url)
    data_dir = settings.data_dir or default_data_dir(db.url)
    app = FastAPI(title="prefloop feedback", version="1", docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.db = db
    app.state.key = security.load_secret_key(data_dir)
    app.state.templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                                      trim_blocks=True, lstrip_blocks=True)
    app.state.token_cache = TokenCache()
    app.state.projects = {}
    app.state.members = set()
    app.state.login_user_limiter = security.RateLimiter(settings.login_limit, settings.login_window)
    app.state.login_ip_limiter = security.RateLimiter(4 * settings.login_limit, settings.login_window)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(ui.router)

    @app.exception_handler(AppError)
    async def _app_error(request: Request, e: AppError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        if e.status == 401:
            return RedirectResponse("/login", status_code=303)
        return render(request, "error.html", {"message": str(e)}, status=e.status)

    @app.on_event("shutdown")
    def _dispose():
        db.dispose()

    return app


def render(request: Request, template: str, context: dict, status: int = 200) -> HTMLResponse:
    principal = getattr(request.state, "principal", None)
    html = request.app.state.templates.get_template(template).render(
        user=principal.user if principal else None, csrf=principal.csrf if principal else None, **context)
    return HTMLResponse(html, status_code=status)


class TokenCache:
    """API token -> user for `ttl` seconds, so a script's every request does not look its token up again.
    A user deactivated or a token revoked outside this process takes effect within `ttl` seconds."""

    def __init__(self, ttl: float = 10.0, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._map: dict[str, tuple[float, User]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> User | None:
        hit = self._map.get(token)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, token: str, user: User) -> None:
        with self._lock:
            if len(self._map) >= self.size:
                self._map.clear()
            self._map[token] = (time.monotonic() + self.ttl, user)

    def clear(self) -> None:
        with self._lock:
            self._map.clear()


def authenticate(request: Request) -> Principal | None:
    """The user behind the request (bearer token or session cookie), or None."""
    db: Database = request.app.state.db
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
        cache: TokenCache = request.app.state.token_cache
        user = cache.get(token)
        if user is None:
            with db.read() as s:
                user = service.token_user(s, token)
            if user is None:
                return None
            cache.put(token, user)
        return Principal(user, "token")
    with db.read() as s:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        found = service.session_user(s, token)
        if found is None:
            return None
        return Principal(found[0], "cookie", csrf=found[1].csrf_token, session_token=token)


def check_csrf(request: Request, principal: Principal, form_token: str | None = None) -> None:
    if principal.via != "cookie" or request.method not in UNSAFE_METHODS:
        return
    sent = form_token if form_token is not None else request.headers.get("x-csrf-token", "")
    if not principal.csrf or not hmac.compare_digest(sent.encode(), principal.csrf.encode()):
        raise AppError("missing or wrong CSRF token; reload the page and try again", 403)


def require_user(request: Request, admin: bool = False, form_token: str | None = None,
                 skip_csrf: bool = False) -> Principal:
    principal = authenticate(request)
    if principal is None:
        raise AppError("not logged in", 401)
    request.state.principal = principal
    if not skip_csrf:
        check_csrf(request, principal, form_token)
    if admin and not principal.is_admin:
        raise AppError("this needs an admin", 403)
    return principal


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def settings_from_env() -> Settings:
    """Settings for `uvicorn --factory prefloop.feedback.app:app_from_env` (PREFLOOP_DB, PREFLOOP_DATA_DIR)."""
    url = os.environ.get("PREFLOOP_DB")
    if not url:
        raise RuntimeError("set PREFLOOP_DB to the database URL or SQLite file")
    data_dir = os.environ.get("PREFLOOP_DATA_DIR")
    return Settings(db_url=url, data_dir=Path(data_dir) if data_dir else None,
                    secure_cookies=os.environ.get("PREFLOOP_SECURE_COOKIES", "") == "1")


def app_from_env() -> FastAPI:
    return create_app(settings_from_env())
