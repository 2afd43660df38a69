"""The REST API (/api/...): everything the pages do, for scripts and simulated annotators (OpenAPI at /docs).

Every handler authorises against the object it touches: annotators reach only projects they are members of
and only their own assignments (another user's assignment answers 404, as if it did not exist); users, import,
export, statistics and the audit log are for admins only.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from prefloop.errors import AppError, DataError

from . import exchange, service
from .auth import Principal, require_user
from .db import AuditEvent, User
from .service import MAX_DB_ID


class StrictJSONRequest(Request):
    """A request whose JSON body is parsed by `service.strict_json_loads`: duplicate keys, NUL characters and
    lone surrogates are refused with a 422 naming the problem, before any handler sees the values."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = service.strict_json_loads(await self.body())
            except AppError as e:
                raise HTTPException(e.status, str(e)) from None
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


router = APIRouter(prefix="/api", route_class=StrictJSONRoute)


class UserIn(BaseModel):
    username: str
    password: str
    role: str = "annotator"
    pool: str = "default"


class ProjectIn(BaseModel):
    name: str
    task_type: str
    guidelines: str = ""
    overlap: int = 1
    gold_rate: float = 0.0
    scale: tuple[int, int] = service.DEFAULT_SCALE
    criteria: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)


class MemberIn(BaseModel):
    username: str


class TokenIn(BaseModel):
    name: str = ""


class JudgmentIn(BaseModel):
    submission_id: str
    value: dict
    duration_ms: int | None = None


def _user_json(u: User) -> dict:
    return {"id": u.id, "username": u.username, "role": u.role, "pool": u.pool, "active": u.active}


def _project_json(p) -> dict:
    return {"id": p.id, "name": p.name, "task_type": p.task_type, "guidelines": p.guidelines,
            "overlap": p.overlap, "gold_rate": p.gold_rate, **p.config}


def _project_for(s, pid: int, principal: Principal, state=None):
    """The project, if the user may see it (admins: all; annotators: their projects; others: 404).

    Projects do not change after creation and members are never removed, so the hot paths pass the app's
    `state`, whose caches of both spare a query or two per request."""
    if not 0 < pid <= MAX_DB_ID:
        raise service.not_found(f"project {pid}")
    p = state.projects.get(pid) if state is not None else None
    if p is None:
        p = s.get(service.Project, pid)
        if p is not None and state is not None:
            state.projects[pid] = p
    if p is None:
        raise service.not_found(f"project {pid}")
    if not principal.is_admin and not _member(s, p, principal, state):
        raise service.not_found(f"project {pid}")
    return p


def _member(s, p, principal: Principal, state=None) -> bool:
    key = (p.id, principal.user.id)
    if state is not None and key in state.members:
        return True
    ok = service.is_member(s, p, principal.user)
    if ok and state is not None:
        state.members.add(key)
    return ok


@router.get("/me")
def me(request: Request) -> dict:
    return _user_json(require_user(request).user)


@router.post("/tokens")
def create_token(request: Request, body: TokenIn) -> dict:
    """A new API token for yourself (shown once)."""
    principal = require_user(request)
    with request.app.state.db.write() as s:
        token = service.create_token(s, principal.user, body.name, actor=principal.user.username)
        s.commit()
    return {"token": token}


@router.post("/users/{username}/tokens", status_code=201)
def create_user_token(request: Request, username: str, body: TokenIn) -> dict:
    """A new API token for another user (admins only; shown once, audited): how a script that runs annotators
    (e.g. `prefloop loop --simulate`) gets their credentials without handling their passwords."""
    principal = require_user(request, admin=True)
    with request.app.state.db.write() as s:
        u = service.user_by_name(s, username)
        if u is None or not u.active:
            raise service.not_found(f"user {username!r}")
        token = service.create_token(s, u, body.name, actor=principal.user.username)
        s.commit()
    return {"token": token}


@router.get("/users")
def list_users(request: Request) -> list[dict]:
    require_user(request, admin=True)
    with request.app.state.db.read() as s:
        return [_user_json(u) for u in s.scalars(select(User).order_by(User.id))]


@router.post("/users", status_code=201)
def create_user(request: Request, body: UserIn) -> dict:
    principal = require_user(request, admin=True)
    password_hash = service.new_password_hash(body.password)  # outside the write transaction
    with request.app.state.db.write() as s:
        u = service.create_user(s, body.username, None, body.role, body.pool, principal.user.username,
                                password_hash=password_hash)
        service.commit_or_conflict(s)
        return _user_json(u)


@router.get("/projects")
def list_projects(request: Request) -> list[dict]:
    principal = require_user(request)
    with request.app.state.db.read() as s:
        return [_project_json(p) for p in service.projects_of(s, principal.user)]


@router.post("/projects", status_code=201)
def create_project(request: Request, body: ProjectIn) -> dict:
    principal = require_user(request, admin=True)
    spec = service.ProjectSpec(body.name, body.task_type, body.guidelines, body.overlap, body.gold_rate,
                               tuple(body.scale), tuple(body.criteria), tuple(body.flags))
    with request.app.state.db.write() as s:
        p = service.create_project(s, spec, principal.user.username)
        service.commit_or_conflict(s)
        return _project_json(p)


@router.get("/projects/{pid}")
def get_project(request: Request, pid: int) -> dict:
    principal = require_user(request)
    with request.app.state.db.read() as s:
        return _project_json(_project_for(s, pid, principal))


@router.post("/projects/{pid}/members")
def add_member(request: Request, pid: int, body: MemberIn) -> dict:
    principal = require_user(request, admin=True)
    with request.app.state.db.write() as s:
        p = _project_for(s, pid, principal)
        u = service.user_by_name(s, body.username)
        if u is None:
            raise service.not_found(f"user {body.username!r}")
        service.add_member(s, p, u, principal.user.username)
        service.commit_or_conflict(s)
    return {"project": p.name, "member": u.username}


NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")


@router.post("/projects/{pid}/items", status_code=201)
async def import_items(request: Request, pid: int) -> dict:
    """Import items: a JSON body `{"items": [...]}` (objects in the format of an import line; at most the
    ordinary body limit, 2 MiB), or the lines of an import file as `application/x-ndjson` (plain or gzip),
    which is read line by line in bounded memory: the way for large imports (up to 64 MiB). The body is
    spooled to a temporary file as it arrives; the sender was checked to be an admin before any of it was
    read (`app.BodyLimit`)."""
    principal = await run_in_threadpool(require_user, request, True)
    ndjson = request.headers.get("content-type", "").split(";")[0].strip().lower() in NDJSON_TYPES
    # The JSON form is parsed whole (text, parsed document and validated items at once: several times its
    # size in memory), so it keeps the ordinary body limit; only the line-by-line form may be larger.
    json_limit = request.app.state.settings.max_body
    too_large = HTTPException(413, f'a {{"items": [...]}} body may be at most {json_limit} bytes; send larger '
                                   "imports as newline-delimited JSON (content-type application/x-ndjson, one "
                                   "item per line, optionally gzip)")
    declared = request.headers.get("content-length", "")
    if not ndjson and declared.isdigit() and int(declared) > json_limit:
        raise too_large
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as f:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if not ndjson and received > json_limit:
                raise too_large
            f.write(chunk)
        f.seek(0)
        return await run_in_threadpool(_import_body, request, pid, principal, f, ndjson)


def _import_body(request: Request, pid: int, principal: Principal, f, ndjson: bool) -> dict:
    limits = request.app.state.settings.limits
    with request.app.state.db.read() as s:
        p = _project_for(s, pid, principal)
    try:  # validated before the write transaction, which then holds the database only to insert
        items = exchange.read_item_stream(f, p, "body", limits) if ndjson else _json_items(f.read(), p, limits)
    except DataError as e:
        raise AppError(str(e), 422) from None
    with request.app.state.db.write() as s:
        n = exchange.import_items(s, p, items, principal.user.username, source="api")
        service.commit_or_conflict(s)
    return {"imported": n}


def _json_items(body: bytes, p, limits: exchange.ImportLimits) -> list[dict]:
    doc = service.strict_json_loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise DataError('the body must be {"items": [...]} (or send the lines as application/x-ndjson)')
    items = []
    for i, d in enumerate(doc["items"]):
        if not isinstance(d, dict):
            raise DataError(f"items[{i}]: expected a JSON object")
        for it in exchange.validate_item(p.task_type, d, tuple(p.config["scale"]), f"items[{i}]", limits):
            it["id"] = (it["id"] if it["id"] is not None else f"api{i}") + it.pop("suffix")
            items.append(it)
    return items


def _assignment_json(s, p, a) -> dict | None:
    return service.assignment_view(p, service.item_content(s, a.item_id), a) if a is not None else None


@router.get("/projects/{pid}/next")
def open_assignment(request: Request, pid: int) -> JSONResponse:
    """Your open assignment in the project, or `{"assignment": null}`; creates nothing (POST does)."""
    principal = require_user(request)
    with request.app.state.db.read() as s:
        p = _project_for(s, pid, principal, request.app.state)
        return JSONResponse({"assignment": _assignment_json(s, p, service.open_assignment(s, p, principal.user))})


@router.post("/projects/{pid}/next")
def next_assignment(request: Request, pid: int) -> JSONResponse:
    """Your open assignment in the project, or a new one; `{"assignment": null}` when none is left. Parallel
    calls of one user get one assignment (a row lock on the user, and a unique index on open assignments)."""
    principal = require_user(request)
    state = request.app.state

    def go(s):
        p = _project_for(s, pid, principal, state)
        if not _member(s, p, principal, state):
            raise AppError(f"you are not a member of project {p.name!r}", 403)
        a = service.next_assignment(s, p, principal.user, state.key, member_checked=True)
        return _assignment_json(s, p, a)

    # plain JSON values: no response-model pass needed
    return JSONResponse({"assignment": service.run_write(state.db, go)})


@router.get("/assignments/{aid}")
def get_assignment(request: Request, aid: int) -> dict:
    principal = require_user(request)
    with request.app.state.db.read() as s:
        a = service.assignment_of(s, aid, principal.user)
        p = s.get(service.Project, a.project_id)
        return service.assignment_view(p, service.item_content(s, a.item_id), a)


@router.post("/assignments/{aid}/judgment")
def submit_judgment(request: Request, aid: int, body: JudgmentIn) -> JSONResponse:
    """Submit a judgment (in display positions; see `service.normalise_judgment`). The answer comes only after
    the commit; resending the same `submission_id` returns the stored judgment with `duplicate: true`."""
    principal = require_user(request)
    state = request.app.state

    def go(s):
        a = service.assignment_of(s, aid, principal.user, lock=True)  # resends wait here, then see the first
        p = state.projects.get(a.project_id) or s.get(service.Project, a.project_id)
        return service.submit_judgment(s, p, a, principal.user, body.submission_id, body.value, body.duration_ms)

    jid, dup = service.run_write(state.db, go)
    return JSONResponse({"judgment_id": jid, "duplicate": dup})


@router.get("/projects/{pid}/export")
def export(request: Request, pid: int, kind: str | None = None, ties: str = "drop",
           include_gold: bool = False) -> Response:
    """The project's judgments as JSONL records that the trainers read (admins only)."""
    principal = require_user(request, admin=True)
    with request.app.state.db.read() as s:  # a snapshot, read beside the writers (WAL)
        p = _project_for(s, pid, principal)
        records = exchange.export_records(s, p, kind, ties, include_gold)
    with request.app.state.db.write() as s:
        service.audit(s, principal.user.username, "project.export", p.name, kind=kind, records=len(records))
        s.commit()
    body = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    return Response(body, media_type="application/x-ndjson",
                    headers={"content-disposition": f'attachment; filename="project-{pid}.jsonl"'})


@router.get("/projects/{pid}/stats")
def stats(request: Request, pid: int) -> dict[str, Any]:
    """Progress, agreement statistics, per-pool breakdown and annotation time (admins only)."""
    from .dashboard import project_stats

    principal = require_user(request, admin=True)
    with request.app.state.db.read() as s:
        return project_stats(s, _project_for(s, pid, principal))


@router.get("/audit")
def audit_log(request: Request, limit: int = 200) -> list[dict]:
    require_user(request, admin=True)
    with request.app.state.db.read() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 5000))))
        return [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "target": e.target,
                 "detail": e.detail} for e in rows]
