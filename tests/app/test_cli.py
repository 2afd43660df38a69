"""`prefloop annotate ...`: accounts, projects, import errors, export that the reward trainer reads unchanged,
simulated annotators through the REST API, and SQLite backup / restore."""

from __future__ import annotations

import io
import json
import random
import sqlite3

import pytest

from prefloop.data import read_comparisons
from prefloop.feedback.cli import main
from prefloop.world.annotators import Annotator

from .conftest import make_project

GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "ugly"]


def question(rng: random.Random) -> str:
    return f"User: What is {rng.randint(0, 9)} plus {rng.randint(0, 9)}?\nAssistant:"


def answer(rng: random.Random, words: list[str]) -> str:
    return f" It is {rng.choice(words)} {rng.randint(0, 18)}."


def run(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_accounts_projects_and_import_errors(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "cli.db")
    code, out, _ = run(["create-admin", "--db", db, "--username", "boss", "--password-stdin"], capsys,
                       "a-long-password\n", monkeypatch)
    assert code == 0 and "created admin 'boss'" in out and "a-long-password" not in out
    code, out, _ = run(["add-user", "--db", db, "--username", "ann", "--pool", "night"], capsys)
    assert code == 0 and len(out.split("password: ")[1].strip()) >= 16  # a generated password, shown once
    code, _, err = run(["add-user", "--db", db, "--username", "ann"], capsys)
    assert code == 2 and err.strip() == "error: user 'ann' already exists"
    code, _, err = run(["create-admin", "--db", db, "--username", "weak", "--password-stdin"], capsys, "short\n",
                       monkeypatch)
    assert code == 2 and "at least 10 characters" in err
    code, out, _ = run(["set-password", "--db", db, "--username", "ann", "--password-stdin"], capsys,
                       "new-password-2\n", monkeypatch)
    assert code == 0 and out.strip() == "password set: ann"
    code, _, err = run(["deactivate", "--db", db, "--username", "ghost"], capsys)
    assert code == 2 and err.strip() == "error: no user 'ghost'"
    code, out, _ = run(["create-project", "--db", db, "--name", "p", "--task", "ranking", "--members", "ann"], capsys)
    assert code == 0
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"prompt": "a", "responses": ["x", "y"]}\n\n{"prompt": "b", "responses": ["x"]}\n')
    code, _, err = run(["import", "--db", db, "--project", "p", str(bad)], capsys)
    assert code == 2 and err.startswith(f"error: {bad}:3: ") and "2..9 responses" in err
    bad.write_text('{"prompt": "a", "responses": ["x", "y"]}\n'
                   '{"prompt": "a", "responses": ["x", "y"], "id": "line1"}\n')
    code, _, err = run(["import", "--db", db, "--project", "p", str(bad)], capsys)
    assert code == 2 and f"{bad}:2: duplicate item id 'line1'" in err
    code, _, err = run(["import", "--db", db, "--project", "nope", str(bad)], capsys)
    assert code == 2 and "project 'nope' not found" in err
    code, _, err = run(["export", "--db", db, "--project", "p", "--out", str(tmp_path / "e.jsonl"),
                        "--kind", "ratings"], capsys)
    assert code == 2 and "ranking project exports comparisons or rankings" in err
    assert run(["create-project", "--db", db, "--name", "q", "--task", "poll"], capsys)[0] == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0  # nothing half-imported
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE actor = 'cli'")]
    assert actions[:4] == ["user.create", "user.create", "user.password", "project.create"]
    from prefloop.feedback import service
    from prefloop.feedback.db import Database

    d = Database(db)
    with d.write() as s:
        assert service.password_user(s, "ann", "new-password-2") is not None
        token = service.create_token(s, service.user_by_name(s, "ann"))
        s.commit()
    assert run(["deactivate", "--db", db, "--username", "ann"], capsys)[0] == 0
    with d.read() as s:
        assert service.password_user(s, "ann", "new-password-2") is None and service.token_user(s, token) is None
    d.dispose()


class ToyGold:
    """A gold scorer for the toy data: a GOOD word is worth +2, a BAD one -2."""

    def details(self, prompt, response: str) -> dict:
        good = any(w in response for w in GOOD)
        return {"score": 2.0 if good else -2.0, "n_words": len(response.split())}


def test_simulated_annotators_export_and_reward_training(server, tmp_path, capsys, policy_dir):
    from prefloop.cli import main as prefloop_main
    from prefloop.feedback.client import FeedbackClient, simulate

    rng = random.Random(3)
    items = []
    for i in range(24):
        pair = [answer(rng, GOOD), answer(rng, BAD)]
        rng.shuffle(pair)
        items.append({"id": f"toy{i}", "prompt": question(rng), "responses": pair})
    pid = make_project(server, "toy", "pairwise", items, members=["ann1", "ann3"], overlap=2)
    gold = ToyGold()
    for name in ("ann1", "ann3"):
        people = Annotator(name, "standard", rationality=float("inf"), noise=0.0, gold=gold)
        client = FeedbackClient(server.url, server.tokens[name])
        assert simulate(client, pid, people) == 24
        client.close()
    export = tmp_path / "export.jsonl"
    code, out, _ = run(["export", "--db", str(server.db), "--project", "toy", "--out", str(export)], capsys)
    assert code == 0 and "wrote 48 records" in out
    records = read_comparisons(export)
    assert all(any(w in r.chosen for w in GOOD) and any(w in r.rejected for w in BAD) for r in records)
    assert {(r.annotator, r.pool) for r in records} == {("ann1", "standard"), ("ann3", "verbose")}
    code, out, _ = run(["stats", "--db", str(server.db), "--project", "toy"], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["progress"]["judgments"] == 48 and stats["agreement"]["raw_agreement"] == 1.0
    code = prefloop_main(["reward", "--model", str(policy_dir), "--data", str(export), "--out", str(tmp_path / "rm"),
                          "--max-steps", "2", "--batch-size", "8", "--max-length", "64", "--eval-fraction", "0"])
    assert code == 0 and (tmp_path / "rm" / "model" / "model.safetensors").exists()


def test_backup_while_serving_and_restore(server, tmp_path, capsys):
    pid = make_project(server, "backup", "pairwise",
                       [{"id": "b", "prompt": "p", "responses": ["x", "y"]}], members=["ann2"])
    with server.client("ann2") as c:
        v = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        assert c.post(f"/api/assignments/{v['assignment_id']}/judgment",
                      json={"submission_id": "backup-0001", "value": {"choice": 0, "strength": 1}}).status_code == 200
    backup = tmp_path / "snap.db"
    code, out, _ = run(["backup", "--db", str(server.db), "--out", str(backup)], capsys)  # the server is running
    assert code == 0 and backup.exists()
    # restore into a fresh database file and read the judgment back
    restored = tmp_path / "restored.db"
    code, _, _ = run(["restore", "--db", str(restored), "--from", str(backup)], capsys)
    assert code == 0
    with sqlite3.connect(restored) as conn:
        assert conn.execute("SELECT count(*) FROM judgments WHERE submission_id = 'backup-0001'").fetchone()[0] == 1
        assert conn.execute("SELECT action FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()[0] == "database.restore"
    # restoring over a database replaces what was there
    with sqlite3.connect(restored) as conn:
        conn.execute("DELETE FROM judgments")
    assert run(["restore", "--db", str(restored), "--from", str(backup)], capsys)[0] == 0
    with sqlite3.connect(restored) as conn:
        assert conn.execute("SELECT count(*) FROM judgments WHERE submission_id = 'backup-0001'").fetchone()[0] == 1
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    code, _, err = run(["restore", "--db", str(restored), "--from", str(junk)], capsys)
    assert code == 2 and ("not a SQLite database" in err or "integrity check" in err)
    code, _, err = run(["backup", "--db", "postgresql://u@h/db", "--out", str(backup)], capsys)
    assert code == 2 and "pg_dump" in err


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_exits_zero(argv, capsys):
    assert main(argv) == 0
    assert "usage: prefloop annotate" in capsys.readouterr().out


def test_sample_from_a_checkpoint_and_import_sample_output(tmp_path, capsys, policy_dir):
    db = str(tmp_path / "s.db")
    prompts = tmp_path / "prompts.jsonl"
    rng = random.Random(0)
    prompts.write_text("".join(json.dumps({"prompt": question(rng)}) + "\n" for _ in range(6)))
    assert run(["create-project", "--db", db, "--name", "sampled", "--task", "ranking"], capsys)[0] == 0
    code, out, err = run(["sample", "--db", db, "--project", "sampled", "--model", str(policy_dir), "--prompts",
                          str(prompts), "--num-samples", "3", "--max-new-tokens", "6"], capsys)
    assert code == 0, err
    n = int(out.split()[1])
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT responses, meta FROM items").fetchall()
    assert len(rows) == n >= 1 and all(2 <= len(json.loads(r)) <= 3 for r, _ in rows)
    assert json.loads(rows[0][1])["model"] == str(policy_dir)
    # `prefloop sample` output ({"prompt", "responses", "ended"}) imports as it is
    sample_out = tmp_path / "samples.jsonl"
    sample_out.write_text(json.dumps({"prompt": "User: hi\nAssistant:", "responses": [" a", " b", " c"],
                                      "ended": [True, True, False]}) + "\n")
    code, out, _ = run(["import", "--db", db, "--project", "sampled", str(sample_out)], capsys)
    assert code == 0 and out.strip() == "imported 1 items"


def test_simulate_command_annotates_a_world_through_the_api(server, tmp_path, capsys):
    from prefloop.world.world import WorldConfig, build_world, write_world

    world = build_world(WorldConfig.preset("tiny"))
    write_world(world, tmp_path / "world")
    pairs = [json.loads(x) for x in (tmp_path / "world" / "comparisons.jsonl").read_text().splitlines()[:40]]
    items = [{"id": f"w{i}", "prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]}
             for i, r in enumerate(pairs)]
    pid = make_project(server, "world", "pairwise", items, members=[])
    from prefloop.feedback import service
    from prefloop.feedback.db import Database

    d = Database(str(server.db))
    with d.write() as s:  # the world's annotators get accounts in the app (as the iterated loop does)
        tokens = service.provision_annotators(s, service.project_by_ref(s, pid),
                                              [(a.id, a.pool) for a in world.annotators[:2]])
        s.commit()
    d.dispose()
    code, out, err = run(["simulate", "--url", server.url, "--token", tokens["a00"], "--project", str(pid),
                          "--world", str(tmp_path / "world"), "--annotator", "a00"], capsys)
    assert code == 0 and out.strip() == "a00 submitted 40 judgments", err
    export = tmp_path / "world.jsonl"
    assert run(["export", "--db", str(server.db), "--project", "world", "--out", str(export)], capsys)[0] == 0
    records = read_comparisons(export)
    gold = world.gold
    agree = [gold.score(r.prompt, r.chosen) > gold.score(r.prompt, r.rejected) for r in records
             if gold.score(r.prompt, r.chosen) != gold.score(r.prompt, r.rejected)]
    assert len(agree) >= 20 and sum(agree) / len(agree) >= 0.6  # a noisy but informed annotator
    assert {r.annotator for r in records} == {"a00"} and {r.pool for r in records} == {world.annotators[0].pool}
    code, _, err = run(["simulate", "--url", server.url, "--token", tokens["a01"], "--project", str(pid),
                        "--world", str(tmp_path / "world"), "--annotator", "nobody"], capsys)
    assert code == 2 and "no annotator 'nobody'" in err


def test_simulate_reports_an_unreachable_server(tmp_path, capsys):
    from prefloop.world.world import WorldConfig, build_world, write_world

    from .conftest import free_port

    write_world(build_world(WorldConfig.preset("tiny")), tmp_path / "world")
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(["simulate", "--url", url, "--token", "plt_x", "--project", "1", "--world",
                        str(tmp_path / "world"), "--retries", "1"], capsys)
    assert code == 2 and err.startswith(f"error: POST {url}/api/projects/1/next: ")


def test_database_problems_are_one_line_errors(tmp_path, capsys):
    code, _, err = run(["init", "--db", str(tmp_path / "missing" / "dir" / "x.db")], capsys)
    assert code == 2 and err.strip().endswith("database error (unable to open database file)")
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello " * 1000)
    code, _, err = run(["init", "--db", str(not_db)], capsys)
    assert code == 2 and err.strip() == f"error: {not_db}: database error (file is not a database)"
    code, _, err = run(["init", "--db", "postgresql+nodriver://u:secret@127.0.0.1:1/x"], capsys)
    assert code == 2 and "secret" not in err and err.startswith("error: postgresql+nodriver://u:***@")


def test_release_gives_an_abandoned_item_to_someone_else(server, capsys):
    pid = make_project(server, "release", "pairwise", [{"id": "only", "prompt": "p", "responses": ["x", "y"]}],
                       members=["ann1", "ann2"])
    with server.client("ann1") as c1, server.client("ann2") as c2:
        a1 = c1.post(f"/api/projects/{pid}/next").json()["assignment"]
        assert c2.post(f"/api/projects/{pid}/next").json()["assignment"] is None  # overlap 1: taken
        code, out, _ = run(["release", "--db", str(server.db), "--project", "release", "--older-than", "60"], capsys)
        assert code == 0 and out.strip() == "released 0 assignments"  # not stale yet
        code, out, _ = run(["release", "--db", str(server.db), "--project", "release", "--older-than", "0"], capsys)
        assert code == 0 and out.strip() == "released 1 assignments"
        a2 = c2.post(f"/api/projects/{pid}/next").json()["assignment"]
        assert a2 is not None and a2["prompt"] == "p"
        late = c1.post(f"/api/assignments/{a1['assignment_id']}/judgment",
                       json={"submission_id": "late-0001", "value": {"choice": 0}})
        assert late.status_code == 404  # the released assignment is gone
        assert c2.post(f"/api/assignments/{a2['assignment_id']}/judgment",
                       json={"submission_id": "now-0001", "value": {"choice": 1}}).status_code == 200


def test_revoke_one_token_and_usernames_ignore_case(server, capsys, monkeypatch):
    db = str(server.db)
    code, _, err = run(["add-user", "--db", db, "--username", "ANN1", "--password-stdin"], capsys,
                       "another-password-1\n", monkeypatch)
    assert code == 2 and "already exists" in err  # ann1 exists: names are one account in any case
    code, out, _ = run(["token", "--db", db, "--username", "Ann2", "--name", "one"], capsys)
    assert code == 0
    first = out.strip().splitlines()[-1]
    code, out, _ = run(["token", "--db", db, "--username", "ann2", "--name", "two"], capsys)
    second = out.strip().splitlines()[-1]
    code, out, _ = run(["tokens", "--db", db, "--username", "ann2"], capsys)
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert code == 0 and first not in out and {r[2] for r in rows} >= {"one", "two"}
    code, out, _ = run(["revoke-token", "--db", db, "--token-stdin"], capsys, first + "\n", monkeypatch)
    assert code == 0 and out.startswith("revoked token ")
    with server.client() as c:  # at once: no process keeps a cached copy of the token
        assert c.get("/api/me", headers={"authorization": f"Bearer {first}"}).status_code == 401
        assert c.get("/api/me", headers={"authorization": f"Bearer {second}"}).json()["username"] == "ann2"
    code, _, err = run(["revoke-token", "--db", db, "--id", str(2 ** 70)], capsys)
    assert code == 2 and err == "error: API token not found\n"


def test_passwords_are_hashed_before_the_write_transaction(tmp_path, capsys, monkeypatch):
    """Argon2 takes tens of milliseconds; with SQLite the write transaction holds the whole database."""
    from contextlib import contextmanager

    from prefloop.feedback import db as dbm
    from prefloop.feedback import security

    depth, seen = [0], []
    write = dbm.Database.write

    @contextmanager
    def counted_write(self):
        depth[0] += 1
        try:
            with write(self) as s:
                yield s
        finally:
            depth[0] -= 1

    hash_password = security.hash_password

    def spy(password):
        seen.append(depth[0])
        return hash_password(password)

    monkeypatch.setattr(dbm.Database, "write", counted_write)
    monkeypatch.setattr(security, "hash_password", spy)
    db = str(tmp_path / "h.db")
    assert run(["create-admin", "--db", db, "--username", "root"], capsys)[0] == 0
    assert run(["set-password", "--db", db, "--username", "root"], capsys)[0] == 0
    assert seen == [0, 0]
