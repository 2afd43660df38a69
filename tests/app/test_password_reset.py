"""A new password ends the old credentials: sessions and API tokens minted before the reset stop working."""

from __future__ import annotations

from prefloop.feedback.cli import main as cli_main

from .conftest import login


def test_set_password_revokes_sessions_and_tokens(server, monkeypatch):
    import io

    with server.client("admin") as c:
        assert c.post("/api/users", json={"username": "resetme", "password": "resetme-password-1"}).status_code == 201
        token = c.post("/api/users/resetme/tokens", json={"name": "minted before"}).json()["token"]
    browser = login(server, "resetme", "resetme-password-1")
    assert browser.get("/api/me").status_code == 200
    monkeypatch.setattr("sys.stdin", io.StringIO("resetme-password-2\n"))
    assert cli_main(["set-password", "--db", str(server.db), "--username", "resetme", "--password-stdin"]) == 0
    assert browser.get("/api/me").status_code == 401
    with server.client() as c:
        c.headers["authorization"] = f"Bearer {token}"  # never used before, so not in the server's token cache
        assert c.get("/api/me").status_code == 401
    assert login(server, "resetme", "resetme-password-2").get("/api/me").json()["username"] == "resetme"
