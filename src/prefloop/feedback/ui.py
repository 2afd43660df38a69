"""Server-rendered pages: login, the annotation page of each task type, and the admin pages.

Forms post back with the session's CSRF token; an annotation form carries a submission id made when the page
was rendered, so posting it twice (a double click, a reload) stores one judgment. Every text from the data is
rendered by Jinja2 with autoescaping on, and the pages load only /static scripts (see the CSP in `app`).
"""

from __future__ import annotations

import functools
import hmac
import secrets
import uuid
from pathlib import Path

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from prefloop.errors import AppError, DataError

from . import exchange, service
from .auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, authenticate, client_ip, require_user
from .dashboard import FLAG_TEXTS, METRICS, annotator_detail, project_stats, skip_reason_text
from .db import Assignment, Item, Judgment, User

router = APIRouter(include_in_schema=False)

# the pairwise buttons: (key, label, choice position or "tie", strength)
PAIRWISE_SCALE = [("1", "A is much better", 0, 3), ("2", "A is better", 0, 2), ("3", "A is slightly better", 0, 1),
                  ("4", "Tie", "tie", 0), ("5", "B is slightly better", 1, 1), ("6", "B is better", 1, 2),
                  ("7", "B is much better", 1, 3)]
FLAG_KEYS = "qwertyuiop"


def render(request: Request, template: str, context: dict, status: int = 200) -> HTMLResponse:
    """A page of `templates/` with the signed-in user and the session's CSRF token (the error page of `app` too)."""
    principal = getattr(request.state, "principal", None)
    html = request.app.state.templates.get_template(template).render(
        user=principal.user if principal else None, csrf=principal.csrf if principal else None, **context)
    return HTMLResponse(html, status_code=status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    token = secrets.token_urlsafe(32)
    resp = render(request, "login.html", {"login_csrf": token, "error": ""})
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                    secure=request.app.state.settings.secure_cookies, path="/login")
    return resp


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""),
          csrf_token: str = Form("")) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
        raise AppError("the login form expired or was not sent by this site; reload the page", 403)
    st = request.app.state
    ip, name_key = client_ip(request), username.lower()[:64]
    # an attempt counts from its start, so a burst of parallel guesses gets no more password checks than the
    # limit; a successful login gives its count back
    if not st.login_user_limiter.take(name_key):
        return _too_many(request, csrf_token)
    if not st.login_ip_limiter.take(ip):
        st.login_user_limiter.give_back(name_key)
        return _too_many(request, csrf_token)
    with st.db.read() as s:  # the Argon2 check (tens of ms) runs outside the write lock
        user = service.password_user(s, username, password)
    with st.db.write() as s:
        if user is None:
            service.audit(s, username[:64] or "-", "login.failed", ip)
            s.commit()
            return render(request, "login.html", {"login_csrf": csrf_token, "error": "Wrong username or password."},
                          status=401)
        token, _ = service.create_session(s, user)
        s.commit()
    st.login_user_limiter.reset(name_key)
    st.login_ip_limiter.give_back(ip)
    resp = _redirect("/")
    resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=st.settings.secure_cookies,
                    max_age=int(service.SESSION_LIFETIME.total_seconds()), path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


def _too_many(request: Request, csrf_token: str) -> Response:
    return render(request, "login.html", {"login_csrf": csrf_token, "error": "Too many failed logins; "
                                          "wait a few minutes."}, status=429)


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")) -> Response:
    principal = require_user(request, form_token=csrf_token)
    with request.app.state.db.write() as s:
        service.delete_session(s, principal.session_token or "")
        s.commit()
    resp = _redirect("/login")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


def _progress(s, project, user: User) -> dict:
    done = s.scalar(select(func.count(Judgment.id)).where(Judgment.project_id == project.id,
                                                          Judgment.user_id == user.id)) or 0
    n_items = s.scalar(select(func.count(Item.id)).where(Item.project_id == project.id,
                                                         Item.is_gold.is_(False))) or 0
    total = s.scalar(select(func.count(Judgment.id)).join(Item, Item.id == Judgment.item_id)
                     .where(Judgment.project_id == project.id, Item.is_gold.is_(False))) or 0
    target = n_items * project.overlap
    return {"mine": done, "total": total, "target": target,
            "percent": round(100 * total / target) if target else 0}


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    if authenticate(request) is None:
        return _redirect("/login")
    principal = require_user(request)
    with request.app.state.db.read() as s:
        projects = [(p, _progress(s, p, principal.user)) for p in service.projects_of(s, principal.user)]
    return render(request, "home.html", {"projects": projects})


def _member_project(s, pid: int, user: User):
    p = s.get(service.Project, pid)
    if p is None or not service.is_member(s, p, user):
        raise service.not_found(f"project {pid}")
    return p


def _page_context(s, p, user: User) -> dict:
    """What every annotation page of the project shows: progress, guidelines, the key maps."""
    progress = _progress(s, p, user)
    ctx = {"project": p, "progress": progress, "pairwise_scale": PAIRWISE_SCALE, "flag_keys": FLAG_KEYS,
           "guidelines_html": guidelines_html(p.guidelines), "skip_reasons": service.SKIP_REASONS,
           # open before the first answer, folded away afterwards (the G key shows them again)
           "guidelines_open": progress["mine"] == 0, "view": None, "answer": None, "mode": None}
    if p.task_type == "rating":
        ctx["scale_keys"] = scale_keys(*p.config["scale"])
    return ctx


def scale_keys(lo: int, hi: int) -> list[tuple[int, str]]:
    """(value, key) of a rating scale: the digit itself on a scale within 1-10 (10 is key 0), otherwise by
    position: 1-9, 0, then '-' (a scale has at most 11 values)."""
    if 1 <= lo and hi <= 10:
        return [(v, str(v % 10)) for v in range(lo, hi + 1)]
    return [(v, "1234567890-"[i]) for i, v in enumerate(range(lo, hi + 1))]


@functools.cache
def _markdown():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def guidelines_html(text: str) -> Markup:
    """Guidelines as HTML: CommonMark (raw HTML in the source is shown as text), then nh3's allow-list
    sanitizer as a second line of defence (no scripts, styles, event handlers or javascript: links)."""
    if not text:
        return Markup("")
    import nh3

    return Markup(nh3.clean(_markdown().render(text), link_rel="noopener noreferrer nofollow"))


def shown_answer(task_type: str, order: list[int], value: dict) -> dict:
    """A stored judgment value in the display positions of the form (the inverse of `normalise_judgment`)."""
    if task_type == "pairwise":
        if value["preferred"] is None:
            return {"key": "4"}
        pos = order.index(value["preferred"])
        return {"key": next(k for k, _, c, st in PAIRWISE_SCALE if c == pos and st == value["strength"])}
    if task_type == "ranking":
        return {"ranks": [value["ranks"][i] for i in order]}
    return value


@router.get("/projects/{pid}", response_class=HTMLResponse)
def project_page(request: Request, pid: int) -> Response:
    """The project's entry: the open assignment if there is one, else a start button (a GET never creates an
    assignment) or the all-done message."""
    principal = require_user(request)
    with request.app.state.db.read() as s:
        p = _member_project(s, pid, principal.user)
        a = service.open_assignment(s, p, principal.user)
        if a is not None:
            return _redirect(f"/projects/{pid}/assignments/{a.id}")
        ctx = _page_context(s, p, principal.user)
        ctx["items_left"] = service.items_left(s, p, principal.user)
        ctx["prev_id"] = service.judged_neighbour(s, p, principal.user, None, older=True)
    return render(request, "annotate.html", ctx)


@router.post("/projects/{pid}/next")
def start(request: Request, pid: int, csrf_token: str = Form("")) -> Response:
    principal = require_user(request, form_token=csrf_token)
    with request.app.state.db.write() as s:
        p = _member_project(s, pid, principal.user)
        return _to_next(request, s, p, principal.user)


def _to_next(request: Request, s, p, user: User) -> Response:
    """Create (or find) the user's next assignment, commit, and send the browser to it."""
    a = service.next_assignment(s, p, user, request.app.state.key, member_checked=True)
    service.commit_or_conflict(s)
    return _redirect(f"/projects/{p.id}/assignments/{a.id}" if a else f"/projects/{p.id}")


@router.get("/projects/{pid}/assignments/{aid}", response_class=HTMLResponse)
def assignment_page(request: Request, pid: int, aid: int, edit: int = 0, saved: int = 0) -> Response:
    """One assignment: the form while it is open; the user's answer once it is judged (read-only, so Back and a
    stray key change nothing), editable with ?edit=1; the reason once it was skipped."""
    principal = require_user(request)
    user = principal.user
    with request.app.state.db.read() as s:
        p = _member_project(s, pid, user)
        try:
            a = service.assignment_of(s, aid, user)
        except AppError:  # e.g. released after a long absence: the project page finds the current one
            return _redirect(f"/projects/{pid}")
        if a.project_id != p.id:
            raise service.not_found(f"assignment {aid}")
        ctx = _page_context(s, p, user)
        ctx |= {"view": service.assignment_view(p, service.item_content(s, a.item_id), a), "saved": saved,
                "prev_id": service.judged_neighbour(s, p, user, aid, older=True)}
        if not a.done:
            ctx |= {"mode": "annotate", "submission_id": uuid.uuid4().hex}
        elif (j := service.judgment_of(s, a)) is None:
            ctx |= {"mode": "skipped", "skip_reason": skip_reason_text(a.skip_reason or "")}
        else:
            ctx |= {"mode": "edit" if edit else "review", "answer": shown_answer(p.task_type, a.order, j.value),
                    "edited": j.edited_at is not None,
                    "next_id": service.judged_neighbour(s, p, user, aid, older=False)}
    return render(request, "annotate.html", ctx)


def _form_payload(task_type: str, form) -> dict:
    """A judgment payload from the annotation form's fields."""
    if task_type == "pairwise":
        key = form.get("choice", "")
        for k, _, choice, strength in PAIRWISE_SCALE:
            if key == k:
                return {"choice": choice, "strength": strength} if choice != "tie" else {"choice": "tie"}
        raise AppError("choose one of the options", 422)
    if task_type == "ranking":
        ranks = []
        for i in range(service.MAX_RESPONSES):
            v = form.get(f"rank{i}")
            if v is None:
                break
            if not v.strip().isdecimal():  # not isdigit: int() cannot read "²"
                raise AppError("give every response a rank (1 = best; equal numbers for ties)", 422)
            ranks.append(int(v))
        return {"ranks": ranks}
    if task_type == "rating":
        def num(v):
            return int(v) if v is not None and v.strip().lstrip("-").isdecimal() else v
        criteria = {k[len("criterion:"):]: num(v) for k, v in form.items() if k.startswith("criterion:") and v}
        return {"rating": num(form.get("rating")), "criteria": criteria, "flags": form.getlist("flags")}
    return {"text": form.get("text", "").replace("\r\n", "\n")}


@router.post("/projects/{pid}/assignments/{aid}")
async def submit_form(request: Request, pid: int, aid: int) -> Response:
    form = await request.form()  # field names depend on the task, so the form is read whole
    return await run_in_threadpool(_submit_form, request, pid, aid, form)


def _form_principal(request: Request, form):
    """The user posting an annotation form (CSRF-checked); forms carry text fields only."""
    principal = require_user(request, form_token=str(form.get("csrf_token", "")))
    if any(not isinstance(v, str) for _, v in form.multi_items()):
        raise AppError("the annotation form takes no files", 422)
    return principal


def _own_assignment(s, principal, pid: int, aid: int):
    """(assignment, project) for the user's assignment `aid` in project `pid`; 404 otherwise."""
    a = service.assignment_of(s, aid, principal.user)
    p = s.get(service.Project, a.project_id)
    if p.id != pid:
        raise service.not_found(f"assignment {aid}")
    return a, p


def _submit_form(request: Request, pid: int, aid: int, form) -> Response:
    principal = _form_principal(request, form)
    with request.app.state.db.write() as s:
        a, p = _own_assignment(s, principal, pid, aid)
        payload = _form_payload(p.task_type, form)
        service.submit_judgment(s, p, a, principal.user, str(form.get("submission_id", "")), payload)
        return _to_next(request, s, p, principal.user)


@router.post("/projects/{pid}/assignments/{aid}/edit")
async def edit_form(request: Request, pid: int, aid: int) -> Response:
    form = await request.form()
    return await run_in_threadpool(_edit_form, request, pid, aid, form)


def _edit_form(request: Request, pid: int, aid: int, form) -> Response:
    principal = _form_principal(request, form)
    with request.app.state.db.write() as s:
        a, p = _own_assignment(s, principal, pid, aid)
        service.edit_judgment(s, p, a, principal.user, _form_payload(p.task_type, form))
        service.commit_or_conflict(s)
    return _redirect(f"/projects/{pid}/assignments/{aid}?saved=1")


@router.post("/projects/{pid}/assignments/{aid}/skip")
def skip(request: Request, pid: int, aid: int, reason: str = Form(""), note: str = Form(""),
         csrf_token: str = Form("")) -> Response:
    principal = require_user(request, form_token=csrf_token)
    with request.app.state.db.write() as s:
        a, p = _own_assignment(s, principal, pid, aid)
        service.skip_assignment(s, p, a, principal.user, reason, note)
        return _to_next(request, s, p, principal.user)


# ---------------------------------------------------------------- admin pages

@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request) -> Response:
    require_user(request, admin=True)
    with request.app.state.db.read() as s:
        users = list(s.scalars(select(User).order_by(User.id)))
        projects = list(s.scalars(select(service.Project).order_by(service.Project.id)))
    return render(request, "admin.html", {"users": users, "projects": projects})


@router.post("/admin/users")
def admin_create_user(request: Request, username: str = Form(""), password: str = Form(""),
                      role: str = Form("annotator"), pool: str = Form("default"),
                      csrf_token: str = Form("")) -> Response:
    principal = require_user(request, admin=True, form_token=csrf_token)
    with request.app.state.db.write() as s:
        service.create_user(s, username, password, role, pool or "default", principal.user.username)
        service.commit_or_conflict(s)
    return _redirect("/admin")


@router.post("/admin/projects")
def admin_create_project(request: Request, name: str = Form(""), task_type: str = Form("pairwise"),
                         guidelines: str = Form(""), overlap: int = Form(1), gold_rate: float = Form(0.0),
                         scale_lo: int = Form(1), scale_hi: int = Form(3), criteria: str = Form(""),
                         flags: str = Form(""), csrf_token: str = Form("")) -> Response:
    principal = require_user(request, admin=True, form_token=csrf_token)
    spec = service.ProjectSpec(name.strip(), task_type, guidelines, overlap, gold_rate, (scale_lo, scale_hi),
                               _names(criteria), _names(flags))
    with request.app.state.db.write() as s:
        p = service.create_project(s, spec, principal.user.username)
        service.commit_or_conflict(s)
    return _redirect(f"/admin/projects/{p.id}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.replace("\n", ",").split(",") if x.strip())


@router.post("/admin/projects/{pid}/members")
def admin_add_members(request: Request, pid: int, usernames: str = Form(""), csrf_token: str = Form("")) -> Response:
    principal = require_user(request, admin=True, form_token=csrf_token)
    with request.app.state.db.write() as s:
        p = service.project_by_ref(s, pid)
        for name in _names(usernames):
            u = service.user_by_name(s, name)
            if u is None:
                raise service.not_found(f"user {name!r}")
            service.add_member(s, p, u, principal.user.username)
        service.commit_or_conflict(s)
    return _redirect(f"/admin/projects/{pid}")


@router.post("/admin/projects/{pid}/import")
def admin_import(request: Request, pid: int, file: UploadFile = File(...),  # noqa: B008 (FastAPI's idiom)
                 csrf_token: str = Form("")) -> Response:
    principal = require_user(request, admin=True, form_token=csrf_token)
    # the name is only shown in messages and the audit log: never a path on this machine
    name = service.printable_name(Path(file.filename or "").name or "upload.jsonl", 100)
    with request.app.state.db.read() as s:
        p = service.project_by_ref(s, pid)
    try:  # read in chunks (gzip decompressed on the fly, within the import limits), validated before writing
        items = exchange.read_item_stream(file.file, p, name, request.app.state.settings.limits)
    except DataError as e:
        raise AppError(str(e), 422) from None
    with request.app.state.db.write() as s:
        exchange.import_items(s, p, items, principal.user.username, source=name)
        service.commit_or_conflict(s)
    return _redirect(f"/admin/projects/{pid}")


@router.get("/admin/projects/{pid}", response_class=HTMLResponse)
def admin_project(request: Request, pid: int) -> Response:
    require_user(request, admin=True)
    with request.app.state.db.read() as s:
        p = service.project_by_ref(s, pid)
        stats = project_stats(s, p)
        members = list(s.scalars(select(User).join(service.Member, service.Member.user_id == User.id)
                                 .where(service.Member.project_id == p.id).order_by(User.username)))
        open_assignments = s.scalar(select(func.count(Assignment.id)).where(Assignment.project_id == p.id,
                                                                            Assignment.done.is_(False)))
    return render(request, "dashboard.html", {"project": p, "stats": stats, "members": members,
                                              "open_assignments": open_assignments,
                                              "export_kinds": _export_kinds(p.task_type),
                                              "guidelines_html": guidelines_html(p.guidelines),
                                              "metrics": METRICS, "flag_texts": FLAG_TEXTS})


@router.post("/admin/projects/{pid}/guidelines")
def admin_guidelines(request: Request, pid: int, guidelines: str = Form(""), csrf_token: str = Form("")
                     ) -> Response:
    principal = require_user(request, admin=True, form_token=csrf_token)
    with request.app.state.db.write() as s:
        p = service.project_by_ref(s, pid)
        service.set_guidelines(s, p, guidelines, principal.user.username)
        service.commit_or_conflict(s)
    return _redirect(f"/admin/projects/{pid}#guidelines")


@router.get("/admin/projects/{pid}/annotators/{username}", response_class=HTMLResponse)
def admin_annotator(request: Request, pid: int, username: str) -> Response:
    require_user(request, admin=True)
    with request.app.state.db.read() as s:
        p = service.project_by_ref(s, pid)
        detail = annotator_detail(s, p, username)
    return render(request, "annotator.html", {"project": p, "d": detail, "metrics": METRICS,
                                              "flag_texts": FLAG_TEXTS})


def _export_kinds(task_type: str) -> list[str]:
    return {"ranking": ["comparisons", "rankings"]}.get(task_type, [exchange.default_export_kind(task_type)])
