"""The feedback app's logic, independent of HTTP: users, sessions, tokens, projects, assignment, judgments.

Every function takes an open SQLAlchemy session and leaves committing to the caller (the web app commits
before it acknowledges; the CLI commits at the end of a command). Errors are `AppError`s with the HTTP status
the web app answers with and a one-line message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from prefloop.errors import AppError

from . import security
from .db import (
    ROLES,
    TASK_TYPES,
    ApiToken,
    Assignment,
    AuditEvent,
    Item,
    Judgment,
    LoginSession,
    Member,
    Project,
    User,
    make_engine,
    normalise_url,
    utcnow,
)

SESSION_LIFETIME = timedelta(hours=12)
MAX_DB_ID = 2 ** 63 - 1  # ids are 64-bit integers in every database; a larger one names nothing
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_RESPONSES = 9
DEFAULT_SCALE = (1, 3)


# The hot path (next assignment, submit) runs SQLAlchemy Core statements built once here, on the session's
# connection: a few indexed statements per request, without the ORM's unit of work or rebuilding statements
# (about 4x less CPU per judgment than the ORM).
A, I, J, M = Assignment.__table__, Item.__table__, Judgment.__table__, Member.__table__
_B = bindparam
_IS_MEMBER = select(M.c.id).where(M.c.project_id == _B("pid"), M.c.user_id == _B("uid"))
_OPEN = (select(A).where(A.c.user_id == _B("uid"), A.c.project_id == _B("pid"), A.c.done.is_(False))
         .order_by(A.c.id).limit(1))
_N_TAKEN = select(func.count()).select_from(A).where(A.c.user_id == _B("uid"), A.c.project_id == _B("pid"))
_UNSEEN = ~exists().where(A.c.item_id == I.c.id, A.c.user_id == _B("uid"))
_PICK_GOLD = (select(I.c.id, I.c.responses).where(I.c.project_id == _B("pid"), I.c.is_gold.is_(True), _UNSEEN)
              .order_by(I.c.n_assigned, I.c.id).limit(1).with_for_update(skip_locked=True))
# finish started items first, so complete items accumulate
_PICK = (select(I.c.id, I.c.responses).where(I.c.project_id == _B("pid"), I.c.is_gold.is_(False), _UNSEEN,
                                             I.c.n_assigned < _B("overlap"))
         .order_by(I.c.n_assigned.desc(), I.c.id).limit(1).with_for_update(skip_locked=True))
_TAKE = I.update().where(I.c.id == _B("iid")).values(n_assigned=I.c.n_assigned + 1)
_ASSIGNMENT = select(A).where(A.c.id == _B("aid"))
# row locks (PostgreSQL; SQLite already runs one writer at a time): one user's parallel "next" calls, and
# parallel resends of one submission, take their turns instead of racing
_LOCK_USER = select(User.__table__.c.id).where(User.__table__.c.id == _B("uid")).with_for_update()
_ASSIGNMENT_LOCKED = _ASSIGNMENT.with_for_update()
SUBMISSION_ID_RE = re.compile(r"^[\x21-\x7e]{8,64}$")
_CONTENT = select(I.c.prompt, I.c.responses).where(I.c.id == _B("iid"))
_PRIOR = select(J.c.id, J.c.assignment_id).where(J.c.user_id == _B("uid"), J.c.submission_id == _B("sid"))
_MARK_DONE = A.update().where(A.c.id == _B("aid"), A.c.done.is_(False)).values(done=True)


def not_found(what: str) -> AppError:
    return AppError(f"{what} not found", 404)


# ---------------------------------------------------------------- text every layer can store and show

def text_problem(value: Any, max_chars: int | None = None, where: str = "") -> str | None:
    """Why the strings of a JSON value (keys included) cannot be stored and shown, or None: a NUL character
    (PostgreSQL's text types refuse it), a lone UTF-16 surrogate such as the escape \\ud800 (not encodable
    as UTF-8, so every page, export and trainer that shows it would fail), or a string over `max_chars`."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where or 'a text'} contains a NUL character"
        if any("\ud800" <= c <= "\udfff" for c in value):
            return f"{where or 'a text'} contains a lone surrogate (an escape such as \\ud800 that is not a character)"
        if max_chars is not None and len(value) > max_chars:
            return f"{where or 'a text'} is longer than {max_chars:,} characters"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        at = f"{where}.{k}" if where else f"field {k!r}"
        problem = text_problem(k, None, at) if isinstance(k, str) else None
        problem = problem or text_problem(v, max_chars, at)
        if problem:
            return problem
    return None


def check_text(value: Any, where: str, max_chars: int | None = None) -> None:
    problem = text_problem(value, max_chars, where)
    if problem:
        raise AppError(problem, 422)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise AppError(f"key {k[:64]!r} appears twice in one object", 422)
        out[k] = v
    return out


def strict_json_loads(text: str | bytes) -> Any:
    """JSON as the app accepts it: a key given twice in one object is refused (a plain parser keeps the last
    one silently, so a pair could become chosen == rejected), as are NUL and lone surrogates; `AppError`."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise AppError(f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})", 422) from None
    except RecursionError:
        raise AppError("malformed JSON: nested too deeply", 422) from None
    except UnicodeDecodeError:
        raise AppError("the body is not valid UTF-8", 422) from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise AppError(f"malformed JSON: {e}", 422) from None
    check_text(value, "")
    return value


def run_write(db: Any, fn, attempts: int = 4) -> Any:
    """fn(session) in a write transaction, committed; retried when PostgreSQL reports a serialization failure
    or deadlock, or when a unique constraint caught a concurrent twin of this request (the retry then sees
    the twin's result: an open assignment, a stored judgment). A conflict left after the retries is a 409."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(attempts):
        with db.write() as s:
            try:
                out = fn(s)
                s.commit()
                return out
            except IntegrityError:
                s.rollback()
                if attempt == attempts - 1:
                    raise AppError("conflicting concurrent change, please retry", 409) from None
            except OperationalError as e:
                s.rollback()
                if getattr(e.orig, "sqlstate", None) not in ("40001", "40P01") or attempt == attempts - 1:
                    raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- schema

def migrate(url: str) -> None:
    """Create or upgrade the schema to the newest Alembic revision (SQLite: and switch the file to WAL)."""
    from alembic import command
    from alembic.config import Config

    url = normalise_url(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    finally:
        engine.dispose()


def _storable(text: str, n: int) -> str:
    """`text` cut to `n` characters, with what PostgreSQL cannot store (NUL) or UTF-8 cannot encode (lone
    surrogates) replaced: the audit log records what was sent, even a hostile login name."""
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text[:n])


def printable_name(name: str, n: int) -> str:
    """A user-supplied name (an upload's file name) safe to show and store: cut to `n` characters, control
    characters, NUL and lone surrogates replaced."""
    return "".join(c if c.isprintable() and not "\ud800" <= c <= "\udfff" else "\ufffd" for c in name[:n])


def audit(s: Session, actor: str, action: str, target: str = "", **detail: Any) -> None:
    detail = {k: _storable(v, 1000) if isinstance(v, str) else v for k, v in detail.items()}
    s.add(AuditEvent(actor=_storable(actor, 64), action=action, target=_storable(target, 255),
                     detail=detail or None))


# ---------------------------------------------------------------- users, sessions, tokens

def new_password_hash(password: str) -> str:
    """The Argon2 hash of an acceptable new password. Callers hash before opening a write transaction, so the
    tens of milliseconds of hashing never hold the database's write lock."""
    problem = security.password_problem(password)
    if problem:
        raise AppError(problem)
    return security.hash_password(password)


def create_user(s: Session, username: str, password: str | None, role: str = "annotator", pool: str = "default",
                actor: str = "cli", password_hash: str | None = None) -> User:
    """A new user; `password_hash` (from `new_password_hash`) instead of `password` keeps hashing outside the
    transaction. Usernames are unique regardless of case: "Alice" exists once "alice" does."""
    if not USERNAME_RE.match(username):
        raise AppError(f"invalid username {username[:64]!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise AppError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if not pool or len(pool) > 64:
        raise AppError("pool must be a non-empty name of at most 64 characters")
    check_text(pool, "pool")
    if user_by_name(s, username) is not None:
        raise AppError(f"user {username!r} already exists", 409)
    if password_hash is None:
        password_hash = new_password_hash(password or "")
    user = User(username=username, password_hash=password_hash, role=role, pool=pool)
    s.add(user)
    s.flush()
    audit(s, actor, "user.create", username, role=role, pool=pool)
    return user


def user_by_name(s: Session, username: str) -> User | None:
    """The user of that name in any case; None for a name no account can have (NUL, too long)."""
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        return None
    return s.scalar(select(User).where(func.lower(User.username) == username.lower()))


def set_password(s: Session, user: User, password: str | None, actor: str, password_hash: str | None = None
                 ) -> None:
    user.password_hash = password_hash if password_hash is not None else new_password_hash(password or "")
    # A new password ends every way in that the old one may have opened: sessions and API tokens (a token
    # minted by someone who had the password keeps no access after the owner resets it).
    s.execute(LoginSession.__table__.delete().where(LoginSession.user_id == user.id))
    s.execute(ApiToken.__table__.update().where(ApiToken.user_id == user.id).values(revoked=True))
    audit(s, actor, "user.password", user.username)


def deactivate_user(s: Session, user: User, actor: str) -> None:
    user.active = False
    s.execute(LoginSession.__table__.delete().where(LoginSession.user_id == user.id))
    s.execute(ApiToken.__table__.update().where(ApiToken.user_id == user.id).values(revoked=True))
    audit(s, actor, "user.deactivate", user.username)


def password_user(s: Session, username: str, password: str) -> User | None:
    """The active user `username` if `password` is theirs, else None (as `token_user` for a token)."""
    user = user_by_name(s, username)
    ok = security.verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None


def create_session(s: Session, user: User) -> tuple[str, str]:
    """A new login session: (cookie token, CSRF token). Expired sessions are deleted on the way."""
    s.execute(LoginSession.__table__.delete().where(LoginSession.expires_at < utcnow()))
    token, csrf = security.new_token(), security.new_token()
    s.add(LoginSession(token_hash=security.token_hash(token), user_id=user.id, csrf_token=csrf,
                       expires_at=utcnow() + SESSION_LIFETIME))
    return token, csrf


def session_user(s: Session, token: str) -> tuple[User, LoginSession] | None:
    row = s.execute(select(User, LoginSession).join(LoginSession, LoginSession.user_id == User.id)
                    .where(LoginSession.token_hash == security.token_hash(token))).first()
    if row is None or row[1].expires_at < utcnow() or not row[0].active:
        return None
    return row[0], row[1]


def delete_session(s: Session, token: str) -> None:
    s.execute(LoginSession.__table__.delete().where(LoginSession.token_hash == security.token_hash(token)))


def create_token(s: Session, user: User, name: str = "", actor: str = "cli") -> str:
    token = "plt_" + security.new_token()
    s.add(ApiToken(token_hash=security.token_hash(token), user_id=user.id, name=name[:128]))
    audit(s, actor, "token.create", user.username, name=name[:128])
    return token


def revoke_token(s: Session, token: str | None = None, token_id: int | None = None, actor: str = "cli") -> ApiToken:
    """Revoke one API token, given as the token itself or by id (`prefloop annotate tokens` lists them)."""
    if token is not None:
        t = s.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token)))
    else:
        t = s.get(ApiToken, token_id) if token_id is not None and 0 < token_id <= MAX_DB_ID else None
    if t is None:
        raise not_found("API token")
    t.revoked = True
    owner = s.get(User, t.user_id)
    audit(s, actor, "token.revoke", owner.username if owner else "", token_id=t.id, name=t.name)
    return t


def token_user(s: Session, token: str) -> User | None:
    user = s.scalar(select(User).join(ApiToken, ApiToken.user_id == User.id)
                    .where(ApiToken.token_hash == security.token_hash(token), ApiToken.revoked.is_(False)))
    return user if user is not None and user.active else None


def provision_annotators(s: Session, project: Project, annotators: list[tuple[str, str]], actor: str = "cli"
                         ) -> dict[str, str]:
    """Accounts for simulated annotators `(username, pool)` (created if missing, with an unusable random
    password), made members of `project`; returns a new API token per username, for `client.simulate`."""
    tokens = {}
    for name, pool in annotators:
        user = user_by_name(s, name) or create_user(s, name, security.new_token(), "annotator", pool, actor)
        add_member(s, project, user, actor)
        tokens[name] = create_token(s, user, "simulated", actor)
    return tokens


# ---------------------------------------------------------------- projects

@dataclass(frozen=True)
class ProjectSpec:
    name: str
    """Unique project (campaign) name."""
    task_type: str
    """pairwise, ranking, rating or demonstration."""
    guidelines: str = ""
    """Shown to annotators above every item (plain text, line breaks kept)."""
    overlap: int = 1
    """Distinct annotators per regular item."""
    gold_rate: float = 0.0
    """Probability that a new assignment is a gold item (known answer), in [0, 1)."""
    scale: tuple[int, int] = DEFAULT_SCALE
    """Rating scale (lo, hi), integers."""
    criteria: tuple[str, ...] = ()
    """Named rating criteria, each rated on the same scale (optional for the annotator)."""
    flags: tuple[str, ...] = ()
    """Rating flags the annotator can tick, e.g. "contains a made-up fact"."""


def create_project(s: Session, spec: ProjectSpec, actor: str = "cli") -> Project:
    if not spec.name or len(spec.name) > 128:
        raise AppError("project name must have 1-128 characters")
    for what, value in (("project name", spec.name), ("guidelines", spec.guidelines),
                        ("criteria", list(spec.criteria)), ("flags", list(spec.flags))):
        check_text(value, what)
    if spec.task_type not in TASK_TYPES:
        raise AppError(f"unknown task type {spec.task_type!r}; task types: {', '.join(TASK_TYPES)}")
    if not 1 <= spec.overlap <= 100:
        raise AppError(f"overlap must be between 1 and 100, got {spec.overlap}")
    if not 0.0 <= spec.gold_rate < 1.0:
        raise AppError(f"gold rate must be in [0, 1), got {spec.gold_rate}")
    lo, hi = spec.scale
    if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi and hi - lo <= 10):
        raise AppError(f"scale must be two integers lo < hi at most 10 apart, got {lo}-{hi}")
    for name in (*spec.criteria, *spec.flags):
        if not name or len(name) > 200:
            raise AppError("criteria and flag names must have 1-200 characters")
    if s.scalar(select(Project.id).where(Project.name == spec.name)) is not None:
        raise AppError(f"project {spec.name!r} already exists", 409)
    p = Project(name=spec.name, task_type=spec.task_type, guidelines=spec.guidelines, overlap=spec.overlap,
                gold_rate=spec.gold_rate,
                config={"scale": [lo, hi], "criteria": list(spec.criteria), "flags": list(spec.flags)})
    s.add(p)
    s.flush()
    audit(s, actor, "project.create", spec.name, task_type=spec.task_type, overlap=spec.overlap,
          gold_rate=spec.gold_rate)
    return p


def project_by_ref(s: Session, ref: str | int) -> Project:
    """A project by id or name."""
    p = None
    if (isinstance(ref, int) or str(ref).isdigit()) and 0 < int(ref) <= MAX_DB_ID:
        p = s.get(Project, int(ref))
    if p is None and text_problem(str(ref)) is None:
        p = s.scalar(select(Project).where(Project.name == str(ref)))
    if p is None:
        raise not_found(f"project {ref!r}")
    return p


def add_member(s: Session, project: Project, user: User, actor: str = "cli") -> None:
    if is_member(s, project, user):
        return
    s.add(Member(project_id=project.id, user_id=user.id))
    audit(s, actor, "project.add_member", project.name, user=user.username)


def is_member(s: Session, project: Project, user: User) -> bool:
    return s.connection().execute(_IS_MEMBER, {"pid": project.id, "uid": user.id}).first() is not None


def projects_of(s: Session, user: User) -> list[Project]:
    if user.role == "admin":
        return list(s.scalars(select(Project).order_by(Project.id)))
    return list(s.scalars(select(Project).join(Member, Member.project_id == Project.id)
                          .where(Member.user_id == user.id).order_by(Project.id)))


# ---------------------------------------------------------------- assignment

def _keyed_unit(key: bytes, *parts: object) -> float:
    digest = hmac.new(key, "/".join(map(str, parts)).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


@dataclass(frozen=True)
class NewAssignment:
    """A just-created assignment, with the attributes of an `assignments` row."""

    id: int
    project_id: int
    item_id: int
    user_id: int
    order: list
    done: bool
    created_at: datetime


def open_assignment(s: Session, project: Project, user: User) -> Row | None:
    """The user's oldest unjudged assignment in the project (a row with the columns of `Assignment`)."""
    return s.connection().execute(_OPEN, {"uid": user.id, "pid": project.id}).first()


def _pick_item(s: Session, project: Project, user: User, gold: bool) -> Row | None:
    params = {"pid": project.id, "uid": user.id, "overlap": project.overlap}
    return s.connection().execute(_PICK_GOLD if gold else _PICK, params).first()


def next_assignment(s: Session, project: Project, user: User, key: bytes, member_checked: bool = False
                    ) -> Row | NewAssignment | None:
    """The user's open assignment in the project, or a new one; None when nothing is left for them.

    Each regular item goes to at most `overlap` distinct annotators (the unique (item, user) constraint and
    the `n_assigned` counter, updated in the same write transaction); a gold item is mixed in with
    probability `gold_rate`, decided by a keyed hash so it is unpredictable but reproducible. The display
    order of the responses is a keyed permutation per (user, item): stable across reloads, hidden from others.
    """
    if not member_checked and not is_member(s, project, user):
        raise AppError(f"you are not a member of project {project.name!r}", 403)
    s.connection().execute(_LOCK_USER, {"uid": user.id})
    current = open_assignment(s, project, user)
    if current is not None:
        return current
    conn = s.connection()
    item = None
    if project.gold_rate > 0:
        n_done = conn.execute(_N_TAKEN, {"uid": user.id, "pid": project.id}).scalar() or 0
        if _keyed_unit(key, "gold", project.id, user.id, n_done) < project.gold_rate:
            item = _pick_item(s, project, user, gold=True)
    if item is None:
        item = _pick_item(s, project, user, gold=False)
    if item is None:
        return None
    n = len(item.responses)
    order = security.keyed_bit_order(key, n, "order", user.id, item.id) if n > 1 else list(range(n))
    row = {"project_id": project.id, "item_id": item.id, "user_id": user.id, "order": order, "done": False,
           "created_at": utcnow()}
    aid = conn.execute(A.insert().values(**row)).inserted_primary_key[0]
    conn.execute(_TAKE, {"iid": item.id})
    return NewAssignment(id=aid, **row)


def release_stale(s: Session, project: Project, older_than: timedelta, actor: str = "cli") -> int:
    """Take back unjudged assignments older than `older_than` (an annotator who left), so their items go to
    someone else; returns how many. The released annotator's page then gets a new assignment."""
    cutoff = utcnow() - older_than
    stale = s.connection().execute(select(A.c.id, A.c.item_id).where(
        A.c.project_id == project.id, A.c.done.is_(False), A.c.created_at < cutoff)).all()
    for aid, item_id in stale:
        s.connection().execute(A.delete().where(A.c.id == aid, A.c.done.is_(False)))
        s.connection().execute(I.update().where(I.c.id == item_id).values(n_assigned=I.c.n_assigned - 1))
    audit(s, actor, "project.release", project.name, assignments=len(stale),
          older_than_minutes=older_than.total_seconds() / 60)
    return len(stale)


def assignment_of(s: Session, assignment_id: int, user: User, lock: bool = False) -> Row:
    """The user's own assignment; another user's is reported as not found (its existence is not revealed).
    `lock`: hold its row until the transaction ends (before judging it)."""
    if not 0 < assignment_id <= MAX_DB_ID:
        raise not_found(f"assignment {assignment_id}")
    a = s.connection().execute(_ASSIGNMENT_LOCKED if lock else _ASSIGNMENT, {"aid": assignment_id}).first()
    if a is None or a.user_id != user.id:
        raise not_found(f"assignment {assignment_id}")
    return a


def item_content(s: Session, item_id: int) -> Row:
    """(prompt, responses) of an item."""
    return s.connection().execute(_CONTENT, {"iid": item_id}).one()


def assignment_view(project: Project, item: Any, a: Any) -> dict:
    """What the annotator sees: the prompt and the responses in their display order, nothing else."""
    view = {"assignment_id": a.id, "project_id": project.id, "task_type": project.task_type,
            "prompt": item.prompt, "responses": [item.responses[i] for i in a.order], "done": a.done}
    if project.task_type == "rating":
        view |= {"scale": project.config["scale"], "criteria": project.config["criteria"],
                 "flags": project.config["flags"]}
    return view


# ---------------------------------------------------------------- judgments

def ranks_from_order(order: Any, n: int) -> list[int] | None:
    if not (isinstance(order, list) and sorted(order) == list(range(n))
            and all(isinstance(i, int) and not isinstance(i, bool) for i in order)):
        return None
    ranks = [0] * n
    for r, i in enumerate(order, 1):
        ranks[i] = r
    return ranks


def valid_ranks(ranks: Any, n: int) -> bool:
    return (isinstance(ranks, list) and len(ranks) == n
            and all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= n for r in ranks))


def _int_in(value: Any, lo: int, hi: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise AppError(f"'{name}' must be an integer from {lo} to {hi}, got {json.dumps(value)[:40]}", 422)
    return value


def _rating_value(project: Project, payload: dict) -> dict:
    lo, hi = project.config["scale"]
    value = {"rating": _int_in(payload.get("rating"), lo, hi, "rating")}
    criteria = payload.get("criteria") or {}
    if not isinstance(criteria, dict) or set(criteria) - set(project.config["criteria"]):
        raise AppError(f"'criteria' must map names among {project.config['criteria']} to ratings", 422)
    value["criteria"] = {k: _int_in(v, lo, hi, f"criteria.{k}") for k, v in criteria.items()}
    flags = payload.get("flags") or []
    if not isinstance(flags, list) or set(flags) - set(project.config["flags"]):
        raise AppError(f"'flags' must be a list of names among {project.config['flags']}", 422)
    value["flags"] = sorted(set(flags))
    return value


def normalise_judgment(project: Project, a: Any, payload: Any) -> dict:
    """A payload in display positions -> the stored value in response indices.

    pairwise: `{"choice": 0 | 1 | "tie", "strength": 1..3}` -> `{"preferred": index | None, "strength"}`;
    ranking: `{"ranks": [rank per position]}` (1 = best, equal ranks are ties) or `{"ranking": [positions,
    best first]}` -> `{"ranks": [rank per response]}`; rating: `{"rating", "criteria", "flags"}`;
    demonstration: `{"text"}`.
    """
    if not isinstance(payload, dict):
        raise AppError("the judgment must be a JSON object", 422)
    order, n, t = a.order, len(a.order), project.task_type
    if t == "pairwise":
        choice = payload.get("choice")
        if choice == "tie":
            return {"preferred": None, "strength": 0}
        pos = _int_in(choice, 0, 1, "choice") if choice != "tie" else None
        return {"preferred": order[pos], "strength": _int_in(payload.get("strength", 1), 1, 3, "strength")}
    if t == "ranking":
        ranks = payload.get("ranks")
        if ranks is None and "ranking" in payload:
            ranks = ranks_from_order(payload["ranking"], n)
        if not valid_ranks(ranks, n):
            raise AppError(f"give 'ranks' ({n} ranks from 1, equal ranks for ties) or 'ranking' "
                           f"(a permutation of 0..{n - 1}, best first)", 422)
        by_index = [0] * n
        for pos, r in enumerate(ranks):
            by_index[order[pos]] = r
        return {"ranks": by_index}
    if t == "rating":
        return _rating_value(project, payload)
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise AppError("'text' must be a non-empty string", 422)
    check_text(text, "'text'", 100_000)
    return {"text": text}


def submit_judgment(s: Session, project: Project, a: Row, user: User, submission_id: str, payload: Any,
                    duration_ms: int | None = None) -> tuple[int, bool]:
    """Store a judgment; returns (judgment id, duplicate). A retry with the same submission id returns the stored
    judgment and changes nothing; a different submission for a judged assignment is a conflict."""
    if not isinstance(submission_id, str) or not SUBMISSION_ID_RE.match(submission_id):
        raise AppError("'submission_id' must be a string of 8-64 printable ASCII characters (e.g. a UUID)", 422)
    conn = s.connection()
    prior = conn.execute(_PRIOR, {"uid": user.id, "sid": submission_id}).first()
    if prior is not None:
        if prior.assignment_id != a.id:
            raise AppError("this submission id was already used for another assignment", 409)
        return prior.id, True
    if a.done:
        raise AppError("this assignment already has a judgment", 409)
    value = normalise_judgment(project, a, payload)
    now = utcnow()
    if duration_ms is not None:
        duration_ms = _int_in(duration_ms, 0, 7 * 24 * 3600 * 1000, "duration_ms")
    else:
        duration_ms = max(0, int((now - a.created_at).total_seconds() * 1000))
    jid = conn.execute(J.insert().values(assignment_id=a.id, project_id=project.id, item_id=a.item_id,
                                         user_id=user.id, submission_id=submission_id, value=value,
                                         duration_ms=duration_ms, created_at=now)).inserted_primary_key[0]
    done = conn.execute(_MARK_DONE, {"aid": a.id})
    if done.rowcount != 1:  # judged meanwhile (possible on PostgreSQL, where writers are not serialised)
        raise AppError("this assignment already has a judgment", 409)
    return jid, False


def commit_or_conflict(s: Session) -> None:
    """Commit; a unique-constraint race becomes a 409."""
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        raise AppError("conflicting concurrent change, please retry", 409) from None


# ---------------------------------------------------------------- the annotator's own work: skip, previous, edit
# (state changes only on POST: a page view never creates or changes an assignment)

SKIP_REASONS = {
    "unsure": "I cannot judge this (outside what I know)",
    "broken": "The text is broken, empty or unreadable",
    "harmful": "Disturbing content I prefer not to judge",
    "other": "Other reason",
}


def items_left(s: Session, project: Project, user: User) -> bool:
    """Whether `next_assignment` would give the user something: an open assignment or an unseen regular item
    with room (gold items are only mixed in between regular ones)."""
    if open_assignment(s, project, user) is not None:
        return True
    unseen = ~exists().where(A.c.item_id == I.c.id, A.c.user_id == user.id)
    return s.connection().execute(select(I.c.id).where(
        I.c.project_id == project.id, I.c.is_gold.is_(False), I.c.n_assigned < project.overlap, unseen).limit(1)
    ).first() is not None


def skip_assignment(s: Session, project: Project, a: Row, user: User, reason: str, note: str = "") -> None:
    """The user passes on an open assignment: it is closed without a judgment and its item goes back to the
    pool for someone else (the user is not offered it again). `reason` is a key of SKIP_REASONS."""
    if reason not in SKIP_REASONS:
        raise AppError(f"unknown skip reason {reason!r}; reasons: {', '.join(SKIP_REASONS)}", 422)
    note = " ".join(note.split())  # one line
    if reason == "other" and not note:
        raise AppError("say why you skip this item", 422)
    if len(note) > 400:
        raise AppError("the skip note is longer than 400 characters", 422)
    if a.done:
        raise AppError("this assignment is already closed", 409)
    text = f"{reason}: {note}" if note else reason
    conn = s.connection()
    closed = conn.execute(A.update().where(A.c.id == a.id, A.c.done.is_(False)).values(done=True, skip_reason=text))
    if closed.rowcount != 1:
        raise AppError("this assignment is already closed", 409)
    conn.execute(I.update().where(I.c.id == a.item_id).values(n_assigned=I.c.n_assigned - 1))
    audit(s, user.username, "assignment.skip", project.name, assignment=a.id, reason=text)


def judgment_of(s: Session, a: Any) -> Row | None:
    """The judgment of an assignment (None when it was skipped or is still open)."""
    return s.connection().execute(select(J).where(J.c.assignment_id == a.id)).first()


def judged_neighbour(s: Session, project: Project, user: User, aid: int | None, older: bool) -> int | None:
    """The id of the user's judged assignment just before (`older`) or after `aid` in the project (None: none;
    `aid` None with `older`: the newest)."""
    q = (select(A.c.id).join(J, J.c.assignment_id == A.c.id)
         .where(A.c.project_id == project.id, A.c.user_id == user.id))
    if aid is not None:
        q = q.where(A.c.id < aid if older else A.c.id > aid)
    q = q.order_by(A.c.id.desc() if older else A.c.id).limit(1)
    return s.connection().execute(q).scalar()


def edit_judgment(s: Session, project: Project, a: Row, user: User, payload: Any) -> dict:
    """Replace the user's own answer to a judged assignment; returns the new stored value. Exports and the
    dashboard read the stored value, so both reflect the edit; the audit log keeps the earlier value."""
    prior = judgment_of(s, a)
    if prior is None:
        raise AppError("only an answered item can be edited", 409)
    value = normalise_judgment(project, a, payload)
    if value != prior.value:
        s.connection().execute(J.update().where(J.c.id == prior.id).values(value=value, edited_at=utcnow()))
        audit(s, user.username, "judgment.edit", project.name, judgment=prior.id, before=prior.value, after=value)
    return value


def set_guidelines(s: Session, project: Project, text: str, actor: str) -> None:
    """Replace the project's guidelines (Markdown)."""
    text = text.replace("\r\n", "\n")
    if len(text) > 100_000:
        raise AppError("the guidelines are longer than 100,000 characters", 422)
    if text != project.guidelines:
        project.guidelines = text
        audit(s, actor, "project.guidelines", project.name, characters=len(text))


def queue_depth(s: Session, project: Project) -> int:
    """Regular items that can still be handed out (fewer than `overlap` assignments): when this runs low, a
    project fed by the loop can ask it for more items before annotators run out of work."""
    return s.connection().execute(select(func.count()).select_from(I).where(
        I.c.project_id == project.id, I.c.is_gold.is_(False), I.c.n_assigned < project.overlap)).scalar() or 0
