"""Passwords, tokens, the instance secret key and login rate limiting.

Passwords are hashed with Argon2id (memory-hard; RFC 9106), via argon2-cffi's defaults. Session cookies and API
tokens are 256-bit random strings; the database stores only their SHA-256, so a copy of the database lets no
one log in. The secret key (`PREFLOOP_SECRET_KEY`, or a random key generated once into `<data dir>/secret_key`
with mode 0600) keys the HMACs that fix each annotator's left/right order; nothing secret lives in the code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from prefloop.errors import SecretKeyError

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10
# verified against when the user does not exist, so a login takes as long for unknown names
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


# each Argon2 computation holds 64 MiB: at most this many run at once, so a burst of logins queues instead of
# taking one block per server thread (40 threads: 2.5 GiB)
PASSWORD_CHECK_SLOTS = 4
_slots = threading.BoundedSemaphore(PASSWORD_CHECK_SLOTS)


def hash_password(password: str) -> str:
    with _slots:
        return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if `password` matches; runs one Argon2 verification even for an unknown user."""
    try:
        with _slots:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must have at least {MIN_PASSWORD_LENGTH} characters"
    return None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_secret_key(data_dir: str | os.PathLike | None) -> bytes:
    """`PREFLOOP_SECRET_KEY` from the environment, else `<data_dir>/secret_key` (created on first use)."""
    env = os.environ.get("PREFLOOP_SECRET_KEY")
    if env:
        if len(env) < 32:
            raise SecretKeyError("PREFLOOP_SECRET_KEY must have at least 32 characters")
        return env.encode()
    if data_dir is None:
        raise SecretKeyError("no secret key: set PREFLOOP_SECRET_KEY (32+ characters, the same for every server "
                             "process) or give --data-dir, where a key is generated once")
    path = Path(data_dir) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic and never overwrites a key another process just made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def keyed_bit_order(key: bytes, n: int, *parts: object) -> list[int]:
    """A permutation of range(n) fixed by HMAC(key, parts): the same for one annotator and item, unpredictable
    to anyone without the key."""
    msg = "/".join(str(p) for p in parts).encode()
    weights = [hmac.new(key, msg + f"#{i}".encode(), hashlib.sha256).digest() for i in range(n)]
    return sorted(range(n), key=lambda i: weights[i])


class RateLimiter:
    """At most `limit` events per `window` seconds per key (a sliding window, kept in memory: one process only;
    the app uses `DbRateLimiter`, which every worker shares)."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._events: dict[str, deque] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        """Record an event unless `key` is at its limit (checked and recorded under one lock); False if blocked."""
        now = time.monotonic()
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            if len(self._events) > 100_000:  # bound the memory an attacker can make us use
                self._events.clear()
            return True

    def give_back(self, key: str) -> None:
        """Forget the newest event of `key` (an attempt that turned out not to count)."""
        with self._lock:
            q = self._events.get(key)
            if q:
                q.pop()

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


class DbRateLimiter:
    """`RateLimiter` with its events in the database table `rate_events`, so N server processes enforce the
    same limit as one. `take` counts and records in one write transaction: SQLite serialises those; on
    PostgreSQL a transaction-scoped advisory lock on the key does."""

    def __init__(self, db, prefix: str, limit: int, window: float):
        self.db, self.prefix, self.limit, self.window = db, prefix, limit, window

    def _key(self, key: str) -> str:
        # a key is what a client sent (a login name): keep it storable in any database (no NUL, no surrogate)
        k = f"{self.prefix}:{key}"[:200]
        return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in k)

    def take(self, key: str) -> bool:
        from sqlalchemy import delete, func, insert, select, text

        from .db import RateEvent

        k, now = self._key(key), time.time()
        with self.db.write() as s:
            if not self.db.is_sqlite:
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": k})
            # forget this key's old events (and, now and then, everyone's) so the table stays small
            s.execute(delete(RateEvent).where(RateEvent.key == k, RateEvent.at <= now - self.window))
            n = s.scalar(select(func.count()).select_from(RateEvent).where(RateEvent.key == k))
            if n >= self.limit:
                s.commit()
                return False
            s.execute(insert(RateEvent).values(key=k, at=now))
            if secrets.randbelow(100) == 0:
                s.execute(delete(RateEvent).where(RateEvent.at <= now - self.window))
            s.commit()
            return True

    def give_back(self, key: str) -> None:
        from sqlalchemy import delete, func, select

        from .db import RateEvent

        k = self._key(key)
        with self.db.write() as s:
            newest = select(func.max(RateEvent.id)).where(RateEvent.key == k).scalar_subquery()
            s.execute(delete(RateEvent).where(RateEvent.id == newest))
            s.commit()

    def reset(self, key: str) -> None:
        from sqlalchemy import delete

        from .db import RateEvent

        with self.db.write() as s:
            s.execute(delete(RateEvent).where(RateEvent.key == self._key(key)))
            s.commit()
