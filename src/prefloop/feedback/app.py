"""The FastAPI application factory: settings, security headers, body limits, error pages, and the two routers
(`api` for the REST API under /api, `ui` for the server-rendered pages). Who sends a request, and the CSRF
check, are in `auth`, which both routers use; the factory sits above them and nothing imports it back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from prefloop.errors import AppError

from . import security
from .auth import authenticate
from .db import Database, sqlite_path
from .exchange import ImportLimits

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


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
    """Largest body of an item import (`POST /api/projects/{id}/items`, the import form), for admins only: the
    sender is authenticated from the headers before any of the body is read; everyone else gets `max_body`.
    Bigger files go through `prefloop annotate import`."""
    limits: ImportLimits = field(default_factory=ImportLimits)
    """Per-item limits of imports (text per field, decompressed size of an upload)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses of reverse proxies whose `X-Forwarded-For` names the client; from anyone else it is ignored."""


class SecurityHeaders:
    """ASGI middleware adding the Content Security Policy and related headers to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                            (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


IMPORT_PATH = re.compile(r"^/(api/projects/\d+/items|admin/projects/\d+/import)$")


class BodyLimit:
    """ASGI middleware refusing request bodies over the settings' limits with 413: FastAPI parses a JSON or
    form body before the handler asks who sent it, so without a limit anyone could make the server read and
    parse any amount. A declared Content-Length is refused before reading; a streamed body when it passes.

    Imports get the larger limit only once the headers (token or session cookie) show an admin: anyone else
    is answered (401, or 413 for a non-admin over the ordinary limit) before one byte of the body is read."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.settings.max_body
        if IMPORT_PATH.match(scope["path"]) and scope["method"] == "POST":
            principal = await run_in_threadpool(authenticate, Request(scope))
            if principal is None:
                return await _refuse(scope, receive, send, 401, "not logged in")
            if principal.is_admin:
                limit = max(limit, self.settings.max_import_body)
        message = f"the request body is larger than {limit} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await _refuse(scope, receive, send, 413, message)
        received = 0

        async def limited_receive():
            nonlocal received
            msg = await receive()
            received += len(msg.get("body", b""))
            if received > limit:
                raise HTTPException(413, message)
            return msg

        await self.app(scope, limited_receive, send)


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    if scope["path"].startswith("/api/"):
        return await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
    if status == 401:
        return await RedirectResponse("/login", status_code=303)(scope, receive, send)
    return await PlainTextResponse(message, status_code=status)(scope, receive, send)


class PrefloopApp(FastAPI):
    """FastAPI with the security headers outermost: Starlette answers an unhandled exception (500) in its
    outermost middleware, outside every middleware added with `add_middleware`, so they would miss it."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())


def default_data_dir(db_url: str) -> Path | None:
    path = sqlite_path(db_url)
    return path.parent if path is not None else None


def create_app(settings: Settings) -> FastAPI:
    from . import api, ui

    db = Database(settings.db_url)
    data_dir = settings.data_dir or default_data_dir(db.url)
    # no /docs page: Swagger UI would load its code from a CDN; the OpenAPI document is at /openapi.json
    app = PrefloopApp(title="prefloop feedback", version="1", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db = db
    app.state.key = security.load_secret_key(data_dir)
    app.state.templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                                      trim_blocks=True, lstrip_blocks=True)
    app.state.projects = {}
    app.state.members = set()
    # in the database, so that several server processes share one count
    app.state.login_user_limiter = security.DbRateLimiter(db, "user", settings.login_limit, settings.login_window)
    app.state.login_ip_limiter = security.DbRateLimiter(db, "ip", 4 * settings.login_limit, settings.login_window)
    app.add_middleware(BodyLimit, settings=settings)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(ui.router)
    _add_error_handlers(app)

    @app.on_event("shutdown")
    def _dispose():
        db.dispose()

    return app


def _error_response(request: Request, message: str, status: int):
    from .ui import render

    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    if status == 401:
        return RedirectResponse("/login", status_code=303)
    return render(request, "error.html", {"message": message}, status=status)


def _add_error_handlers(app: FastAPI) -> None:
    from sqlalchemy.exc import DataError as SQLDataError
    from sqlalchemy.exc import StatementError

    @app.exception_handler(AppError)
    async def _app_error(request: Request, e: AppError):
        return _error_response(request, str(e), e.status)

    # the last line of defence behind the checks at each boundary: a value the database refuses (a number
    # out of range, text it cannot store) is the request's fault, not the server's
    @app.exception_handler(SQLDataError)
    @app.exception_handler(OverflowError)
    async def _unstorable(request: Request, e: Exception):
        return _error_response(request, "a value in the request is out of range or cannot be stored", 422)

    @app.exception_handler(StatementError)
    async def _statement(request: Request, e: StatementError):
        if isinstance(e.orig, (OverflowError, ValueError)):
            return _error_response(request, "a value in the request is out of range or cannot be stored", 422)
        raise e


def settings_from_env() -> Settings:
    """Settings for `uvicorn --factory prefloop.feedback.app:app_from_env` (PREFLOOP_DB, PREFLOOP_DATA_DIR)."""
    url = os.environ.get("PREFLOOP_DB")
    if not url:
        raise RuntimeError("set PREFLOOP_DB to the database URL or SQLite file")
    data_dir = os.environ.get("PREFLOOP_DATA_DIR")
    proxies = tuple(x.strip() for x in os.environ.get("PREFLOOP_TRUSTED_PROXIES", "").split(",") if x.strip())
    return Settings(db_url=url, data_dir=Path(data_dir) if data_dir else None,
                    secure_cookies=os.environ.get("PREFLOOP_SECURE_COOKIES", "") == "1", trusted_proxies=proxies)


def app_from_env() -> FastAPI:
    return create_app(settings_from_env())
