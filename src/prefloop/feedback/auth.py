"""Who sends a request, for the REST API and the pages alike, and the CSRF check of the pages.

A browser logs in with a form and gets an HttpOnly, SameSite=Lax session cookie; a script sends
`Authorization: Bearer <token>` with a per-user API token. A state-changing request authenticated by the cookie
must carry the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`); token requests need
none, since a browser never adds the header on its own. The login form checks a password with
`service.password_user` (in `ui`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from prefloop.errors import AppError

from . import service
from .db import Database, User

SESSION_COOKIE = "pl_session"
LOGIN_CSRF_COOKIE = "pl_login_csrf"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Principal:
    user: User
    via: str  # "cookie" or "token"
    csrf: str | None = None
    session_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"


def authenticate(request: Request) -> Principal | None:
    """The user behind the request (bearer token or session cookie), or None."""
    db: Database = request.app.state.db
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        # looked up on every request (one indexed query), never cached in the process: a revoked token or a
        # deactivated user is refused at once by every server process
        with db.read() as s:
            user = service.token_user(s, auth[7:].strip())
        return Principal(user, "token") if user is not None else None
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
    """The client's address: the connection's peer, or, when the peer is one of the configured
    `trusted_proxies`, the nearest address in `X-Forwarded-For` that is not a trusted proxy. A client can put
    anything in that header, so from anyone else it is ignored."""
    peer = request.client.host if request.client else "unknown"
    trusted = request.app.state.settings.trusted_proxies
    if peer not in trusted:
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):  # each proxy appends the address it saw: read from the right
        if hop not in trusted:
            return hop[:64]
    return peer
